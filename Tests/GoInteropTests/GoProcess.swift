import EtcdHarness
import Foundation
import RegistryPrimitives
import RegistryTesting
import Synchronization

/// Thrown when the grpc-go side cannot be built or started; says how to fix it.
struct GoInteropError: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
}

/// Builds `GoInterop/src/grpcinterop/cmd/go-interop` once per test process, from Debian's Go
/// packages in GOPATH mode, into a temporary directory.
enum GoInteropBinary {
  private static let built = Locked<Task<String, any Error>?>(nil)

  /// The repository's root (this file is `Tests/GoInteropTests/GoProcess.swift`).
  static var repositoryRoot: URL {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
      .deletingLastPathComponent()
  }

  /// The path of the built binary; builds it on first use.
  static func path() async throws -> String {
    let task = Self.built.withLock { task in
      if let task { return task }
      let new = Task { try await Self.build() }
      task = new
      return new
    }
    return try await task.value
  }

  private static func build() async throws -> String {
    try await GoInteropBuild.build(repositoryRoot: Self.repositoryRoot.path)
  }
}

/// A running `go-interop` child process: its stdout collected, its stdin held open (the child
/// exits when stdin closes, so it never outlives the tests).
final class GoProcess: Sendable {
  private let process: Process
  private let input: Pipe
  private let output = OutputBuffer()

  /// Starts `go-interop` with `arguments`.
  init(_ arguments: [String]) async throws {
    let binary = try await GoInteropBinary.path()
    self.process = Process()
    self.input = Pipe()
    let stdout = Pipe()
    self.process.executableURL = URL(fileURLWithPath: binary)
    self.process.arguments = arguments
    self.process.standardInput = self.input
    self.process.standardOutput = stdout
    self.process.standardError = FileHandle.standardError
    let output = self.output
    stdout.fileHandleForReading.readabilityHandler = { handle in
      let data = handle.availableData
      if data.isEmpty {
        handle.readabilityHandler = nil
      } else {
        output.append(String(decoding: data, as: UTF8.self))
      }
    }
    try self.process.run()
  }

  /// Everything the child printed so far.
  var stdout: String { self.output.text }

  var isRunning: Bool { self.process.isRunning }

  /// Writes `line` and a newline to the child's stdin (for the modes that read commands).
  func send(_ line: String) throws {
    guard self.process.isRunning else {
      throw GoInteropError(
        "go-interop exited (\(self.process.terminationStatus)) before reading '\(line.prefix(60))': \(self.stdout)"
      )
    }
    try self.input.fileHandleForWriting.write(contentsOf: Data((line + "\n").utf8))
  }

  /// Waits until the child printed a line starting with `prefix`, and returns the rest of it.
  func line(startingWith prefix: String, within timeout: Duration) async throws -> String {
    var found: String?
    try await waitUntil(
      "go-interop prints '\(prefix)' (it printed: \(self.stdout))",
      within: timeout
    ) {
      for line in self.stdout.split(separator: "\n") where line.hasPrefix(prefix) {
        found = String(line.dropFirst(prefix.count))
        return true
      }
      if !self.process.isRunning {
        throw GoInteropError(
          "go-interop exited (\(self.process.terminationStatus)): \(self.stdout)"
        )
      }
      return false
    }
    return found ?? ""
  }

  /// Closes the child's stdin (its exit path if this process dies) and stops it with SIGTERM (a
  /// server stops at once); waits (bounded) for it to exit and kills it if it does not.
  func stop() async {
    try? self.input.fileHandleForWriting.close()
    if self.process.isRunning { self.process.terminate() }
    do {
      try await waitUntil("go-interop exits", within: .seconds(5)) { !self.process.isRunning }
    } catch {
      kill(self.process.processIdentifier, SIGKILL)
    }
  }
}

/// The grpc-go interop server (`go-interop serve`) on a free loopback port.
final class GoServer: Sendable {
  let process: GoProcess
  /// `127.0.0.1:port`.
  let address: String

  private init(process: GoProcess, address: String) {
    self.process = process
    self.address = address
  }

  static func start() async throws -> GoServer {
    let process = try await GoProcess(["serve", "-addr", "127.0.0.1:0"])
    do {
      let address = try await process.line(startingWith: "LISTENING ", within: .seconds(30))
      return GoServer(process: process, address: address)
    } catch {
      await process.stop()
      throw error
    }
  }

  func stop() async { await self.process.stop() }
}

/// Runs `body` with a grpc-go server, stopping it afterwards.
func withGoServer<R: Sendable>(_ body: (GoServer) async throws -> R) async throws -> R {
  let server = try await GoServer.start()
  do {
    let result = try await body(server)
    await server.stop()
    return result
  } catch {
    await server.stop()
    throw error
  }
}

/// What a child process printed so far.
final class OutputBuffer: Sendable {
  private let state = Locked("")
  func append(_ text: String) { self.state.withLock { $0 += text } }
  var text: String { self.state.withLock { $0 } }
}

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

  /// Starts `go-interop` with `arguments` (building it first if needed): its standard output
  /// collected, its standard error in the test log, its standard input held open (it exits when
  /// its input closes, so it never outlives the tests).
  static func start(_ arguments: [String]) async throws -> ChildProcess {
    try ChildProcess(try await Self.path(), arguments, standardError: .inherit)
  }
}

/// The grpc-go interop server (`go-interop serve`) on a free loopback port.
final class GoServer: Sendable {
  let process: ChildProcess
  /// `127.0.0.1:port`.
  let address: String

  private init(process: ChildProcess, address: String) {
    self.process = process
    self.address = address
  }

  static func start() async throws -> GoServer {
    let process = try await GoInteropBinary.start(["serve", "-addr", "127.0.0.1:0"])
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

import Foundation
import RegistryPrimitives

/// A long-running child process of a test (a `user-server`, a `user-client`, a `go-interop`
/// peer): its standard output, and optionally its standard error, collected in memory; its
/// standard input held open, so that a child that exits when its input closes never outlives the
/// test process; SIGKILLed when dropped while still running.
package final class ChildProcess: Sendable {
  /// Where the child's standard error goes.
  package enum ErrorOutput: Sendable {
    /// Collected, readable as ``errorOutput``.
    case collect
    /// Discarded.
    case discard
    /// This process's own standard error (the test log).
    case inherit
  }

  /// The name used in error messages: the executable's file name.
  package let name: String
  private let process: Process
  private let input = Pipe()
  private let stdout = Collector()
  private let stderr = Collector()

  /// Starts `executable` (a path) with `arguments`.
  ///
  /// - Parameter environment: set over this process's environment.
  /// - Throws: ``HarnessError`` when the file is not executable or the child cannot start.
  package init(
    _ executable: String,
    _ arguments: [String],
    environment: [String: String] = [:],
    standardError: ErrorOutput = .collect
  ) throws {
    guard FileManager.default.isExecutableFile(atPath: executable) else {
      throw HarnessError("\(executable) is not an executable file; build it first")
    }
    self.name = URL(fileURLWithPath: executable).lastPathComponent
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if !environment.isEmpty {
      process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    }
    process.standardInput = self.input
    process.standardOutput = self.stdout.pipe
    switch standardError {
    case .collect: process.standardError = self.stderr.pipe
    case .discard: process.standardError = FileHandle.nullDevice
    case .inherit: process.standardError = FileHandle.standardError
    }
    do {
      try process.run()
    } catch {
      throw HarnessError("could not start \(executable): \(error)")
    }
    self.process = process
  }

  deinit {
    try? self.input.fileHandleForWriting.close()
    if self.process.isRunning { kill(self.process.processIdentifier, SIGKILL) }
  }

  /// Everything the child wrote to its standard output so far.
  package var output: String { self.stdout.text }

  /// Everything the child wrote to its standard error so far (with ``ErrorOutput/collect``).
  package var errorOutput: String { self.stderr.text }

  package var isRunning: Bool { self.process.isRunning }

  package var processIdentifier: Int32 { self.process.processIdentifier }

  /// The exit status, or the signal that ended the child; only meaningful once it has exited.
  package var terminationStatus: Int32 { self.process.terminationStatus }

  /// Sends `signal` to the child, if it runs.
  package func signal(_ signal: Int32) {
    if self.process.isRunning { kill(self.process.processIdentifier, signal) }
  }

  /// Writes `line` and a newline to the child's standard input.
  ///
  /// - Throws: ``HarnessError`` with what the child printed when it has exited.
  package func send(_ line: String) throws {
    guard self.process.isRunning else {
      throw HarnessError(
        "\(self.name) exited (\(self.process.terminationStatus)) before reading '\(line.prefix(60))': \(self.output)"
      )
    }
    try self.input.fileHandleForWriting.write(contentsOf: Data((line + "\n").utf8))
  }

  /// Waits until the child printed a line starting with `prefix` on its standard output, and
  /// returns the rest of that line.
  ///
  /// - Throws: ``HarnessError`` with what the child printed when it exits first or `timeout`
  ///   passes.
  package func line(startingWith prefix: String, within timeout: Duration) async throws -> String {
    let deadline = ContinuousClock.now + timeout
    while true {
      for line in self.output.split(separator: "\n") where line.hasPrefix(prefix) {
        return String(line.dropFirst(prefix.count))
      }
      if !self.process.isRunning {
        throw HarnessError(
          "\(self.name) exited (\(self.process.terminationStatus)) before printing '\(prefix)': \(self.output)\(self.errorOutput)"
        )
      }
      if ContinuousClock.now >= deadline {
        throw HarnessError(
          "\(self.name) did not print '\(prefix)' within \(timeout); it printed: \(self.output)\(self.errorOutput)"
        )
      }
      try await Task.sleep(for: .milliseconds(10))
    }
  }

  /// Closes the child's standard input and sends `signal`; waits up to `limit` for it to exit,
  /// then SIGKILLs it and waits for that.
  package func stop(_ signal: Int32 = SIGTERM, escalateAfter limit: Duration = .seconds(5)) async {
    try? self.input.fileHandleForWriting.close()
    guard self.process.isRunning else { return }
    await terminate(self.process.processIdentifier, with: signal, escalateAfter: limit) {
      self.process.isRunning
    }
  }

  /// A pipe whose bytes are appended to a string as they arrive.
  private final class Collector: Sendable {
    let pipe = Pipe()
    private let buffer = Locked("")

    init() {
      let buffer = self.buffer
      self.pipe.fileHandleForReading.readabilityHandler = { handle in
        let data = handle.availableData
        // End of file: without this the handler is called again and again, spinning a core.
        if data.isEmpty {
          handle.readabilityHandler = nil
          return
        }
        buffer.withLock { $0 += String(decoding: data, as: UTF8.self) }
      }
    }

    var text: String { self.buffer.withLock { $0 } }
  }
}

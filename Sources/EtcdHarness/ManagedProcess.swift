import Foundation
import RegistryPrimitives
import Synchronization

/// A long-running child process (an etcd member, a grpc-proxy) whose output is appended to a log
/// file, and that can be signalled and waited for.
final class ManagedProcess: Sendable {
  /// The file the process's output goes to.
  let logFile: String
  private let process = Locked<Process?>(nil)

  init(logFile: String) {
    self.logFile = logFile
  }

  /// Whether the process is running (a paused process counts as running).
  var isRunning: Bool {
    self.process.withLock { $0?.isRunning ?? false }
  }

  /// The process id, while running.
  var pid: Int32? {
    self.process.withLock { process in
      process.flatMap { $0.isRunning ? $0.processIdentifier : nil }
    }
  }

  /// Starts `executable` (found on `PATH`) with `arguments`; returns its process id.
  func launch(_ executable: String, _ arguments: [String]) throws -> Int32 {
    guard let path = Command.locate(executable) else { throw HarnessError.missing(executable) }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    process.standardInput = FileHandle.nullDevice
    if !FileManager.default.fileExists(atPath: self.logFile) {
      _ = FileManager.default.createFile(atPath: self.logFile, contents: nil)
    }
    let log = try FileHandle(forWritingTo: URL(fileURLWithPath: self.logFile))
    log.seekToEndOfFile()
    process.standardOutput = log
    process.standardError = log
    try process.run()
    try? log.close()
    self.process.withLock { $0 = process }
    return process.processIdentifier
  }

  /// Sends `signal` to the process, if it runs.
  func signal(_ signal: Int32) {
    if let pid = self.pid { _ = kill(pid, signal) }
  }

  /// Sends `signal` (after SIGCONT, so a paused process can act on it), sends SIGKILL once
  /// `limit` has passed, and waits until the process has exited.
  func signalAndWait(_ signal: Int32, escalateAfter limit: Duration) async {
    guard let pid = self.pid else { return }
    _ = kill(pid, SIGCONT)
    await terminate(pid, with: signal, escalateAfter: limit) { self.isRunning }
  }

  /// The last lines of the log, for error messages.
  func logTail(lines: Int = 20) -> String {
    let text = (try? String(contentsOfFile: self.logFile, encoding: .utf8)) ?? ""
    return text.split(separator: "\n").suffix(lines).joined(separator: "\n")
  }
}

/// Sends `signal` to `pid`, sends SIGKILL once `limit` has passed, and polls `isRunning` every
/// 10 ms until it is false. The one stop loop of the harness's child processes.
func terminate(
  _ pid: pid_t,
  with signal: Int32,
  escalateAfter limit: Duration,
  isRunning: () -> Bool
) async {
  _ = kill(pid, signal)
  let deadline = ContinuousClock.now + limit
  while isRunning() {
    if ContinuousClock.now >= deadline {
      _ = kill(pid, SIGKILL)
    }
    try? await Task.sleep(for: .milliseconds(10))
  }
}

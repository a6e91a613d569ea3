import Foundation
import Synchronization

/// One etcd process started by the harness, on loopback ports of its own.
///
/// A member can be stopped gracefully, killed with SIGKILL, paused with SIGSTOP, and restarted
/// on the same ports with its data kept or wiped.
public final class EtcdMember: Sendable {
  /// The member's name in the cluster (`m0`, `m1`, ...).
  public let name: String
  /// The client port on 127.0.0.1.
  public let clientPort: Int
  /// The peer port on 127.0.0.1.
  public let peerPort: Int
  /// A second client port that stays open while clients are isolated; the harness's own
  /// etcdctl calls use it.
  public let adminPort: Int
  /// The data directory.
  public let dataDirectory: String
  /// The file etcd's output goes to.
  public let logFile: String

  let scheme: String
  let arguments: @Sendable (_ isolated: Bool) -> [String]
  private let process = Mutex<Process?>(nil)
  private let isolated = Mutex(false)

  init(
    name: String,
    clientPort: Int,
    peerPort: Int,
    adminPort: Int,
    root: String,
    scheme: String,
    arguments: @escaping @Sendable (_ isolated: Bool) -> [String]
  ) {
    self.name = name
    self.clientPort = clientPort
    self.peerPort = peerPort
    self.adminPort = adminPort
    self.dataDirectory = "\(root)/\(name).etcd"
    self.logFile = "\(root)/\(name).log"
    self.scheme = scheme
    self.arguments = arguments
  }

  /// `127.0.0.1:<clientPort>`, the endpoint clients dial.
  public var endpoint: String { "127.0.0.1:\(self.clientPort)" }
  /// `127.0.0.1:<adminPort>`, the endpoint that stays reachable while clients are isolated.
  public var adminEndpoint: String { "127.0.0.1:\(self.adminPort)" }
  /// The client URL, `http://…` or `https://…`.
  public var clientURL: String { "\(self.scheme)://127.0.0.1:\(self.clientPort)" }
  /// The peer URL.
  public var peerURL: String { "http://127.0.0.1:\(self.peerPort)" }

  /// Whether the process is running (a paused process counts as running).
  public var isRunning: Bool {
    self.process.withLock { $0?.isRunning ?? false }
  }

  /// The process id, while running.
  public var pid: Int32? {
    self.process.withLock { process in process.flatMap { $0.isRunning ? $0.processIdentifier : nil }
    }
  }

  func launch() throws {
    guard let etcd = Command.locate("etcd") else { throw HarnessError.missing("etcd") }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: etcd)
    process.arguments = self.arguments(self.isolated.withLock { $0 })
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
  }

  /// Stops the member with SIGTERM (SIGKILL after 5 seconds) and waits for it to exit.
  public func stop() async {
    await self.signalAndWait(SIGTERM, escalateAfter: .seconds(5))
  }

  /// Kills the member with SIGKILL, as a crash would, and waits for it to exit.
  public func kill() async {
    await self.signalAndWait(SIGKILL, escalateAfter: .seconds(5))
  }

  /// Pauses the member with SIGSTOP: it keeps its sockets but answers nothing.
  public func pause() {
    if let pid = self.pid { _ = Foundation.kill(pid, SIGSTOP) }
  }

  /// Resumes a paused member with SIGCONT.
  public func resume() {
    if let pid = self.pid { _ = Foundation.kill(pid, SIGCONT) }
  }

  /// Starts the member again on the same ports, after stopping it if it runs.
  ///
  /// - Parameter wipeData: Remove the data directory first, so the member comes back empty (only
  ///   meaningful for a single-node cluster: a wiped member cannot rejoin a cluster).
  /// - Parameter isolateClients: Serve only the admin port, so clients of ``endpoint`` cannot
  ///   reach this member while it keeps working (a partition between them and etcd).
  public func restart(wipeData: Bool = false, isolateClients: Bool = false) async throws {
    if self.isRunning { await self.stop() }
    self.isolated.withLock { $0 = isolateClients }
    if wipeData { try? FileManager.default.removeItem(atPath: self.dataDirectory) }
    try self.launch()
  }

  /// The last lines of the member's log, for error messages.
  public func logTail(lines: Int = 20) -> String {
    let text = (try? String(contentsOfFile: self.logFile, encoding: .utf8)) ?? ""
    return text.split(separator: "\n").suffix(lines).joined(separator: "\n")
  }

  private func signalAndWait(_ signal: Int32, escalateAfter limit: Duration) async {
    guard let pid = self.pid else { return }
    _ = Foundation.kill(pid, SIGCONT)
    _ = Foundation.kill(pid, signal)
    let deadline = ContinuousClock.now + limit
    while self.isRunning {
      if ContinuousClock.now >= deadline {
        _ = Foundation.kill(pid, SIGKILL)
      }
      try? await Task.sleep(for: .milliseconds(10))
    }
  }
}

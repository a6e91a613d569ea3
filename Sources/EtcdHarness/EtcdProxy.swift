import Foundation

/// An `etcd grpc-proxy` in front of a cluster's members, started by
/// ``EtcdCluster/startProxy(within:)``.
///
/// Clients that dial ``endpoint`` reach the cluster through the proxy; it can be stopped, killed
/// and restarted on the same port.
///
/// ```swift
/// let proxy = try await cluster.startProxy()
/// try await cluster.etcdctl(["put", "/k", "v"], endpoints: [proxy.endpoint])
/// ```
public final class EtcdProxy: Sendable {
  /// The proxy's name in the cluster's root directory (`proxy0`, `proxy1`, ...).
  public let name: String
  /// The port the proxy serves clients on, on 127.0.0.1.
  public let port: Int
  /// The client URL, `http://…` or `https://…` like the cluster's.
  public let clientURL: String

  private let arguments: [String]
  private let process: ManagedProcess
  private let healthCheck: @Sendable (_ endpoint: String) async throws -> Command.Output

  init(
    name: String,
    port: Int,
    root: String,
    scheme: String,
    arguments: [String],
    healthCheck: @escaping @Sendable (_ endpoint: String) async throws -> Command.Output
  ) {
    self.name = name
    self.port = port
    self.clientURL = "\(scheme)://127.0.0.1:\(port)"
    // The data directory is only used for auto-TLS, which the harness does not use; it is given
    // so the watchdog, which kills whatever has a `--data-dir` under the harness root, finds
    // the proxy too.
    self.arguments =
      arguments + [
        "--listen-addr=127.0.0.1:\(port)",
        "--data-dir", "\(root)/\(name).proxy",
      ]
    self.process = ManagedProcess(logFile: "\(root)/\(name).log")
    self.healthCheck = healthCheck
  }

  /// `127.0.0.1:<port>`, the endpoint clients dial.
  public var endpoint: String { "127.0.0.1:\(self.port)" }

  /// The file the proxy's output goes to.
  public var logFile: String { self.process.logFile }

  /// Whether the process is running.
  public var isRunning: Bool { self.process.isRunning }

  /// The process id, while running.
  public var pid: Int32? { self.process.pid }

  /// Stops the proxy with SIGTERM (SIGKILL after 5 seconds) and waits for it to exit.
  public func stop() async {
    await self.process.signalAndWait(SIGTERM, escalateAfter: .seconds(5))
  }

  /// Kills the proxy with SIGKILL, as a crash would, and waits for it to exit.
  public func kill() async {
    await self.process.signalAndWait(SIGKILL, escalateAfter: .seconds(5))
  }

  /// Starts the proxy again on the same port, after stopping it if it runs, and waits until it
  /// serves.
  ///
  /// - Throws: ``HarnessError`` when it does not serve within `timeout`.
  public func restart(within timeout: Duration = .seconds(20)) async throws {
    if self.isRunning { await self.stop() }
    try await self.start(within: timeout)
  }

  /// The last lines of the proxy's log, for error messages.
  public func logTail(lines: Int = 20) -> String {
    self.process.logTail(lines: lines)
  }

  func start(within timeout: Duration) async throws {
    _ = try self.process.launch("etcd", self.arguments)
    try await self.waitUntilServing(within: timeout)
  }

  /// Polls `etcdctl endpoint health` through the proxy: it answers once the proxy listens and
  /// reaches the cluster.
  private func waitUntilServing(within timeout: Duration) async throws {
    let deadline = ContinuousClock.now + timeout
    var last = ""
    while ContinuousClock.now < deadline {
      guard self.isRunning else {
        throw HarnessError(
          "etcd grpc-proxy \(self.name) exited during start-up; its log:\n\(self.logTail())"
        )
      }
      let output = try await self.healthCheck(self.endpoint)
      if output.status == 0 { return }
      last = output.stderr + output.stdout
      try await Task.sleep(for: .milliseconds(50))
    }
    throw HarnessError(
      "etcd grpc-proxy \(self.name) did not serve within \(timeout): \(last)\nits log:\n\(self.logTail())"
    )
  }
}

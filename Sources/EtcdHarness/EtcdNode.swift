import Foundation
import RegistryPrimitives
import Synchronization

/// One etcd process started by the harness, on loopback ports of its own.
///
/// A member can be stopped gracefully, killed with SIGKILL, paused with SIGSTOP, restarted on the
/// same ports with its data kept or wiped, and cut off from its peers while its clients still
/// reach it (``isolateFromPeers()``).
public final class EtcdNode: Sendable {
  /// The member's name in the cluster (`m0`, `m1`, ...).
  public let name: String
  /// The client port on 127.0.0.1.
  public let clientPort: Int
  /// The peer port on 127.0.0.1 that the cluster knows (``peerURL``): the harness's relay, which
  /// forwards to the port etcd itself listens on for peers, so ``isolateFromPeers()`` can cut
  /// the member's raft traffic.
  public let peerPort: Int
  /// A second client port that stays open while clients are isolated; the harness's own
  /// etcdctl calls use it.
  public let adminPort: Int
  /// The data directory.
  public let dataDirectory: String
  /// The file etcd's output goes to.
  public var logFile: String { self.process.logFile }

  let scheme: String
  /// The port etcd listens on for peers, behind the relay on ``peerPort``.
  let peerListenPort: Int
  let arguments: @Sendable (_ isolated: Bool) -> [String]
  private let process: ManagedProcess
  private let network: PeerNetwork
  private let clientsIsolated = Locked(false)

  init(
    name: String,
    clientPort: Int,
    peerPort: Int,
    peerListenPort: Int,
    adminPort: Int,
    root: String,
    scheme: String,
    network: PeerNetwork,
    arguments: @escaping @Sendable (_ isolated: Bool) -> [String]
  ) {
    self.name = name
    self.clientPort = clientPort
    self.peerPort = peerPort
    self.peerListenPort = peerListenPort
    self.adminPort = adminPort
    self.dataDirectory = "\(root)/\(name).etcd"
    self.process = ManagedProcess(logFile: "\(root)/\(name).log")
    self.scheme = scheme
    self.network = network
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
  public var isRunning: Bool { self.process.isRunning }

  /// The process id, while running.
  public var pid: Int32? { self.process.pid }

  func launch() throws {
    let pid = try self.process.launch("etcd", self.arguments(self.clientsIsolated.withLock { $0 }))
    self.network.register(member: self.name, pid: pid)
  }

  /// Stops the member with SIGTERM (SIGKILL after 5 seconds) and waits for it to exit.
  public func stop() async {
    await self.process.signalAndWait(SIGTERM, escalateAfter: .seconds(5))
  }

  /// Kills the member with SIGKILL, as a crash would, and waits for it to exit.
  public func kill() async {
    await self.process.signalAndWait(SIGKILL, escalateAfter: .seconds(5))
  }

  /// Pauses the member with SIGSTOP: it keeps its sockets but answers nothing.
  public func pause() {
    self.process.signal(SIGSTOP)
  }

  /// Resumes a paused member with SIGCONT.
  public func resume() {
    self.process.signal(SIGCONT)
  }

  /// Starts the member again on the same ports, after stopping it if it runs.
  ///
  /// - Parameter wipeData: Remove the data directory first, so the member comes back empty (only
  ///   meaningful for a single-node cluster: a wiped member cannot rejoin a cluster).
  /// - Parameter isolateClients: Serve only the admin port, so clients of ``endpoint`` cannot
  ///   reach this member while it keeps working (a partition between them and etcd).
  public func restart(wipeData: Bool = false, isolateClients: Bool = false) async throws {
    if self.isRunning { await self.stop() }
    self.clientsIsolated.withLock { $0 = isolateClients }
    if wipeData { try? FileManager.default.removeItem(atPath: self.dataDirectory) }
    try self.launch()
  }

  /// Cuts the member off from the other members while its clients still reach it: every peer
  /// connection it dialed or accepted is closed, and new ones are refused until
  /// ``rejoinPeers()``. A follower loses its leader after the election timeout (its linearizable
  /// requests then fail, serializable reads still answer); a leader steps down.
  ///
  /// The cut stays through ``restart(wipeData:isolateClients:)``. It returns once the member's
  /// open peer connections are closed.
  ///
  /// - Throws: ``HarnessError`` on a platform without Linux's `/proc/net/tcp`, which the relays
  ///   need to tell which member dialed a connection.
  public func isolateFromPeers() async throws {
    guard SocketOwner.isSupported else {
      throw HarnessError(
        "isolateFromPeers() needs Linux's /proc/net/tcp to tell which etcd member dialed a peer connection"
      )
    }
    await self.network.isolate(self.name)
  }

  /// Ends ``isolateFromPeers()``: the member and its peers dial each other again (etcd retries
  /// within about 100 ms) and the member catches up with the cluster.
  public func rejoinPeers() {
    self.network.rejoin(self.name)
  }

  /// Whether the member is cut off from its peers by ``isolateFromPeers()``.
  public var isIsolatedFromPeers: Bool {
    self.network.isIsolated(self.name)
  }

  /// The last lines of the member's log, for error messages.
  public func logTail(lines: Int = 20) -> String {
    self.process.logTail(lines: lines)
  }
}

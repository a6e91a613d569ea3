import Foundation
import RegistryPrimitives
import Synchronization

/// Real etcd processes for tests and benchmarks: one node or a cluster on loopback.
///
/// Every member gets free loopback ports and a data directory under a temporary root that is
/// removed by ``shutdown()``. If the test process dies without calling it, a watchdog started
/// with the first cluster kills the members (and proxies) and removes the root.
///
/// Every cluster, whatever its options, routes its members' peer traffic through relays in the
/// test process, so any member can be cut off from its peers with
/// ``EtcdNode/isolateFromPeers()``; ``startProxy()`` adds an `etcd grpc-proxy` in front of the
/// members.
///
/// ```swift
/// try await withEtcdCluster { etcd in
///   _ = try await etcd.etcdctl(["put", "/k", "v"])
/// }
/// ```
public final class EtcdCluster: Sendable {
  /// How to start the cluster.
  public struct Config: Sendable {
    /// Number of members (1 or an odd number such as 3).
    public var members: Int
    /// Serve clients over TLS with certificates generated for the test.
    public var tls: Bool
    /// With ``tls``: require client certificates (mutual TLS).
    public var clientCertificateAuth: Bool
    /// `--auth-token-ttl` in seconds (simple tokens), or `nil` for etcd's default (300 s).
    public var authTokenTTL: Int?
    /// `--unsafe-no-fsync`: much faster, not crash-safe; right for tests.
    public var unsafeNoFsync: Bool
    /// Raft heartbeat interval and election timeout in milliseconds.
    public var heartbeatMilliseconds: Int
    /// Raft election timeout in milliseconds.
    public var electionMilliseconds: Int
    /// Further command-line arguments for every member.
    public var extraArguments: [String]
    /// How long to wait for the cluster to become healthy.
    public var startTimeout: Duration

    /// A quiet, fast single node over plain TCP.
    public static var defaults: Config {
      Config(
        members: 1,
        tls: false,
        clientCertificateAuth: false,
        authTokenTTL: nil,
        unsafeNoFsync: true,
        heartbeatMilliseconds: 50,
        electionMilliseconds: 500,
        extraArguments: [],
        startTimeout: .seconds(30)
      )
    }

    /// The defaults, changed by `configure`.
    public static func defaults(_ configure: (inout Config) -> Void) -> Config {
      var config = Config.defaults
      configure(&config)
      return config
    }
  }

  /// The members, in order `m0`, `m1`, ...
  public let members: [EtcdNode]
  /// The configuration the cluster was started with.
  public let config: Config
  /// The temporary root holding data directories, logs and certificates.
  public let root: String
  /// The certificates, when started with TLS.
  public let certificates: TestCertificates?
  private let rootCredentials = Locked<String?>(nil)
  private let network: PeerNetwork
  private let proxies = Locked<[EtcdProxy]>([])
  private let proxyCount = Locked(0)

  /// `host:port` of every member.
  public var endpoints: [String] { self.members.map(\.endpoint) }

  private init(
    members: [EtcdNode],
    config: Config,
    root: String,
    certificates: TestCertificates?,
    network: PeerNetwork
  ) {
    self.members = members
    self.config = config
    self.root = root
    self.certificates = certificates
    self.network = network
  }

  /// Starts etcd and waits until every member is healthy.
  ///
  /// - Throws: ``HarnessError`` when etcd is not installed (with how to install it) or does not
  ///   become healthy in time (with the tail of its log).
  public static func start(_ options: Config = .defaults) async throws -> EtcdCluster {
    guard Command.locate("etcd") != nil else { throw HarnessError.missing("etcd") }
    guard Command.locate("etcdctl") != nil else { throw HarnessError.missing("etcdctl") }
    guard options.members >= 1 else { throw HarnessError("a cluster needs at least one member") }
    let root = try Watchdog.makeRoot()
    let certificates =
      options.tls ? try await TestCertificates.generate(in: "\(root)/tls") : nil
    let scheme = options.tls ? "https" : "http"
    let token = "harness-\(UUID().uuidString.prefix(8))"
    var ports: [(client: Int, peer: Int, peerListen: Int, admin: Int)] = []
    for _ in 0 ..< options.members {
      ports.append(
        (try FreePorts.next(), try FreePorts.next(), try FreePorts.next(), try FreePorts.next())
      )
    }
    // The cluster knows each member by its relay's port; etcd listens behind it.
    let network = PeerNetwork()
    let initialCluster = ports.enumerated()
      .map { "m\($0.offset)=http://127.0.0.1:\($0.element.peer)" }
      .joined(separator: ",")

    let members = ports.enumerated().map { index, port in
      let name = "m\(index)"
      let dataDirectory = "\(root)/\(name).etcd"
      return EtcdNode(
        name: name,
        clientPort: port.client,
        peerPort: port.peer,
        peerListenPort: port.peerListen,
        adminPort: port.admin,
        root: root,
        scheme: scheme,
        network: network
      ) { isolated in
        let admin = "\(scheme)://127.0.0.1:\(port.admin)"
        let client = "\(scheme)://127.0.0.1:\(port.client)"
        var arguments = [
          "--name", name, "--data-dir", dataDirectory,
          "--listen-client-urls", isolated ? admin : "\(client),\(admin)",
          "--advertise-client-urls", "\(scheme)://127.0.0.1:\(port.client)",
          "--listen-peer-urls", "http://127.0.0.1:\(port.peerListen)",
          "--initial-advertise-peer-urls", "http://127.0.0.1:\(port.peer)",
          "--initial-cluster", initialCluster, "--initial-cluster-state", "new",
          "--initial-cluster-token", token,
          "--heartbeat-interval", "\(options.heartbeatMilliseconds)",
          "--election-timeout", "\(options.electionMilliseconds)",
          "--logger=zap", "--log-level=error",
        ]
        if options.unsafeNoFsync { arguments.append("--unsafe-no-fsync") }
        if let certificates {
          arguments += [
            "--cert-file", certificates.serverCertificate, "--key-file", certificates.serverKey,
          ]
          // etcd 3.4 verifies client certificates whenever it has a trusted CA file, so the CA
          // is only given for mutual TLS.
          if options.clientCertificateAuth {
            arguments += ["--trusted-ca-file", certificates.caCertificate, "--client-cert-auth"]
          }
        }
        if let ttl = options.authTokenTTL { arguments += ["--auth-token-ttl", "\(ttl)"] }
        return arguments + options.extraArguments
      }
    }
    let cluster = EtcdCluster(
      members: members,
      config: options,
      root: root,
      certificates: certificates,
      network: network
    )
    do {
      for member in members {
        try await network.start(
          .init(
            member: member.name,
            advertisedPort: member.peerPort,
            listenPort: member.peerListenPort
          )
        )
      }
      for member in members { try member.launch() }
      for member in members {
        try await cluster.waitUntilHealthy(member, within: options.startTimeout)
      }
    } catch {
      await cluster.shutdown()
      throw error
    }
    return cluster
  }

  /// Waits until `member` answers a health check (it has a leader and serves reads).
  public func waitUntilHealthy(
    _ member: EtcdNode,
    within timeout: Duration = .seconds(20)
  ) async throws {
    let deadline = ContinuousClock.now + timeout
    var last = ""
    while ContinuousClock.now < deadline {
      guard member.isRunning else {
        throw HarnessError(
          "etcd member \(member.name) exited during start-up; its log:\n\(member.logTail())"
        )
      }
      let output = try await self.etcdctlOutput(
        ["endpoint", "health", "--command-timeout=1s"],
        endpoints: [member.adminEndpoint]
      )
      if output.status == 0 { return }
      last = output.stderr + output.stdout
      try await Task.sleep(for: .milliseconds(50))
    }
    throw HarnessError(
      "etcd member \(member.name) was not healthy within \(timeout): \(last)\nits log:\n\(member.logTail())"
    )
  }

  /// Runs `etcdctl` against the cluster (TLS and credentials filled in) and returns its output.
  /// By default it talks to every member's admin port, which stays open while clients are
  /// isolated.
  ///
  /// - Throws: ``HarnessError`` when etcdctl exits with an error, with what it printed.
  @discardableResult
  public func etcdctl(_ arguments: [String], endpoints: [String]? = nil) async throws -> String {
    let output = try await self.etcdctlOutput(arguments, endpoints: endpoints)
    guard output.status == 0 else {
      throw HarnessError(
        "etcdctl \(arguments.joined(separator: " ")) failed (\(output.status)): \(output.stderr)\(output.stdout)"
      )
    }
    return output.stdout
  }

  func etcdctlOutput(_ arguments: [String], endpoints: [String]?) async throws -> Command.Output {
    let targets = endpoints ?? self.members.map(\.adminEndpoint)
    var flags = ["--endpoints=\(targets.joined(separator: ","))"]
    if let certificates = self.certificates {
      flags += ["--cacert=\(certificates.caCertificate)"]
      if self.config.clientCertificateAuth {
        flags += ["--cert=\(certificates.clientCertificate)", "--key=\(certificates.clientKey)"]
      }
    }
    if let credentials = self.rootCredentials.withLock({ $0 }) {
      flags += ["--user=\(credentials)"]
    }
    return try await Command.run("etcdctl", flags + arguments, environment: ["ETCDCTL_API": "3"])
  }

  /// The current leader, asked of every running member.
  public func leader() async throws -> EtcdNode {
    let running = self.members.filter(\.isRunning)
    // `-w simple` prints one line per endpoint; the fifth column says whether it leads.
    let output = try await self.etcdctlOutput(
      ["endpoint", "status", "-w", "simple", "--command-timeout=2s"],
      endpoints: running.map(\.adminEndpoint)
    )
    for line in output.stdout.split(separator: "\n") {
      let columns = line.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
      guard columns.count > 4, columns[4] == "true" else { continue }
      if let member = running.first(where: { columns[0].hasSuffix($0.adminEndpoint) }) {
        return member
      }
    }
    throw HarnessError("no member reports itself leader: \(output.stdout)\(output.stderr)")
  }

  /// Enables authentication with a `root` user; later ``etcdctl(_:endpoints:)`` calls use it.
  public func enableAuth(rootPassword: String = "root-password") async throws {
    try await self.etcdctl(["user", "add", "root", "--new-user-password=\(rootPassword)"])
    try await self.etcdctl(["role", "add", "root"])
    try await self.etcdctl(["user", "grant-role", "root", "root"])
    try await self.etcdctl(["auth", "enable"])
    self.rootCredentials.withLock { $0 = "root:\(rootPassword)" }
  }

  /// Starts an `etcd grpc-proxy` in front of every member and waits until it serves.
  ///
  /// The proxy listens on a free loopback port (``EtcdProxy/endpoint``) and speaks the cluster's
  /// scheme: over TLS it presents the server certificate (and with
  /// ``Config/clientCertificateAuth`` asks for client certificates), so
  /// ``etcdctl(_:endpoints:)`` with `endpoints: [proxy.endpoint]` works as with a member.
  /// ``shutdown()`` stops it with the members.
  ///
  /// - Throws: ``HarnessError`` when the proxy does not serve in time (with the tail of its log).
  public func startProxy(within timeout: Duration = .seconds(20)) async throws -> EtcdProxy {
    let name = self.proxyCount.withLock { count in
      defer { count += 1 }
      return "proxy\(count)"
    }
    var arguments = [
      "grpc-proxy", "start",
      "--endpoints=\(self.endpoints.joined(separator: ","))",
    ]
    if let certificates = self.certificates {
      // etcd 3.4's grpc-proxy needs a client certificate without a common name to reach TLS
      // members at all, so it gets one of its own.
      let client = try await certificates.makeClientCertificateWithoutCommonName(
        at: "\(self.root)/tls/\(name)-client"
      )
      arguments += [
        "--cacert", certificates.caCertificate, "--cert", client.certificate, "--key", client.key,
        "--cert-file", certificates.serverCertificate, "--key-file", certificates.serverKey,
      ]
      if self.config.clientCertificateAuth {
        arguments += ["--trusted-ca-file", certificates.caCertificate]
      }
    }
    let proxy = EtcdProxy(
      name: name,
      port: try FreePorts.next(),
      root: self.root,
      scheme: self.certificates == nil ? "http" : "https",
      arguments: arguments
    ) { [weak self] endpoint in
      guard let self else { throw HarnessError("the cluster of \(name) is gone") }
      return try await self.etcdctlOutput(
        ["endpoint", "health", "--command-timeout=1s"],
        endpoints: [endpoint]
      )
    }
    self.proxies.withLock { $0.append(proxy) }
    try await proxy.start(within: timeout)
    return proxy
  }

  /// Stops every proxy and member, closes the peer relays and removes the root directory.
  public func shutdown() async {
    for proxy in self.proxies.withLock({ $0 }) { await proxy.kill() }
    for member in self.members { await member.kill() }
    await self.network.close()
    try? FileManager.default.removeItem(atPath: self.root)
  }
}

/// Starts a cluster, runs `body`, and shuts the cluster down whether `body` throws or not.
public func withEtcdCluster<T>(
  _ options: EtcdCluster.Config = .defaults,
  _ body: (EtcdCluster) async throws -> T
) async throws -> T {
  let cluster = try await EtcdCluster.start(options)
  do {
    let result = try await body(cluster)
    await cluster.shutdown()
    return result
  } catch {
    await cluster.shutdown()
    throw error
  }
}

/// One watchdog process per test process: when the test process dies, it kills every etcd
/// whose data lives under this process's harness directory (members and grpc-proxies alike: both
/// get a `--data-dir` there) and removes the directory. The peer relays live in the test
/// process and die with it.
enum Watchdog {
  private static let base: Locked<String?> = Locked(nil)

  static func makeRoot() throws -> String {
    let base = try self.base.withLock { base throws -> String in
      if let base { return base }
      let directory = FileManager.default.temporaryDirectory
        .appendingPathComponent("etcd-harness-\(getpid())-\(UUID().uuidString.prefix(6))").path
      try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
      try startWatchdog(parent: getpid(), directory: directory)
      base = directory
      return directory
    }
    let root = "\(base)/\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    return root
  }

  private static func startWatchdog(parent: Int32, directory: String) throws {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/sh")
    // The directory is an argument, not part of the script, so `pkill -f` does not match the
    // watchdog itself.
    let script = """
      while kill -0 "$1" 2>/dev/null; do sleep 1; done
      pkill -9 -f -- "--data-dir $2/"
      sleep 0.2
      rm -rf "$2"
      """
    process.arguments = ["-c", script, "etcd-harness-watchdog", "\(parent)", directory]
    process.standardInput = FileHandle.nullDevice
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    try process.run()
  }
}

import EtcdHarness
import EtcdRegistry
import Foundation
import RegistryCore
import RegistryPrimitives
import RegistryTesting
import Synchronization
import Testing

/// Runs the `registryctl` built next to the test bundle.
struct RegistryCtl {
  let cluster: EtcdCluster
  let prefix: String

  static var executable: String {
    get throws {
      var candidates = [URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()]
      if let main = Bundle.main.executableURL?.deletingLastPathComponent() {
        candidates.append(main)
      }
      candidates.append(
        URL(fileURLWithPath: FileManager.default.currentDirectoryPath + "/.build/debug")
      )
      for directory in candidates {
        for path in [
          directory.path + "/registryctl",
          directory.deletingLastPathComponent().path + "/registryctl",
        ]
        where FileManager.default.isExecutableFile(atPath: path) {
          return path
        }
      }
      throw WaitTimeoutError(
        description:
          "registryctl was not built next to the tests; run `swift build --build-tests --traits Tools` first"
      )
    }
  }

  func arguments(_ arguments: [String]) -> [String] {
    arguments + ["--etcd", self.cluster.endpoints.joined(separator: ","), "--prefix", self.prefix]
  }

  /// Runs to completion; returns exit status and output. With `connection` false, the
  /// arguments are passed as they are (no `--etcd` and `--prefix` appended).
  func run(
    _ arguments: [String],
    environment: [String: String] = [:],
    connection: Bool = true
  ) async throws -> (status: Int32, stdout: String, stderr: String) {
    let run = try await Command.run(
      try Self.executable,
      connection ? self.arguments(arguments) : arguments,
      environment: environment
    )
    return (run.status, run.stdout, run.stderr)
  }

  /// Starts a long-running command (register, watch); its standard output is collected.
  func start(_ arguments: [String]) throws -> ChildProcess {
    try ChildProcess(try Self.executable, self.arguments(arguments), standardError: .discard)
  }
}

@Suite("registryctl", .timeLimit(.minutes(3)))
struct RegistryCtlTests {
  @Test("register, list (table and json), services, deregister, status, and exit codes")
  func commands() async throws {
    let cluster = try await SharedEtcd.get()
    let ctl = RegistryCtl(cluster: cluster, prefix: uniquePrefix("ctl"))
    let empty = try await ctl.run(["list", "svc"])
    #expect(empty.status == 1, "an empty service exits 1: \(empty)")
    #expect(empty.stderr.contains("no instances"))

    let registration = try ctl.start([
      "register", "svc", "10.0.0.1:80", "--weight", "3", "--group", "A", "--metadata", "zone=eu",
      "--ttl", "5",
    ])
    _ = try await registration.line(startingWith: "REGISTERED", within: .seconds(10))
    let table = try await ctl.run(["list", "svc"])
    #expect(table.status == 0)
    #expect(
      table.stdout.contains("10.0.0.1:80") && table.stdout.contains("zone=eu")
        && table.stdout.contains("A")
    )
    let json = try await ctl.run(["list", "svc", "--output", "json"])
    let decoded = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [[String: Any]]
    #expect(decoded?.first?["weight"] as? Int == 3)
    #expect((decoded?.first?["leaseTTL"] as? Int ?? 0) > 0)
    #expect(try await ctl.run(["list", "svc", "--group", "B"]).status == 1)
    let services = try await ctl.run(["services"])
    #expect(
      services.status == 0 && services.stdout.contains("svc") && services.stdout.contains("1")
    )

    registration.signal(SIGTERM)
    try await waitUntil("SIGTERM deregisters and exits 0", within: .seconds(10)) {
      !registration.isRunning
    }
    #expect(registration.terminationStatus == 0)
    #expect(try await ctl.run(["list", "svc"]).status == 1)

    try await cluster.etcdctl([
      "put", ctl.prefix + "svc/10.0.0.2:80",
      #"{"Name":"svc","Address":"10.0.0.2:80","Weight":1,"Group":""}"#,
    ])
    #expect(try await ctl.run(["deregister", "svc", "10.0.0.2:80"]).status == 0)
    #expect(try await ctl.run(["deregister", "svc", "10.0.0.2:80"]).status == 1)

    let status = try await ctl.run(["status"])
    #expect(status.status == 0)
    // The version etcd itself reports (3.4.x from Debian, 3.5.1 with ETCD_BIN_DIR).
    let etcdStatus = try await cluster.etcdctl(["endpoint", "status", "-w", "json"])
    let version = try #require(
      etcdStatus.firstMatch(of: /"version":"([0-9.]+)"/).map { String($0.1) }
    )
    #expect(status.stdout.contains(version) && status.stdout.contains("yes"), "\(status.stdout)")

    let usage = try await ctl.run(["list"])
    #expect(usage.status == 2, "a usage error exits 2")
    let badName = try await ctl.run(["list", "bad/name"])
    #expect(badName.status == 2)
  }

  @Test("as etcdctl takes them: options before the subcommand, ETCDCTL_ENDPOINTS with URLs")
  func etcdctlConventions() async throws {
    let cluster = try await SharedEtcd.get()
    let ctl = RegistryCtl(cluster: cluster, prefix: uniquePrefix("ctl-etcdctl"))
    try await cluster.etcdctl([
      "put", ctl.prefix + "svc/10.0.0.3:80",
      #"{"Name":"svc","Address":"10.0.0.3:80","Weight":1,"Group":"g"}"#,
    ])
    let endpoints = cluster.endpoints.joined(separator: ",")
    // Breaks if global options are accepted only after the subcommand ("Unknown option").
    let before = try await ctl.run(
      ["--etcd", endpoints, "--prefix", ctl.prefix, "services"],
      connection: false
    )
    #expect(before.status == 0, "\(before.stderr)")
    #expect(before.stdout.contains("svc"))
    let urls = cluster.endpoints.map { "http://\($0)" }.joined(separator: ",")
    let fromEnvironment = try await ctl.run(
      ["list", "svc", "--prefix", ctl.prefix],
      environment: ["ETCDCTL_ENDPOINTS": urls, "REGISTRY_ETCD_ENDPOINTS": ""],
      connection: false
    )
    // An empty REGISTRY_ETCD_ENDPOINTS is still set: it must not hide ETCDCTL_ENDPOINTS.
    #expect(fromEnvironment.status == 0, "\(fromEnvironment.stderr)")
    #expect(fromEnvironment.stdout.contains("10.0.0.3:80"))
    let alias = try await ctl.run(
      ["--endpoints=\(urls)", "list", "svc", "--prefix", ctl.prefix],
      connection: false
    )
    #expect(alias.status == 0, "\(alias.stderr)")
  }

  // Catches a `watch` that misses or garbles a kind of change, prints only at exit (buffered),
  // or does not stop cleanly on SIGINT.
  @Test("watch prints the snapshot, then each add, update and removal as it happens")
  func watch() async throws {
    let cluster = try await SharedEtcd.get()
    let ctl = RegistryCtl(cluster: cluster, prefix: uniquePrefix("ctlwatch"))
    let writer = try RunningRegistry(cluster, prefix: ctl.prefix)
    try await writer.registry.register(ServiceInstance(name: "svc", address: "10.0.0.1:80"))
    let watcher = try ctl.start(["watch", "svc"])
    func lines(_ kind: String) -> [Substring] {
      watcher.output.split(separator: "\n").filter { $0.contains(" \(kind) rev=") }
    }
    try await waitUntil("the snapshot is printed", within: .seconds(10)) {
      lines("snapshot").first?.contains("instances=1") == true
        && watcher.output.contains("10.0.0.1:80")
    }
    try await writer.registry.register(
      ServiceInstance(name: "svc", address: "10.0.0.2:80", weight: 5)
    )
    try await waitUntil("the addition is printed", within: .seconds(5)) {
      lines("added").contains { $0.contains("10.0.0.2:80") }
    }
    try await writer.registry.register(
      ServiceInstance(name: "svc", address: "10.0.0.2:80", weight: 7)
    )
    try await waitUntil("the update is printed", within: .seconds(5)) {
      lines("updated").contains { $0.contains("10.0.0.2:80") }
    }
    try await writer.registry.deregister(service: "svc", address: "10.0.0.1:80")
    try await waitUntil("the removal is printed", within: .seconds(5)) {
      lines("removed").contains { $0.contains("10.0.0.1:80") }
    }
    #expect(lines("added").count == 1 && lines("updated").count == 1, "\(watcher.output)")
    watcher.signal(SIGINT)
    try await waitUntil("SIGINT stops the watch", within: .seconds(10)) { !watcher.isRunning }
    #expect(watcher.terminationStatus == 0)
    await writer.stop()
  }

  @Test("an unreachable etcd exits 3 with advice")
  func unreachable() async throws {
    let port = try await withEtcdCluster { $0.members[0].clientPort }
    let run = try await Command.run(
      try RegistryCtl.executable,
      ["list", "svc", "--etcd", "127.0.0.1:\(port)", "--timeout", "1"]
    )
    #expect(run.status == 3)
    let message = run.stderr
    #expect(message.contains("etcd"), "\(message)")
  }

  @Test("a registering process killed with SIGKILL leaves discovery within TTL + 1 s")
  func crash() async throws {
    let cluster = try await SharedEtcd.get()
    let prefix = uniquePrefix("crash")
    let ctl = RegistryCtl(cluster: cluster, prefix: prefix)
    let watcher = try RunningRegistry(cluster, prefix: prefix)
    let recorder = WatchRecorder(watcher.registry.watch("svc"))
    defer { recorder.cancel() }
    let child = try ctl.start(["register", "svc", "10.0.0.7:80", "--ttl", "2"])
    try await recorder.waitForAddresses(["10.0.0.7:80"], within: .seconds(10))
    child.signal(SIGKILL)
    let killed = ContinuousClock.now
    try await recorder.waitForAddresses([], within: .seconds(6))
    let gone = ContinuousClock.now - killed
    print("crash to gone with a 2 s TTL: \(gone)")
    #expect(gone < .seconds(3), "gone within TTL + 1 s")
    await watcher.stop()
  }
}

import Etcd
import EtcdRegistry
import Foundation
import GRPCConnection
import GRPCCore
import GRPCRegistry
import Logging
import RegistryCore
import UserService

/// Scenario `fleet` (opt-in): discovery at fleet scale, each measurement in a child process of
/// its own (this executable in a helper role) so that nothing else shares its CPU time or memory.
///
/// - *watch*: a watcher of a service of 1,000 and of 10,000 instances (written straight into
///   etcd) while 1,000 of them change at 100 per second (weight updates): the watcher's CPU per
///   change (from `/proc/<pid>/stat`) and its VmRSS. Equal CPU per change at both sizes shows
///   that a change costs no work in proportion to the service's size.
/// - *subset*: 1,000 instances served by one helper process (1,000 `HTTP2Server`s on loopback
///   ports) and a balanced transport in another, with the default subsetting (25) and without
///   it: the connections it opens, its sockets and its VmRSS before and after, and 200 calls.
enum FleetScenario {
  static let scenario = Scenario(
    name: "fleet",
    summary: "watch of 1k/10k instances under 100 changes/s (CPU per change, RSS); subsetting at 1k"
  ) { context in
    var metrics = try await watch(context)
    metrics.merge(try await subsetting(context))
    return metrics
  }

  static let changes = 1_000
  static let changesPerSecond = 100
  static let sentinel = "192.0.2.1:8080"
  static let servedInstances = 1_000

  // MARK: watch

  static func watch(_ context: BenchContext) async throws -> Metrics {
    let prefix = context.prefix("fleet")
    let keyspace = try RegistryKeyspace(prefix: prefix)
    let executable = try Self.executable()
    var metrics = Metrics()
    try await withRegistries(
      1,
      configuration: context.registry(prefix: prefix),
      logger: context.logger
    ) { registries in
      let client = registries[0].client
      for size in context.ordered([1_000, 10_000]) {
        let service = "bench-fleet-w\(size)"
        let label = "\(size / 1000)k"
        try await populate(
          client,
          keyspace: keyspace,
          service: service,
          count: size,
          phase: context.phase()
        )
        let child = try ChildProcess(
          executable: executable,
          arguments: [
            "--fleet-child", "watch", "--etcd", context.endpoint, "--mem-prefix", prefix,
            "--fleet-service", service, "--fleet-count", "\(size)",
          ],
          name: "fleet-watch"
        )
        guard await child.waitForLine(prefix: "READY", timeout: .seconds(120)) != nil else {
          throw BenchError("the watch helper never saw \(size) instances:\n\(child.logTail())")
        }
        // Let the first snapshot's allocations settle before the CPU clock starts.
        try await Task.sleep(for: .seconds(1))
        let cpuBefore = ConnectionScenario.cpuSeconds(pid: child.pid) ?? 0
        let rssBefore = residentMemory(of: "\(child.pid)") ?? 0
        let begin = ContinuousClock.now
        for change in 0 ..< Self.changes {
          try await Task.sleep(until: begin + .seconds(change) / Self.changesPerSecond)
          var instance = benchInstance(service: service, index: change * 7 % size)
          instance.weight = 10 + change % 5
          try await client.put(
            keyspace.key(for: instance),
            value: InstanceCodec.json.encode(instance)
          )
        }
        let elapsed = ContinuousClock.now - begin
        let sentinel = ServiceInstance(name: service, address: Self.sentinel)
        try await client.put(
          keyspace.key(for: sentinel),
          value: InstanceCodec.json.encode(sentinel)
        )
        guard let done = await child.waitForLine(prefix: "DONE ", timeout: .seconds(30)) else {
          throw BenchError("the watch helper did not see the last change:\n\(child.logTail())")
        }
        let cpuAfter = ConnectionScenario.cpuSeconds(pid: child.pid) ?? 0
        let rssAfter = residentMemory(of: "\(child.pid)") ?? 0
        await child.stop(grace: .seconds(5))
        child.removeLog()
        metrics.set(
          "watch_\(label)_cpu_us_per_change",
          (cpuAfter - cpuBefore) / Double(Self.changes) * 1e6
        )
        metrics.set("watch_\(label)_changes_per_s", Double(Self.changes) / (elapsed / .seconds(1)))
        metrics.set("watch_\(label)_rss_before_mb", Double(rssBefore) / 1_048_576)
        metrics.set("watch_\(label)_rss_after_mb", Double(rssAfter) / 1_048_576)
        metrics.note("watch \(label): helper saw \(done)")
      }
    }
    return metrics
  }

  // MARK: subsetting

  static func subsetting(_ context: BenchContext) async throws -> Metrics {
    let prefix = context.prefix("fleet")
    let keyspace = try RegistryKeyspace(prefix: prefix)
    let executable = try Self.executable()
    let service = "bench-fleet-s"
    let servers = try ChildProcess(
      executable: executable,
      arguments: ["--fleet-child", "serve", "--fleet-count", "\(Self.servedInstances)"],
      name: "fleet-serve"
    )
    var metrics = Metrics()
    do {
      guard let ports = await servers.waitForLine(prefix: "LISTENING ", timeout: .seconds(120))
      else {
        throw BenchError("the server helper did not start:\n\(servers.logTail())")
      }
      let addresses = ports.split(separator: ",").map { "127.0.0.1:\($0)" }
      guard addresses.count == Self.servedInstances else {
        throw BenchError("the server helper listens on \(addresses.count) ports")
      }
      try await withRegistries(
        1,
        configuration: context.registry(prefix: prefix),
        logger: context.logger
      ) { registries in
        let result = try await concurrently(
          callers: 16,
          total: addresses.count,
          phase: context.phase()
        ) {
          index in
          let instance = ServiceInstance(name: service, address: addresses[index])
          try await registries[0].client.put(
            keyspace.key(for: instance),
            value: InstanceCodec.json.encode(instance)
          )
        }
        guard result.count == addresses.count else {
          throw BenchError("registered only \(result.count) of \(addresses.count) servers")
        }
      }
      for mode in context.ordered(["subset", "full"]) {
        let child = try ChildProcess(
          executable: executable,
          arguments: [
            "--fleet-child", mode, "--etcd", context.endpoint, "--mem-prefix", prefix,
            "--fleet-service", service, "--fleet-count", "\(Self.servedInstances)",
          ],
          name: "fleet-\(mode)"
        )
        let line = await child.waitForLine(prefix: "FLEET ", timeout: .seconds(180))
        await child.stop(grace: .seconds(10))
        guard let line else {
          throw BenchError("the \(mode) client printed no result:\n\(child.logTail())")
        }
        child.removeLog()
        let numbers = line.split(separator: " ").compactMap { Double($0) }
        guard numbers.count == 5 else { throw BenchError("the \(mode) client printed '\(line)'") }
        metrics.set("\(mode)_connections", numbers[0])
        metrics.set("\(mode)_sockets", numbers[1])
        metrics.set("\(mode)_rss_before_mb", numbers[2] / 1_048_576)
        metrics.set("\(mode)_rss_after_mb", numbers[3] / 1_048_576)
        metrics.set("\(mode)_rss_delta_mb", (numbers[3] - numbers[2]) / 1_048_576)
        metrics.set("\(mode)_calls_ok", numbers[4])
      }
    } catch {
      await servers.stop(grace: .seconds(5))
      throw error
    }
    await servers.stop(grace: .seconds(10))
    servers.removeLog()
    return metrics
  }

  static func executable() throws -> String {
    guard let executable = ChildProcess.selfExecutable else {
      throw BenchError("cannot find this executable (no /proc/self/exe) to run the fleet helpers")
    }
    return executable
  }
}

/// The helper processes of scenario fleet: `registry-bench --fleet-child watch|serve|subset|full`.
enum FleetChild {
  static func run(
    role: String,
    endpoint: String,
    prefix: String,
    service: String,
    count: Int,
    logger: Logger
  ) async throws {
    if role == "serve" {
      try await Self.serve(count: count)
      return
    }
    let configuration = EtcdServiceRegistry.Config.defaults {
      $0.etcd.endpoints = [endpoint]
      $0.keyPrefix = prefix
    }
    try await withEtcdServiceRegistry(config: configuration, logger: logger) { registry in
      switch role {
      case "watch":
        try await Self.watch(registry, service: service, count: count)
      case "subset", "full":
        try await Self.balance(
          registry,
          service: service,
          count: count,
          subset: role == "subset",
          logger: logger
        )
      default:
        throw BenchError("unknown --fleet-child role '\(role)'")
      }
    }
  }

  /// Follows the service's events, keeping the set up to date in place as a consumer that needs
  /// the whole set would; prints READY at the first snapshot and DONE at the sentinel.
  private static func watch(
    _ registry: EtcdServiceRegistry,
    service: String,
    count: Int
  ) async throws {
    var snapshot: RegistrySnapshot?
    var changes = 0
    for try await event in registry.watch(service) {
      if case .snapshot(let first) = event {
        snapshot = first
        if first.instances.count >= count { Self.say("READY") }
        continue
      }
      snapshot?.apply(event)
      changes += 1
      if case .added(let instance, _) = event, instance.address == FleetScenario.sentinel {
        Self.say("DONE \(changes) changes, \(snapshot?.instances.count ?? 0) instances")
        return
      }
    }
  }

  /// A balanced transport over the service; prints `FLEET <connected> <sockets> <VmRSS before>
  /// <VmRSS after> <calls answered of 200>` once the connections it wants are up.
  private static func balance(
    _ registry: EtcdServiceRegistry,
    service: String,
    count: Int,
    subset: Bool,
    logger: Logger
  ) async throws {
    _ = try await registry.instances(of: "bench-fleet-none")
    try await Task.sleep(for: .milliseconds(300))
    let before = residentMemory() ?? 0
    let config = RegistryClientTransport.Config.defaults {
      $0.subsetting = subset ? RegistryClientTransport.Subsetting() : nil
    }
    let expected = subset ? (config.subsetting?.subsetSize ?? count) : count
    let transport = RegistryClientTransport(
      target: .registry(service: service),
      registry: registry,
      config: config,
      logger: logger
    )
    try await withGRPCClient(transport: transport) { client in
      let deadline = ContinuousClock.now + .seconds(120)
      while transport.instanceStatuses.filter(\.isConnected).count < expected {
        guard ContinuousClock.now < deadline else {
          throw BenchError(
            "only \(transport.instanceStatuses.filter(\.isConnected).count) of \(expected) connected in 120 s"
          )
        }
        try await Task.sleep(for: .milliseconds(50))
      }
      let users = User_UserMesService.Client(wrapping: client)
      var answered = 0
      for id in 0 ..< 200 where (try? await GRPCScenarios.call(users, id: id)) != nil {
        answered += 1
      }
      try await Task.sleep(for: .milliseconds(500))
      let after = residentMemory() ?? 0
      let connected = transport.instanceStatuses.filter(\.isConnected).count
      Self.say("FLEET \(connected) \(Self.sockets()) \(before) \(after) \(answered)")
    }
  }

  /// `count` servers on loopback ports in this process; prints `LISTENING p1,p2,…` and serves
  /// until stopped.
  private static func serve(count: Int) async throws {
    try await withThrowingDiscardingTaskGroup { group in
      var ports: [Int] = []
      for _ in 0 ..< count {
        let transport = HTTP2Server(host: "127.0.0.1", port: 0, logger: Logger(label: "fleet"))
        let server = GRPCServer(transport: transport, services: [UserDirectory(name: { "fleet" })])
        group.addTask { try await server.serve() }
        ports.append(try await transport.listeningAddress.port)
      }
      Self.say("LISTENING " + ports.map(String.init).joined(separator: ","))
      try await Task.sleep(for: .seconds(3600))
      group.cancelAll()
    }
  }

  /// The sockets this process has open.
  private static func sockets() -> Int {
    let directory = "/proc/self/fd"
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
    return entries.filter { entry in
      (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(directory)/\(entry)"))?
        .hasPrefix("socket:") ?? false
    }.count
  }

  private static func say(_ line: String) {
    print(line)
    fflush(nil)
  }
}

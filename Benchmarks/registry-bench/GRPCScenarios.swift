import EtcdRegistry
import Foundation
import GRPCConnection
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCRegistry
import Logging
import RegistryCore
import RegistryPrimitives
import Synchronization
import UserService

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The scenarios of issue 7 that go through the gRPC layer: c, f, mem, soak, and the
/// register-to-first-call-served half of a.
enum GRPCScenarios {
  static let crashToGone = Scenario(
    name: "c",
    summary:
      "a user-server (TTL 5 s) is SIGKILLed under calls: time until discovery and the client drop it"
  ) { context in
    try await GRPCScenarios.crash(context)
  }

  static let callRate = Scenario(
    name: "f",
    summary: "unary calls/s, 3 user-servers: balanced transport, resolver + round robin, direct"
  ) { context in
    try await GRPCScenarios.callRate(context)
  }

  static let memory = Scenario(
    name: "mem",
    summary:
      "resident memory: a watch of 10k instances, 1k registrations, 4k instances coming and going, call deadlines"
  ) { context in
    try await GRPCScenarios.memory(context)
  }

  static let soak = Scenario(
    name: "soak",
    summary: "20 user-servers restarting gracefully at random under 8 callers for --minutes"
  ) { context in
    try await GRPCScenarios.soak(context)
  }

  /// Calls in the scenarios give up after this long.
  static let callTimeout = Duration.seconds(5)

  static var callOptions: CallOptions {
    var options = CallOptions.defaults
    options.timeout = Self.callTimeout
    return options
  }

  /// Runs `body` with a balanced transport to `service` on `registry` and a `UserMesService`
  /// client on it (the transport runs for the duration of `body`).
  static func withBalancedUsers<Result: Sendable>(
    service: String,
    registry: any ServiceRegistry,
    logger: Logger,
    _ body: (RegistryClientTransport, User_UserMesService.Client<RegistryClientTransport>)
      async throws -> Result
  ) async throws -> Result {
    let transport = RegistryClientTransport(
      target: RegistryTarget(service: service),
      registry: registry,
      logger: logger
    )
    return try await withGRPCClient(transport: transport) { client in
      try await body(transport, User_UserMesService.Client(wrapping: client))
    }
  }

  /// One GetById; returns the name in the answer (the serving instance's address).
  ///
  /// The call gives up after ``callTimeout``: by `CallOptions.timeout`, or with
  /// `connectionDeadline` by `HTTP2Connection.withCallDeadline`, which holds no memory after the
  /// call (see the Operations article); c and f keep the former so their numbers stay
  /// comparable with earlier runs.
  static func call<T: ClientTransport>(
    _ users: User_UserMesService.Client<T>,
    id: Int,
    connectionDeadline: Bool = false
  ) async throws -> String {
    var request = User_GetByIdReq()
    request.id = Int64(id)
    if connectionDeadline {
      return try await HTTP2Connection.withCallDeadline(.now + Self.callTimeout) {
        try await users.getById(request).user.name
      }
    }
    return try await users.getById(request, options: Self.callOptions).user.name
  }

  // MARK: a (second half)

  /// Register-to-first-call-served: a client on the balanced transport (over a second registry)
  /// calls one base instance back to back, one call at a time; each trial starts a new
  /// in-process `RegisteredServer` (its own port) that registers through the first registry.
  /// Timed from the instant `register` is called until a call is answered by the new instance
  /// (the answer names the instance's address). Then the server shuts down gracefully (which
  /// deregisters it) before the next trial.
  static func registerToServed(_ context: BenchContext) async throws -> Metrics {
    let service = "bench-a-served"
    let configuration = context.registry(prefix: context.prefix("a") + "-served")
    let logger = context.logger
    return try await withRegistries(2, configuration: configuration, logger: logger) {
      registries in
      let arrivals = Arrivals()
      let writer = TimingRegistry(base: registries[0], arrivals: arrivals)
      let transport = RegistryClientTransport(
        target: RegistryTarget(service: service),
        registry: registries[1],
        logger: logger
      )
      return try await withThrowingTaskGroup(of: Void.self) { servers in
        let base = Self.inProcessServer(service: service, registry: writer, logger: logger)
        servers.addTask { try await base.run() }
        defer {
          base.beginGracefulShutdown()
        }
        _ = try await base.registeredInstance()
        let failures = Locked(0)
        let stop = Locked(false)
        let metrics = try await withGRPCClient(transport: transport) { client in
          let users = User_UserMesService.Client(wrapping: client)
          return try await withThrowingTaskGroup(of: Void.self) { callers in
            callers.addTask {
              var id = 0
              while !stop.withLock({ $0 }), !Task.isCancelled {
                id += 1
                do {
                  let name = try await Self.call(users, id: id)
                  arrivals.record("served:" + name)
                } catch {
                  failures.withLock { $0 += 1 }
                }
              }
            }
            defer {
              stop.withLock { $0 = true }
            }
            return try await Self.servedTrials(
              context,
              service: service,
              writer: writer,
              arrivals: arrivals
            )
          }
        }
        var result = metrics
        result.set("served_loop_failed_calls", failures.withLock { $0 })
        base.beginGracefulShutdown()
        try await servers.waitForAll()
        return result
      }
    }
  }

  private static func servedTrials(
    _ context: BenchContext,
    service: String,
    writer: TimingRegistry,
    arrivals: Arrivals
  ) async throws -> Metrics {
    let warmUp = 5
    let count = 50
    let phase = context.phase()
    var served: [Duration] = []
    var timeouts = 0
    var trial = 0
    while trial < warmUp + count, phase.isOpen {
      trial += 1
      let server = Self.inProcessServer(service: service, registry: writer, logger: context.logger)
      try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await server.run() }
        let instance = try await server.registeredInstance()
        let seen = await arrivals.wait("served:" + instance.address, timeout: .seconds(5))
        let registered = arrivals.times("register:" + instance.address).first
        if trial > warmUp {
          if let seen, let registered {
            served.append(seen - registered)
          } else {
            timeouts += 1
          }
        }
        server.beginGracefulShutdown()
        try await group.waitForAll()
      }
    }
    var metrics = Metrics()
    metrics.latency("register_to_served", served)
    if timeouts > 0 { metrics.set("register_to_served_timeouts", timeouts) }
    if trial < warmUp + count { metrics.note("served trials cut short by the time bound") }
    return metrics
  }

  /// A `UserDirectory` server on 127.0.0.1, port 0, with a short drain.
  private static func inProcessServer(
    service: String,
    registry: any ServiceRegistry,
    logger: Logger
  ) -> RegisteredServer {
    let config = RegisteredServer.Config(name: service) {
      $0.drainDelay = .milliseconds(50)
    }
    return RegisteredServer(config: config, registry: registry, logger: logger) { server in
      [UserDirectory(name: { server.advertisedAddress ?? "" })]
    }
  }

  // MARK: c

  /// Three trials per run: with two survivors serving, a third user-server (TTL 5 s) starts;
  /// once the client has had a call answered by it, it is SIGKILLed while 4 callers call through
  /// the balanced transport (one call at a time each, 1 ms apart). Timed from the kill: until
  /// the registry watch drops it (its lease expires), and until the client's transport stops
  /// counting it as a candidate (its connection closed or its health stream broke). Failed calls
  /// are counted from the kill until the watch dropped it, and for 1 s after.
  static func crash(_ context: BenchContext) async throws -> Metrics {
    let prefix = context.prefix("c")
    let service = "bench-c"
    let logger = context.logger
    let endpoint = context.endpoint
    return try await UserServers.with(
      2,
      endpoint: endpoint,
      prefix: prefix,
      service: service,
      ttl: 5,
      drain: 0.2
    ) { _ in
      try await withRegistries(1, configuration: context.registry(prefix: prefix), logger: logger) {
        registries in
        let registry = registries[0]
        let arrivals = Arrivals()
        let failures = Locked<[ContinuousClock.Instant]>([])
        let errors = Locked<[String]>([])
        let transport = RegistryClientTransport(
          target: RegistryTarget(service: service),
          registry: registry,
          logger: logger
        )
        return try await withThrowingTaskGroup(of: Void.self) { group in
          group.addTask { await follow(registry.watch(service), into: arrivals, logger: logger) }
          defer { group.cancelAll() }
          let stop = Locked(false)
          return try await withGRPCClient(transport: transport) { client in
            let users = User_UserMesService.Client(wrapping: client)
            let metrics = try await withThrowingTaskGroup(of: Void.self) { callers in
              for caller in 0 ..< 4 {
                callers.addTask {
                  var id = caller * 1_000_000
                  while !stop.withLock({ $0 }), !Task.isCancelled {
                    id += 1
                    do {
                      let name = try await Self.call(users, id: id)
                      arrivals.record("served:" + name)
                    } catch {
                      failures.withLock { $0.append(.now) }
                      errors.withLock { if $0.count < 3 { $0.append("\(error)") } }
                    }
                    try? await Task.sleep(for: .milliseconds(1))
                  }
                }
              }
              defer { stop.withLock { $0 = true } }
              return try await Self.crashTrials(
                context,
                service: service,
                transport: transport,
                arrivals: arrivals,
                failures: failures
              )
            }
            stop.withLock { $0 = true }
            var result = metrics
            for error in errors.withLock({ $0 }) { result.note("failed call: \(error)") }
            return result
          }
        }
      }
    }
  }

  private static func crashTrials(
    _ context: BenchContext,
    service: String,
    transport: RegistryClientTransport,
    arrivals: Arrivals,
    failures: Locked<[ContinuousClock.Instant]>
  ) async throws -> Metrics {
    var discovery: [Duration] = []
    var client: [Duration] = []
    var failedDuring = 0
    var failedAfter = 0
    var timeouts = 0
    let phase = context.phase()
    var trials = 0
    while trials < 3, phase.isOpen {
      trials += 1
      let (victim, address) = try await UserServers.start(
        endpoint: context.endpoint,
        prefix: context.prefix("c"),
        service: service,
        ttl: 5,
        drain: 0.2,
        name: "\(service)-victim-\(trials)"
      )
      defer { victim.removeLog() }
      guard await arrivals.wait("served:" + address, timeout: .seconds(10)) != nil else {
        victim.signal(SIGKILL)
        await victim.waitForExit(timeout: .seconds(5))
        throw BenchError("no call was answered by the new user-server \(address) within 10 s")
      }
      let killed = ContinuousClock.now
      victim.signal(SIGKILL)
      // The client side: poll the transport's view until the victim is no longer a candidate.
      let clientStop = await Self.poll(timeout: .seconds(15)) {
        let status = transport.instanceStatuses.first { $0.instance.address == address }
        return status.map { !$0.isPreferred } ?? true
      }
      let gone = await arrivals.wait("-" + address, timeout: .seconds(15))
      await victim.waitForExit(timeout: .seconds(5))
      if let clientStop { client.append(clientStop - killed) } else { timeouts += 1 }
      if let gone {
        discovery.append(gone - killed)
        try await Task.sleep(for: .seconds(1))
        let times = failures.withLock { $0 }
        failedDuring += times.filter { $0 >= killed && $0 <= gone }.count
        failedAfter += times.filter { $0 > gone }.count
      } else {
        timeouts += 1
      }
      failures.withLock { $0.removeAll() }
    }
    var metrics = Metrics()
    metrics.latency("crash_to_gone_discovery", discovery)
    metrics.latency("crash_to_client_stops_routing", client)
    metrics.set("failed_calls_kill_to_gone", failedDuring)
    metrics.set("failed_calls_1s_after_gone", failedAfter)
    if timeouts > 0 { metrics.set("timeouts", timeouts) }
    if trials < 3 { metrics.note("crash trials cut short by the time bound") }
    return metrics
  }

  /// Polls `condition` every millisecond; returns the instant it first held, or `nil`.
  static func poll(
    timeout: Duration,
    _ condition: () -> Bool
  ) async -> ContinuousClock.Instant? {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
      if condition() { return .now }
      try? await Task.sleep(for: .milliseconds(1))
    }
    return nil
  }

  // MARK: f

  enum CallMode: String, CaseIterable {
    /// RegistryClientTransport with its default per-instance connection (HTTP2Connection).
    case balanced
    /// The same, restricted by group to the one server the direct modes call.
    case balancedOne = "balanced_one"
    /// RegistryClientTransport over grpc-swift's HTTP2ClientTransport.Posix per instance.
    case balancedPosix = "balanced_posix"
    /// HTTP2ClientTransport.Posix with RegistryNameResolverFactory, round robin.
    case resolver
    /// The same, restricted by the target's group to the one server the direct modes call.
    case resolverOne = "resolver_one"
    /// One HTTP2Connection to one server.
    case direct
    /// One HTTP2ClientTransport.Posix to one server.
    case directPosix = "direct_posix"
    /// The same with grpc-swift's round robin instead of its default pick-first: the policy the
    /// resolver modes use, without the registry.
    case directPosixRoundRobin = "direct_posix_rr"
  }

  /// 3 user-servers; per mode 2,000 warm-up calls, then 20,000 calls from 16 concurrent
  /// callers; rate = calls / wall time, latency = each call.
  static func callRate(_ context: BenchContext) async throws -> Metrics {
    let prefix = context.prefix("f")
    let service = "bench-f"
    let logger = context.logger
    let ownBalancedRate = Locked<Double?>(nil)
    let own = try await UserServers.with(
      3,
      endpoint: context.endpoint,
      prefix: prefix,
      service: service,
      groups: ["one"],
      extraArguments: try ConnectionScenario.handlers().map { ["--handler-execution", $0] } ?? []
    ) { servers in
      try await withRegistries(1, configuration: context.registry(prefix: prefix), logger: logger) {
        registries in
        let registry = registries[0]
        let listed = try await registry.instances(of: service)
        guard listed.count == 3 else {
          throw BenchError("etcd lists \(listed.count) instances of \(service), expected 3")
        }
        let direct = try ServiceAddress(parsing: servers[0].address)
        var metrics = Metrics()
        var rates: [CallMode: Double] = [:]
        var cpu: [CallMode: Double] = [:]
        for mode in context.ordered(CallMode.allCases) {
          Report.progress("f: \(mode.rawValue)")
          let tally = try await Self.measure(
            mode,
            context: context,
            service: service,
            registry: registry,
            direct: direct
          )
          let rate = Double(tally.ok) / max(tally.elapsed.seconds, 1e-9)
          rates[mode] = rate
          if mode == .balanced { ownBalancedRate.withLock { $0 = rate } }
          metrics.set("calls_\(mode.rawValue)_per_s", rate)
          let calls = max(tally.ok + tally.failed, 1)
          let cpuPer10k = tally.cpuSeconds * 10_000 / Double(calls)
          cpu[mode] = cpuPer10k
          metrics.set("cpu_\(mode.rawValue)_s_per_10k", cpuPer10k)
          metrics.latency("call_\(mode.rawValue)", tally.latencies)
          metrics.set("failed_\(mode.rawValue)", tally.failed)
          metrics.set("servers_used_\(mode.rawValue)", tally.servers.count)
          for error in tally.errors { metrics.note("\(mode.rawValue): \(error)") }
          if tally.ok + tally.failed < 20_000 {
            metrics.note("\(mode.rawValue) cut short by the time bound")
          }
        }
        func ratio(_ mode: CallMode, _ base: CallMode) {
          if let rate = rates[mode], let baseRate = rates[base], baseRate > 0 {
            metrics.set("ratio_\(mode.rawValue)_to_\(base.rawValue)", rate / baseRate)
          }
        }
        // Client CPU per call: the registry path's cost without the throughput noise of a
        // 2-core machine shared by the client and three server processes.
        func cpuRatio(_ mode: CallMode, _ base: CallMode) {
          if let value = cpu[mode], let baseValue = cpu[base], baseValue > 0 {
            metrics.set("cpu_ratio_\(mode.rawValue)_to_\(base.rawValue)", value / baseValue)
          }
        }
        cpuRatio(.balancedOne, .direct)
        cpuRatio(.resolverOne, .directPosixRoundRobin)
        cpuRatio(.directPosix, .direct)
        ratio(.balanced, .direct)
        ratio(.balancedOne, .direct)
        ratio(.balancedPosix, .directPosix)
        ratio(.resolver, .directPosix)
        ratio(.resolverOne, .directPosix)
        ratio(.resolverOne, .directPosixRoundRobin)
        ratio(.directPosixRoundRobin, .directPosix)
        ratio(.directPosix, .direct)
        return metrics
      }
    }
    // The same balanced calls to 3 user-servers on grpc-swift's stock server transport: the
    // ratio is the project's HTTP2Server against it, measured in the same run.
    let stockPrefix = context.prefix("f-stock")
    let stock = try await UserServers.with(
      3,
      endpoint: context.endpoint,
      prefix: stockPrefix,
      service: service,
      groups: ["one"],
      extraArguments: ["--server-transport", "stock"]
    ) { _ in
      try await withRegistries(
        1,
        configuration: context.registry(prefix: stockPrefix),
        logger: logger
      ) {
        registries in
        Report.progress("f: balanced, stock servers")
        return try await Self.measure(
          .balanced,
          context: context,
          service: service,
          registry: registries[0],
          direct: try ServiceAddress(parsing: "127.0.0.1:1")
        )
      }
    }
    var combined = own
    let stockRate = Double(stock.ok) / max(stock.elapsed.seconds, 1e-9)
    combined.set("calls_balanced_stock_servers_per_s", stockRate)
    combined.set("failed_balanced_stock_servers", stock.failed)
    if let ownRate = ownBalancedRate.withLock({ $0 }), stockRate > 0 {
      combined.set("ratio_balanced_own_servers_to_stock_servers", ownRate / stockRate)
    }
    return combined
  }

  private static func measure(
    _ mode: CallMode,
    context: BenchContext,
    service: String,
    registry: EtcdServiceRegistry,
    direct: ServiceAddress
  ) async throws -> CallTally {
    let logger = context.logger
    let target = RegistryTarget(service: service)
    switch mode {
    case .balanced:
      return try await Self.measure(
        RegistryClientTransport(target: target, registry: registry, logger: logger),
        context: context
      )
    case .balancedOne:
      return try await Self.measure(
        RegistryClientTransport(
          target: RegistryTarget(service: service, group: "one"),
          registry: registry,
          logger: logger
        ),
        context: context
      )
    case .balancedPosix:
      return try await Self.measure(
        RegistryClientTransport(
          target: target,
          registry: registry,
          config: .defaults { $0.connection = .posix },
          logger: logger
        ),
        context: context
      )
    case .resolver, .resolverOne:
      var resolvers = NameResolverRegistry.defaults
      resolvers.registerFactory(RegistryNameResolverFactory(registry: registry))
      return try await Self.measure(
        try HTTP2ClientTransport.Posix(
          target: mode == .resolver ? target : RegistryTarget(service: service, group: "one"),
          transportSecurity: .plaintext,
          resolverRegistry: resolvers
        ),
        context: context
      )
    case .direct:
      return try await Self.measure(
        HTTP2Connection(
          target: .host(direct.host, port: direct.port),
          config: RegistryClientTransport.InstanceConnectionKind.defaultConnectionConfig,
          logger: logger
        ),
        context: context
      )
    case .directPosix:
      return try await Self.measure(
        try HTTP2ClientTransport.Posix(
          target: .ipv4(address: direct.host, port: direct.port),
          transportSecurity: .plaintext
        ),
        context: context
      )
    case .directPosixRoundRobin:
      return try await Self.measure(
        try HTTP2ClientTransport.Posix(
          target: .ipv4(address: direct.host, port: direct.port),
          transportSecurity: .plaintext,
          serviceConfig: ServiceConfig(loadBalancingConfig: [.roundRobin])
        ),
        context: context
      )
    }
  }

  private static func measure<T: ClientTransport>(
    _ transport: T,
    context: BenchContext
  ) async throws -> CallTally {
    try await withGRPCClient(transport: transport) { client in
      let users = User_UserMesService.Client(wrapping: client)
      let warm = await Self.callConcurrently(
        users,
        callers: 16,
        total: 2_000,
        phase: context.phase()
      )
      context.logger.debug(
        "warm-up done",
        metadata: ["ok": "\(warm.ok)", "failed": "\(warm.failed)"]
      )
      let tally = await Self.callConcurrently(
        users,
        callers: 16,
        total: 20_000,
        phase: context.phase()
      )
      context.logger.debug(
        "measured",
        metadata: ["ok": "\(tally.ok)", "failed": "\(tally.failed)"]
      )
      return tally
    }
  }

  /// What a set of callers saw.
  struct CallTally: Sendable {
    var ok = 0
    var failed = 0
    var latencies: [Duration] = []
    var servers: [String: Int] = [:]
    var errors: [String] = []
    var elapsed = Duration.zero
    /// CPU seconds the whole process used while the calls ran (set by `callConcurrently`).
    var cpuSeconds = 0.0

    mutating func merge(_ other: CallTally) {
      self.ok += other.ok
      self.failed += other.failed
      self.latencies += other.latencies
      self.servers.merge(other.servers, uniquingKeysWith: +)
      self.errors += other.errors.prefix(max(0, 3 - self.errors.count))
    }
  }

  /// `callers` tasks call GetById back to back until `total` calls have started or the phase
  /// ends; failures are counted (the first three kept), not thrown.
  static func callConcurrently<T: ClientTransport>(
    _ users: User_UserMesService.Client<T>,
    callers: Int,
    total: Int,
    phase: Phase,
    keepLatencies: Bool = true,
    connectionDeadline: Bool = false
  ) async -> CallTally {
    let counter = Counter()
    let start = ContinuousClock.now
    let cpuStart = ConnectionScenario.processCPUSeconds()
    var tally = await withTaskGroup(of: CallTally.self) { group in
      for _ in 0 ..< callers {
        group.addTask {
          var tally = CallTally()
          if keepLatencies { tally.latencies.reserveCapacity(min(total / callers + 1, 100_000)) }
          while phase.isOpen {
            let index = counter.next()
            guard index < total else { break }
            let begin = ContinuousClock.now
            do {
              let name = try await Self.call(
                users,
                id: index,
                connectionDeadline: connectionDeadline
              )
              if keepLatencies { tally.latencies.append(ContinuousClock.now - begin) }
              tally.ok += 1
              tally.servers[name, default: 0] += 1
            } catch {
              tally.failed += 1
              if tally.errors.count < 3 { tally.errors.append("\(error)") }
            }
          }
          return tally
        }
      }
      var all = CallTally()
      for await part in group { all.merge(part) }
      return all
    }
    tally.elapsed = ContinuousClock.now - start
    tally.cpuSeconds = ConnectionScenario.processCPUSeconds() - cpuStart
    return tally
  }

  // MARK: mem

  /// Two child processes (this executable in a helper role, so that nothing else of the
  /// benchmark shares their memory), each reporting its own VmRSS before and after:
  /// - *watch 10k*: an `EtcdServiceRegistry` whose connection is up, then a `watch` of a service
  ///   of 10,000 instances (written straight into etcd beforehand), until its first snapshot has
  ///   all of them (the consumer keeps that snapshot);
  /// - *hold 1k*: an `EtcdServiceRegistry` that has granted its lease, then 1,000 registrations
  ///   (16 concurrent callers);
  /// - *churn 4k*: a balanced transport on an `EtcdServiceRegistry` while instances come and go:
  ///   one in-process server listens on 0.0.0.0, and each cycle registers it under a new
  ///   loopback address (127.0.x.y, the same port), waits until the transport prefers it, makes
  ///   4 calls, deregisters it and waits until the transport has dropped it. VmRSS after 1,500
  ///   warm-up cycles and after 4,000 more: what instance churn (pod restarts) costs a client.
  ///   Then, in the same process, 20,000 calls with a 30 s deadline set by
  ///   `HTTP2Connection.withCallDeadline`, and 20,000 with a 30 s `CallOptions.timeout`: the
  ///   resident memory each way of giving a call a deadline holds while the deadline runs.
  static func memory(_ context: BenchContext) async throws -> Metrics {
    let prefix = context.prefix("mem")
    guard let executable = ChildProcess.selfExecutable else {
      throw BenchError("cannot find this executable (no /proc/self/exe) to run the mem helpers")
    }
    let keyspace = try RegistryKeyspace(prefix: prefix)
    try await withRegistries(
      1,
      configuration: context.registry(prefix: prefix),
      logger: context.logger
    ) { registries in
      try await populate(
        registries[0].client,
        keyspace: keyspace,
        service: MemoryChild.watchedService,
        count: MemoryChild.watchedCount,
        phase: context.phase()
      )
    }
    var metrics = Metrics()
    for role in context.ordered(["watch", "hold", "churn"]) {
      let child = try ChildProcess(
        executable: executable,
        arguments: ["--mem-child", role, "--etcd", context.endpoint, "--mem-prefix", prefix],
        name: "mem-\(role)"
      )
      let line = await child.waitForLine(prefix: "MEM ", timeout: .seconds(120))
      await child.stop(grace: .seconds(10))
      guard let line else {
        throw BenchError(
          "the mem helper (\(role)) printed no result within 120 s; its stderr ends with:\n\(child.logTail())"
        )
      }
      child.removeLog()
      let numbers = line.split(separator: " ").compactMap { Double($0) }
      guard numbers.count == (role == "churn" ? 5 : 2) else {
        throw BenchError("the mem helper printed '\(line)'")
      }
      func record(_ name: String, _ before: Double, _ after: Double, per unit: String, _ count: Int)
      {
        metrics.set("\(name)_rss_before_mb", before / 1_048_576)
        metrics.set("\(name)_rss_after_mb", after / 1_048_576)
        metrics.set("\(name)_rss_delta_mb", (after - before) / 1_048_576)
        metrics.set("\(name)_bytes_per_\(unit)", (after - before) / Double(count))
      }
      switch role {
      case "watch":
        record("watch_10k", numbers[0], numbers[1], per: "instance", MemoryChild.watchedCount)
      case "hold":
        record("hold_1k", numbers[0], numbers[1], per: "instance", MemoryChild.heldCount)
      default:
        record("churn_4k", numbers[0], numbers[1], per: "cycle", MemoryChild.churnCycles)
        let calls = MemoryChild.pinnedCalls
        record("calls_20k_deadline", numbers[2], numbers[3], per: "call", calls)
        record("calls_20k_timeout", numbers[3], numbers[4], per: "call", calls)
      }
    }
    return metrics
  }

  // MARK: soak

  /// 20 user-servers under one service restart gracefully at random (SIGTERM, wait for the exit,
  /// start again; at most 3 at once, a new restart every 0.2-0.8 s) while 8 callers call through
  /// the balanced transport, for `--minutes`. Every 10 s the transport's set of instances is
  /// compared with `instances(of:)` (a fresh read of etcd), polling for up to 5 s until they
  /// agree.
  static func soak(_ context: BenchContext) async throws -> Metrics {
    let prefix = context.prefix("soak")
    let service = "bench-soak"
    return try await UserServers.with(
      20,
      endpoint: context.endpoint,
      prefix: prefix,
      service: service
    ) { initial in
      let slots = Locked(initial.map { Optional($0.child) })
      let stats = Locked(SoakStats())
      let outcome: Swift.Result<Metrics, any Error>
      do {
        outcome = .success(
          try await Self.soakClient(
            context,
            service: service,
            slots: slots,
            stats: stats
          )
        )
      } catch {
        outcome = .failure(error)
      }
      // The servers started by restarts are stopped here (SIGTERM), the initial ones by `with`.
      let restarted = slots.withLock { $0.compactMap { $0 } }.filter { child in
        !initial.contains { $0.child === child }
      }
      let unclean = Locked(0)
      await withTaskGroup(of: Void.self) { group in
        for child in restarted {
          group.addTask {
            await child.stop()
            if child.exitedCleanly { child.removeLog() } else { unclean.withLock { $0 += 1 } }
          }
        }
      }
      var metrics = try outcome.get()
      metrics.set("unclean_exits_at_end", unclean.withLock { $0 })
      return metrics
    }
  }

  private static func soakClient(
    _ context: BenchContext,
    service: String,
    slots: Locked<[ChildProcess?]>,
    stats: Locked<SoakStats>
  ) async throws -> Metrics {
    let prefix = context.prefix("soak")
    let logger = context.logger
    let endpoint = context.endpoint
    let duration = Duration.seconds(60 * context.soakMinutes)
    return try await withRegistries(
      1,
      configuration: context.registry(prefix: prefix),
      logger: logger
    ) { registries in
      let registry = registries[0]
      return try await withBalancedUsers(service: service, registry: registry, logger: logger) {
        transport,
        users in
        _ = await Self.callConcurrently(
          users,
          callers: 8,
          total: 2_000,
          phase: context.phase(),
          connectionDeadline: true
        )
        let rssStart = residentMemory()
        let start = ContinuousClock.now
        let deadline = start + duration
        let rssByMinute = Locked<[Int]>([])
        let calls = await withTaskGroup(of: CallTally.self) { group in
          for _ in 0 ..< 8 {
            group.addTask {
              // Bounded by time and by count (20 million calls per caller).
              await Self.callConcurrently(
                users,
                callers: 1,
                total: 20_000_000,
                phase: Phase(deadline: deadline),
                keepLatencies: false,
                connectionDeadline: true
              )
            }
          }
          group.addTask {
            for minute in 1 ... context.soakMinutes {
              try? await Task.sleep(until: start + .seconds(60 * minute) - .milliseconds(100))
              if let rss = residentMemory() { rssByMinute.withLock { $0.append(rss) } }
            }
            return CallTally()
          }
          group.addTask {
            await Self.restartAtRandom(
              slots: slots,
              stats: stats,
              until: deadline,
              endpoint: endpoint,
              prefix: prefix,
              service: service
            )
            return CallTally()
          }
          group.addTask {
            await Self.checkConvergence(
              transport: transport,
              registry: registry,
              service: service,
              stats: stats,
              until: deadline
            )
            return CallTally()
          }
          var all = CallTally()
          for await part in group { all.merge(part) }
          return all
        }
        let rssEnd = residentMemory()
        var metrics = Metrics()
        let summary = stats.withLock { $0 }
        metrics.set("minutes", context.soakMinutes)
        metrics.set("calls", calls.ok + calls.failed)
        metrics.set("failed_calls", calls.failed)
        metrics.rate("calls", count: calls.ok + calls.failed, elapsed: duration)
        metrics.set("servers_answering", calls.servers.count)
        metrics.set("restarts", summary.restarts)
        metrics.set("restart_failures", summary.restartFailures)
        metrics.set("unclean_exits", summary.uncleanExits)
        metrics.set("convergence_checks", summary.checks)
        metrics.set("convergence_checks_passed", summary.checksPassed)
        if let rssStart { metrics.set("client_rss_start_mb", Double(rssStart) / 1_048_576) }
        if let rssEnd { metrics.set("client_rss_end_mb", Double(rssEnd) / 1_048_576) }
        for (index, rss) in rssByMinute.withLock({ $0 }).enumerated() {
          metrics.set("client_rss_minute_\(index + 1)_mb", Double(rss) / 1_048_576)
        }
        for error in calls.errors { metrics.note("call failed: \(error)") }
        for problem in summary.problems.prefix(10) { metrics.note(problem) }
        return metrics
      }
    }
  }

  struct SoakStats: Sendable {
    var restarts = 0
    var restartFailures = 0
    var uncleanExits = 0
    var checks = 0
    var checksPassed = 0
    var problems: [String] = []
  }

  private static func restartAtRandom(
    slots: Locked<[ChildProcess?]>,
    stats: Locked<SoakStats>,
    until deadline: ContinuousClock.Instant,
    endpoint: String,
    prefix: String,
    service: String
  ) async {
    let busy = Locked(Set<Int>())
    // Discarding: a plain task group keeps every finished child task (~1.5 KB or more each) until
    // someone calls `next()`, which this loop never does; over a 25-minute soak that was ~4 KB per
    // restart of the benchmark's own memory, read as the client's.
    await withDiscardingTaskGroup { group in
      var generation = 0
      while ContinuousClock.now < deadline {
        try? await Task.sleep(for: .milliseconds(Int.random(in: 200 ... 800)))
        guard ContinuousClock.now < deadline else { break }
        let slot: Int? = busy.withLock { busy in
          guard busy.count < 3 else { return nil }
          let free = (0 ..< 20).filter { !busy.contains($0) }
          guard let slot = free.randomElement() else { return nil }
          busy.insert(slot)
          return slot
        }
        guard let slot else { continue }
        generation += 1
        let name = "\(service)-\(slot)-g\(generation)"
        group.addTask {
          defer { _ = busy.withLock { $0.remove(slot) } }
          guard let old = slots.withLock({ $0[slot] }) else { return }
          old.signal(SIGTERM)
          if await old.waitForExit(timeout: .seconds(15)) == nil {
            stats.withLock { $0.problems.append("\(old.name) did not exit within 15 s of SIGTERM") }
            old.signal(SIGKILL)
            await old.waitForExit(timeout: .seconds(5))
          }
          if !old.exitedCleanly {
            stats.withLock {
              $0.uncleanExits += 1
              $0.problems.append("\(old.name) exited uncleanly; stderr: \(old.logTail(3))")
            }
          } else {
            old.removeLog()
          }
          do {
            let (child, _) = try await UserServers.start(
              endpoint: endpoint,
              prefix: prefix,
              service: service,
              name: name
            )
            slots.withLock { $0[slot] = child }
            stats.withLock { $0.restarts += 1 }
          } catch {
            slots.withLock { $0[slot] = nil }
            stats.withLock {
              $0.restartFailures += 1
              $0.problems.append("restart of slot \(slot) failed: \(error)")
            }
          }
        }
      }
    }
  }

  private static func checkConvergence(
    transport: RegistryClientTransport,
    registry: EtcdServiceRegistry,
    service: String,
    stats: Locked<SoakStats>,
    until deadline: ContinuousClock.Instant
  ) async {
    while ContinuousClock.now + .seconds(10) < deadline {
      try? await Task.sleep(for: .seconds(10))
      let checkDeadline = ContinuousClock.now + .seconds(5)
      var last = ""
      var passed = false
      while ContinuousClock.now < checkDeadline {
        let client = Set(transport.instanceStatuses.map(\.instance.address))
        do {
          let etcd = Set(try await registry.instances(of: service).map(\.address))
          if client == etcd {
            passed = true
            break
          }
          last =
            "client only: \(client.subtracting(etcd).sorted()), etcd only: \(etcd.subtracting(client).sorted())"
        } catch {
          last = "instances(of:) failed: \(error)"
        }
        try? await Task.sleep(for: .milliseconds(50))
      }
      stats.withLock { stats in
        stats.checks += 1
        if passed {
          stats.checksPassed += 1
        } else {
          stats.problems.append("convergence check failed for 5 s; \(last)")
        }
      }
    }
  }
}

/// Forwards to a registry and records the instant each `register` is called, as
/// `register:<address>`.
struct TimingRegistry: ServiceRegistry {
  let base: any ServiceRegistry
  let arrivals: Arrivals

  func register(_ instance: ServiceInstance) async throws {
    self.arrivals.record("register:" + instance.address)
    try await self.base.register(instance)
  }

  func deregister(service: String, address: String) async throws {
    try await self.base.deregister(service: service, address: address)
  }

  func instances(of service: String) async throws -> [ServiceInstance] {
    try await self.base.instances(of: service)
  }

  func watch(_ service: String) -> ServiceWatch {
    self.base.watch(service)
  }

  func shutdown() async {
    await self.base.shutdown()
  }
}

/// The helper processes of scenario mem: `registry-bench --mem-child watch|hold|churn --etcd …
/// --mem-prefix …` prints `MEM <VmRSS before> <VmRSS after>` (bytes; churn prints the five
/// numbers ``churn(registry:logger:)`` returns) and exits.
enum MemoryChild {
  static let watchedService = "bench-mem-watch"
  static let watchedCount = 10_000
  static let heldService = "bench-mem-hold"
  static let heldCount = 1_000
  static let churnWarmUp = 1_500
  static let churnCycles = 4_000
  static let pinnedCalls = 20_000

  static func run(role: String, endpoint: String, prefix: String, logger: Logger) async throws {
    let configuration = EtcdServiceRegistry.Config.defaults {
      $0.etcd.endpoints = [endpoint]
      $0.keyPrefix = prefix
    }
    let rss = try await withEtcdServiceRegistry(
      config: configuration,
      logger: logger
    ) { registry -> [Int] in
      switch role {
      case "watch":
        _ = try await registry.instances(of: "bench-mem-none")
        try await Task.sleep(for: .milliseconds(300))
        let before = residentMemory() ?? 0
        var kept: [ServiceInstance] = []
        for try await event in registry.watch(Self.watchedService) {
          guard case .snapshot(let snapshot) = event else { continue }
          kept = snapshot.instances
          if kept.count >= Self.watchedCount { break }
        }
        try await Task.sleep(for: .milliseconds(500))
        let after = residentMemory() ?? 0
        guard kept.count >= Self.watchedCount else {
          throw BenchError("the watch ended with \(kept.count) instances")
        }
        return [before, after]
      case "hold":
        let warm = benchInstance(service: Self.heldService + "-warm", index: 0)
        try await registry.register(warm)
        try await registry.deregister(service: warm.name, address: warm.address)
        try await Task.sleep(for: .milliseconds(300))
        let before = residentMemory() ?? 0
        let result = try await concurrently(
          callers: 16,
          total: Self.heldCount,
          phase: Phase(deadline: .now + .seconds(60))
        ) { index in
          try await registry.register(benchInstance(service: Self.heldService, index: index))
        }
        guard result.count == Self.heldCount else {
          throw BenchError("registered only \(result.count) of \(Self.heldCount) in 60 s")
        }
        try await Task.sleep(for: .milliseconds(500))
        return [before, residentMemory() ?? 0]
      case "churn":
        return try await Self.churn(registry: registry, logger: logger)
      default:
        throw BenchError("unknown --mem-child role '\(role)'")
      }
    }
    print("MEM " + rss.map { "\($0)" }.joined(separator: " "))
    fflush(nil)
  }

  /// The churn role (see ``GRPCScenarios/memory(_:)``); returns VmRSS after the warm-up cycles,
  /// after the measured ones, before the calls, after the calls with `withCallDeadline` and
  /// after those with `CallOptions.timeout`.
  private static func churn(
    registry: EtcdServiceRegistry,
    logger: Logger
  ) async throws -> [Int] {
    let service = "bench-mem-churn"
    let server = GRPCServer(
      transport: HTTP2ServerTransport.Posix(
        address: .ipv4(host: "0.0.0.0", port: 0),
        transportSecurity: .plaintext
      ),
      services: [UserDirectory(name: { "churn" })]
    )
    return try await withThrowingTaskGroup(of: Void.self) { group in
      group.addTask { try await server.serve() }
      defer { server.beginGracefulShutdown() }
      guard let port = try await server.listeningAddress?.ipv4?.port else {
        throw BenchError("the churn server is not listening on IPv4")
      }
      let stable = ServiceInstance(name: service, address: "127.0.0.1:\(port)")
      try await registry.register(stable)
      return try await GRPCScenarios.withBalancedUsers(
        service: service,
        registry: registry,
        logger: logger
      ) { transport, users in
        func preferred() -> Set<String> {
          Set(transport.instanceStatuses.filter(\.isPreferred).map(\.instance.address))
        }
        func waitFor(_ what: String, _ condition: () -> Bool) async throws {
          let deadline = ContinuousClock.now + .seconds(10)
          while !condition() {
            guard ContinuousClock.now < deadline else {
              throw BenchError("churn: \(what) did not happen within 10 s")
            }
            try await Task.sleep(for: .milliseconds(1))
          }
        }
        try await waitFor("the first instance is preferred") { preferred() == [stable.address] }
        var before = 0
        for cycle in 0 ..< Self.churnWarmUp + Self.churnCycles {
          if cycle == Self.churnWarmUp { before = residentMemory() ?? 0 }
          // 127.0.x.y with y in 2...251: a new address every cycle for the first 62,500.
          let address = "127.0.\(cycle / 250 % 250).\(cycle % 250 + 2):\(port)"
          let instance = ServiceInstance(name: service, address: address)
          try await registry.register(instance)
          try await waitFor("\(address) is preferred") { preferred().contains(address) }
          for id in 0 ..< 4 {
            _ = try await GRPCScenarios.call(users, id: id, connectionDeadline: true)
          }
          try await registry.deregister(service: service, address: address)
          try await waitFor("\(address) is dropped") { transport.instanceStatuses.count == 1 }
        }
        var rss = [before, residentMemory() ?? 0]

        // The memory a call's deadline holds while it runs, each way of setting one.
        try await Task.sleep(for: .seconds(6))  // the churn's 5 s deadlines have all passed
        rss.append(residentMemory() ?? 0)
        for id in 0 ..< Self.pinnedCalls {
          _ = try await HTTP2Connection.withCallDeadline(.now + .seconds(30)) {
            try await users.getById(.with { $0.id = Int64(id) })
          }
        }
        rss.append(residentMemory() ?? 0)
        var options = CallOptions.defaults
        options.timeout = .seconds(30)
        for id in 0 ..< Self.pinnedCalls {
          _ = try await users.getById(.with { $0.id = Int64(id) }, options: options)
        }
        rss.append(residentMemory() ?? 0)
        return rss
      }
    }
  }
}

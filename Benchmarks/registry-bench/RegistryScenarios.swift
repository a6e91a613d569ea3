import Etcd
import EtcdRegistry
import Foundation
import Logging
import RegistryCore

/// The scenarios of the etcd registry (issue 5's benchmark): a, b, d, e, g.
enum RegistryScenarios {
  static let registerToVisible = Scenario(
    name: "a",
    summary: "register in one registry until another registry's watch has it, and a call is served"
  ) { context in
    var metrics = try await RegistryScenarios.visibility(context, scenario: "a", timeRegister: true)
    metrics.merge(try await GRPCScenarios.registerToServed(context))
    return metrics
  }

  static let deregisterToGone = Scenario(
    name: "b",
    summary: "deregister in one registry until another registry's watch drops it"
  ) { context in
    try await RegistryScenarios.visibility(context, scenario: "b", timeRegister: false)
  }

  static let instancesAtScale = Scenario(
    name: "d",
    summary: "instances(of:) at 1, 100, 1,000 and 10,000 instances, vs a raw prefix get"
  ) { context in
    try await RegistryScenarios.instances(context)
  }

  static let bigService = Scenario(
    name: "big",
    summary:
      "a service of 100,000 instances (past the 4 MiB response cap): instances(of:), a watch's first snapshot, getAll"
  ) { context in
    try await RegistryScenarios.bigService(context)
  }

  static let registrationRate = Scenario(
    name: "e",
    summary: "registrations per second: sequential, 16 concurrent, 16 registries"
  ) { context in
    try await RegistryScenarios.registrations(context)
  }

  static let fanOut = Scenario(
    name: "g",
    summary: "one change seen by 100 watchers (one registry, and 100 registries)"
  ) { context in
    try await RegistryScenarios.watchers(context)
  }

  // MARK: a, b

  /// Registers and deregisters one instance per trial in registry 1 while registry 2 watches the
  /// service. Scenario a times `register` until the watch yields `.added`; b times `deregister`
  /// until it yields `.removed`. The untimed half of each trial waits for its event too, so
  /// trials never overlap.
  ///
  /// For comparison, the same trials run on the same two registries' etcd clients without the
  /// registry: a put with a lease (granted on registry 1's client) or a delete, seen by a raw
  /// etcd watch on registry 2's client. The two modes take turns, trial by trial.
  static func visibility(
    _ context: BenchContext,
    scenario: String,
    timeRegister: Bool
  ) async throws -> Metrics {
    let service = "bench-\(scenario)"
    let rawPrefix = context.prefix(scenario) + "-raw/"
    let configuration = context.registry(prefix: context.prefix(scenario))
    let logger = context.logger
    return try await withRegistries(2, configuration: configuration, logger: logger) {
      registries in
      let (writer, reader) = (registries[0], registries[1])
      let arrivals = Arrivals()
      return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { await follow(reader.watch(service), into: arrivals, logger: logger) }
        group.addTask {
          do {
            for try await batch in reader.client.watch(.prefix(rawPrefix)) {
              let now = ContinuousClock.now
              for event in batch.events {
                arrivals.record((event.kind == .put ? "+" : "-") + event.kv.keyString, at: now)
              }
            }
          } catch {
            logger.warning("raw watch ended with an error", metadata: ["error": "\(error)"])
          }
        }
        defer { group.cancelAll() }
        guard await arrivals.wait("snapshot", timeout: .seconds(10)) != nil else {
          throw BenchError("the watch of \(service) yielded no first snapshot in 10 s")
        }
        let lease = try await writer.client.grantLease(ttl: .seconds(30))
        let registryMode = Trials.Mode(name: "registry") {
          let instance = benchInstance(service: service, index: $0)
          try await writer.register(instance)
          return instance.address
        } remove: {
          try await writer.deregister(service: service, address: benchAddress($0))
        }
        let rawMode = Trials.Mode(name: "raw") {
          let instance = benchInstance(service: service, index: $0)
          let key = rawPrefix + instance.address
          try await writer.client.put(
            key,
            value: InstanceCodec.json.encode(instance),
            lease: lease.id
          )
          return key
        } remove: {
          try await writer.client.delete(.key(rawPrefix + benchAddress($0)))
        }
        let results = try await Trials.run(
          context,
          modes: [registryMode, rawMode],
          timeAdd: timeRegister,
          arrivals: arrivals
        )
        var metrics = Metrics()
        for (mode, trials) in zip([registryMode, rawMode], results) {
          let (visible, call) =
            switch (mode.name, timeRegister) {
            case ("registry", true): ("register_to_visible", "register_call")
            case ("registry", _): ("deregister_to_gone", "deregister_call")
            case (_, true): ("raw_put_lease_to_watch", "raw_put_lease_call")
            default: ("raw_delete_to_watch", "raw_delete_call")
            }
          metrics.latency(visible, trials.visible)
          metrics.latency(call, trials.calls)
          if trials.timeouts > 0 { metrics.set("\(visible)_timeouts", trials.timeouts) }
          if trials.cutShort { metrics.note("\(mode.name) trials cut short by the time bound") }
        }
        try? await writer.client.revokeLease(lease.id)
        return metrics
      }
    }
  }

  /// The trials of a and b: add, wait until seen, remove, wait until seen; one of the halves
  /// timed (from before the call to the watch's receipt, and the call alone). Modes take turns
  /// trial by trial, first one then the other, so that drifting machine load hits them alike.
  struct Trials {
    var visible: [Duration] = []
    var calls: [Duration] = []
    var timeouts = 0
    var cutShort = false

    struct Mode {
      var name: String
      /// Adds instance `index`; returns the name its arrivals are recorded under.
      var add: (Int) async throws -> String
      var remove: (Int) async throws -> Void
    }

    static func run(
      _ context: BenchContext,
      modes: [Mode],
      timeAdd: Bool,
      arrivals: Arrivals,
      warmUp: Int = 20,
      count: Int = 300
    ) async throws -> [Trials] {
      var results = [Trials](repeating: Trials(), count: modes.count)
      let phase = context.phase()
      var round = 0
      while round < warmUp + count, phase.isOpen {
        let order = round % 2 == 0 ? Array(modes.indices) : modes.indices.reversed()
        for modeIndex in order {
          // Each mode uses its own instances, so their keys never meet.
          let index = round * modes.count + modeIndex
          let mode = modes[modeIndex]
          let addBegin = ContinuousClock.now
          let name = try await mode.add(index)
          let added = ContinuousClock.now
          let seenAdded = await arrivals.wait("+" + name, timeout: .seconds(5))
          let removeBegin = ContinuousClock.now
          try await mode.remove(index)
          let removed = ContinuousClock.now
          let seenRemoved = await arrivals.wait("-" + name, timeout: .seconds(5))
          guard round >= warmUp else { continue }
          let (begin, end, seen) =
            timeAdd ? (addBegin, added, seenAdded) : (removeBegin, removed, seenRemoved)
          results[modeIndex].calls.append(end - begin)
          if let seen {
            results[modeIndex].visible.append(seen - begin)
          } else {
            results[modeIndex].timeouts += 1
          }
        }
        round += 1
      }
      for index in results.indices { results[index].cutShort = round < warmUp + count }
      return results
    }
  }

  // MARK: d

  /// Writes 1, 100, 1,000 and 10,000 instances of four services directly with EtcdClient (no
  /// lease: etcd 3.4 copies every key of a lease on each put to it), then times `instances(of:)`
  /// of each and, for comparison, the raw prefix get it makes and (at 1,000 and 10,000) the same
  /// prefix read by Python's grpcio (`Benchmarks/grpcio-floor/etcd_range_floor.py`).
  static func instances(_ context: BenchContext) async throws -> Metrics {
    let prefix = context.prefix("d")
    let keyspace = try RegistryKeyspace(prefix: prefix)
    let configuration = context.registry(prefix: prefix)
    return try await withRegistries(1, configuration: configuration, logger: context.logger) {
      registries in
      let registry = registries[0]
      var metrics = Metrics()
      for (size, trials) in [(1, 200), (100, 200), (1000, 100), (10000, 30)] {
        let service = "bench-d\(size)"
        try await populate(
          registry.client,
          keyspace: keyspace,
          service: service,
          count: size,
          phase: context.phase()
        )
        let listed = try await registry.instances(of: service)
        guard listed.count == size else {
          throw BenchError("instances(of: \(service)) returned \(listed.count), expected \(size)")
        }
        let label = size >= 1000 ? "\(size / 1000)k" : "\(size)"
        var registryP50 = 0.0
        for mode in context.ordered(["registry", "raw"]) {
          for _ in 0 ..< 3 { _ = try await registry.instances(of: service) }
          let phase = context.phase()
          var latencies: [Duration] = []
          while latencies.count < trials, phase.isOpen {
            let begin = ContinuousClock.now
            if mode == "registry" {
              _ = try await registry.instances(of: service)
            } else {
              _ = try await registry.client.get(.prefix(keyspace.servicePrefix(service)))
            }
            latencies.append(ContinuousClock.now - begin)
          }
          metrics.latency(mode == "registry" ? "instances_\(label)" : "raw_get_\(label)", latencies)
          if mode == "registry" { registryP50 = LatencySummary(latencies).p50 }
        }
        // The floor that is not ours, on the same keys of the same etcd in the same run.
        if size >= 1000 {
          switch await GrpcioFloor.p50(
            endpoint: context.endpoint,
            prefix: keyspace.servicePrefix(service),
            trials: trials,
            expect: size
          ) {
          case .success(let p50):
            metrics.set("grpcio_range_\(label)_p50_ms", p50)
            metrics.set("ratio_instances_\(label)_to_grpcio_range", registryP50 / p50)
          case .failure(let error):
            metrics.note("no grpcio floor for \(label): \(error)")
          }
        }
      }
      return metrics
    }
  }

  // MARK: big

  /// Writes `REGISTRY_BENCH_BIG_INSTANCES` (100,000) instances of one service directly (no
  /// lease), then times `instances(of:)`, the first snapshot of a new watch (the same paged
  /// listing plus the watch's creation) and the raw paged read `getAll` they make.
  static func bigService(_ context: BenchContext) async throws -> Metrics {
    let count =
      ProcessInfo.processInfo.environment["REGISTRY_BENCH_BIG_INSTANCES"].flatMap(Int.init)
      ?? 100_000
    let prefix = context.prefix("big")
    let keyspace = try RegistryKeyspace(prefix: prefix)
    let configuration = context.registry(prefix: prefix)
    return try await withRegistries(1, configuration: configuration, logger: context.logger) {
      registries in
      let registry = registries[0]
      let service = "bench-big"
      var metrics = Metrics()
      let writeStart = ContinuousClock.now
      try await populate(
        registry.client,
        keyspace: keyspace,
        service: service,
        count: count,
        phase: Phase(deadline: .now + .seconds(600))
      )
      metrics.set("write_s", (ContinuousClock.now - writeStart).seconds)
      var listings: [Duration] = []
      var snapshots: [Duration] = []
      var raw: [Duration] = []
      var rawLargePages: [Duration] = []
      for _ in 0 ..< 5 {
        var begin = ContinuousClock.now
        let listed = try await registry.instances(of: service)
        listings.append(ContinuousClock.now - begin)
        guard listed.count == count else {
          throw BenchError("instances(of:) returned \(listed.count), expected \(count)")
        }
        begin = ContinuousClock.now
        for try await event in registry.watch(service) {
          guard case .snapshot(let snapshot) = event, snapshot.instances.count == count else {
            throw BenchError("the watch's first event was not the full snapshot: \(event)")
          }
          break
        }
        snapshots.append(ContinuousClock.now - begin)
        begin = ContinuousClock.now
        let all = try await registry.client.getAll(.prefix(keyspace.servicePrefix(service)))
        raw.append(ContinuousClock.now - begin)
        guard all.kvs.count == count else {
          throw BenchError("getAll returned \(all.kvs.count), expected \(count)")
        }
        // etcd walks its index over the rest of the range for every page (to count it), so
        // fewer, larger pages cost less.
        begin = ContinuousClock.now
        _ = try await registry.client.getAll(
          .prefix(keyspace.servicePrefix(service)),
          pageSize: 10_000
        )
        rawLargePages.append(ContinuousClock.now - begin)
      }
      metrics.set("instances", Double(count))
      metrics.latency("instances_of", listings)
      metrics.latency("watch_first_snapshot", snapshots)
      metrics.latency("raw_get_all", raw)
      metrics.latency("raw_get_all_pages_10k", rawLargePages)
      return metrics
    }
  }

  // MARK: e

  /// 2,000 registrations (distinct addresses of one service) per mode: one caller on one
  /// registry, 16 callers on one registry, and 16 registries with one caller each. Every
  /// registration of a registry shares its lease, so in the first two modes one lease ends up
  /// with 2,000 keys.
  static func registrations(_ context: BenchContext) async throws -> Metrics {
    var metrics = Metrics()
    let total = 2000
    let modes: [(name: String, registries: Int, callers: Int)] = [
      ("seq", 1, 1), ("c16", 1, 16), ("c16_16reg", 16, 16),
    ]
    for mode in context.ordered(modes) {
      let service = "bench-e-\(mode.name)"
      let configuration = context.registry(prefix: context.prefix("e") + "-\(mode.name)")
      try await withRegistries(
        mode.registries,
        configuration: configuration,
        logger: context.logger
      ) { registries in
        // Warm-up: every registry grants its lease and opens its streams.
        for (index, registry) in registries.enumerated() {
          for warm in 0 ..< 10 {
            let instance = benchInstance(service: service + "-warm", index: index * 10 + warm)
            try await registry.register(instance)
            try await registry.deregister(service: instance.name, address: instance.address)
          }
        }
        let result = try await concurrently(
          callers: mode.callers,
          total: total,
          phase: context.phase()
        ) { index in
          let registry = registries[index % registries.count]
          try await registry.register(benchInstance(service: service, index: index))
        }
        metrics.rate("register_\(mode.name)", count: result.count, elapsed: result.elapsed)
        metrics.latency("register_\(mode.name)", result.latencies)
        if mode.name == "seq", result.latencies.count >= 400 {
          // With one caller the latencies are in order: the lease's growing key set shows here.
          metrics.latency("register_seq_first200", Array(result.latencies.prefix(200)))
          metrics.latency("register_seq_last200", Array(result.latencies.suffix(200)))
        }
        if result.count < total { metrics.note("\(mode.name) cut short by the time bound") }
      }
    }
    return metrics
  }

  // MARK: g

  /// 100 watchers of one service; a writer registry registers a new instance per trial. Times
  /// `register` until the last of the 100 watchers has `.added` (and until the first has it).
  /// Modes: 100 `watch` subscriptions on one registry (one shared etcd watch), and 100
  /// registries with one subscription each (100 connections, 100 etcd watches).
  static func watchers(_ context: BenchContext) async throws -> Metrics {
    var metrics = Metrics()
    let watcherCount = 100
    for mode in context.ordered(["1reg", "100reg"]) {
      let service = "bench-g"
      let configuration = context.registry(prefix: context.prefix("g") + "-\(mode)")
      let registryCount = mode == "1reg" ? 2 : 1 + watcherCount
      let logger = context.logger
      try await withRegistries(registryCount, configuration: configuration, logger: logger) {
        registries in
        let writer = registries[0]
        let arrivals = Arrivals()
        try await withThrowingTaskGroup(of: Void.self) { group in
          for index in 0 ..< watcherCount {
            let registry = registries[1 + index % (registries.count - 1)]
            group.addTask { await follow(registry.watch(service), into: arrivals, logger: logger) }
          }
          defer { group.cancelAll() }
          guard
            await arrivals.wait("snapshot", count: watcherCount, timeout: .seconds(30)) != nil
          else {
            throw BenchError("not all \(watcherCount) watchers got their first snapshot in 30 s")
          }
          let warmUp = 5
          let trials = 50
          let phase = context.phase()
          var all: [Duration] = []
          var first: [Duration] = []
          var timeouts = 0
          var trial = 0
          while trial < warmUp + trials, phase.isOpen {
            let instance = benchInstance(service: service, index: trial)
            trial += 1
            let begin = ContinuousClock.now
            try await writer.register(instance)
            let key = "+" + instance.address
            let everyone = await arrivals.wait(key, count: watcherCount, timeout: .seconds(10))
            if trial > warmUp {
              if let everyone {
                all.append(everyone - begin)
                if let earliest = arrivals.times(key).min() { first.append(earliest - begin) }
              } else {
                timeouts += 1
              }
            }
            try await writer.deregister(service: service, address: instance.address)
            _ = await arrivals.wait(
              "-" + instance.address,
              count: watcherCount,
              timeout: .seconds(10)
            )
          }
          metrics.latency("all_\(mode)", all)
          metrics.latency("first_\(mode)", first)
          if timeouts > 0 { metrics.set("timeouts_\(mode)", timeouts) }
          if trial < warmUp + trials { metrics.note("\(mode) cut short by the time bound") }
        }
      }
    }
    return metrics
  }
}

import Etcd
import Logging
import RegistryCore

/// `floor`: what etcd costs through the project's etcd client, next to etcdctl on the same etcd.
struct FloorScenario {
  static let scenario = Scenario(
    name: "floor",
    summary: "etcd through EtcdClient (put, prefix get, put-to-watch) vs etcdctl"
  ) { context in
    try await FloorScenario(context: context).run()
  }

  let context: BenchContext
  var base: String { self.context.prefix("floor") }
  static let value = [UInt8](repeating: UInt8(ascii: "v"), count: 64)

  func run() async throws -> Metrics {
    let logger = self.context.logger
    return try await withEtcdClient(config: self.context.etcd, logger: logger) { client in
      try await withEtcdClient(config: self.context.etcd, logger: logger) { second in
        var metrics = Metrics()
        try await self.puts(client, &metrics)
        try await self.prefixGets(client, &metrics)
        // The floor of scenario a is the two-client case: a registry puts, another one watches.
        for (name, watcher) in self.context.ordered([("watch", second), ("watch_1client", client)])
        {
          try await self.putToWatch(putter: client, watcher: watcher, name: name, &metrics)
        }
        if Etcdctl.isInstalled {
          try await self.etcdctl(client, &metrics)
        } else {
          metrics.note("etcdctl not installed: no etcdctl comparison")
        }
        return metrics
      }
    }
  }

  /// Sequential puts (latency and rate), then 16 concurrent callers (rate and latency).
  private func puts(_ client: EtcdClient, _ metrics: inout Metrics) async throws {
    let base = self.base
    for index in 0 ..< 300 { try await client.put("\(base)/warm/\(index)", value: Self.value) }

    let total = 5000
    let phase = self.context.phase()
    var latencies: [Duration] = []
    latencies.reserveCapacity(total)
    let start = ContinuousClock.now
    while latencies.count < total, phase.isOpen {
      let begin = ContinuousClock.now
      try await client.put("\(base)/seq/\(latencies.count)", value: Self.value)
      latencies.append(ContinuousClock.now - begin)
    }
    let elapsed = ContinuousClock.now - start
    metrics.latency("put", latencies)
    metrics.rate("put_seq", count: latencies.count, elapsed: elapsed)
    if latencies.count < total { metrics.note("sequential puts cut short by the time bound") }

    // The same with a lease, as the registry writes: one key, so the lease never holds more
    // than one (etcd 3.4 copies a lease's keys on every put with it).
    let lease = try await client.grantLease(ttl: .seconds(60))
    var leased: [Duration] = []
    let leasePhase = self.context.phase()
    while leased.count < 2000, leasePhase.isOpen {
      let begin = ContinuousClock.now
      try await client.put("\(base)/lease", value: Self.value, lease: lease.id)
      leased.append(ContinuousClock.now - begin)
    }
    metrics.latency("put_lease", leased)
    try await client.revokeLease(lease.id)

    let concurrent = try await concurrently(callers: 16, total: total, phase: self.context.phase())
    {
      index in
      try await client.put("\(base)/c16/\(index)", value: Self.value)
    }
    metrics.rate("put_c16", count: concurrent.count, elapsed: concurrent.elapsed)
    metrics.latency("put_c16", concurrent.latencies)
    if concurrent.count < total { metrics.note("concurrent puts cut short by the time bound") }
  }

  /// Prefix gets of 1,000 and 10,000 registry-sized values.
  private func prefixGets(_ client: EtcdClient, _ metrics: inout Metrics) async throws {
    for (size, trials) in [(1000, 100), (10000, 30)] {
      let prefix = "\(self.base)/get\(size)/"
      _ = try await concurrently(callers: 16, total: size, phase: self.context.phase()) { index in
        let instance = benchInstance(service: "bench", index: index)
        try await client.put(
          "\(prefix)\(instance.address)",
          value: InstanceCodec.json.encode(instance)
        )
      }
      for _ in 0 ..< 3 { _ = try await client.get(.prefix(prefix)) }
      let phase = self.context.phase()
      var latencies: [Duration] = []
      while latencies.count < trials, phase.isOpen {
        let begin = ContinuousClock.now
        let result = try await client.get(.prefix(prefix))
        latencies.append(ContinuousClock.now - begin)
        guard result.kvs.count == size else {
          throw BenchError("prefix get returned \(result.kvs.count) keys, expected \(size)")
        }
      }
      metrics.latency("get\(size / 1000)k", latencies)
    }
  }

  /// Time from issuing a put until a watch on another (or the same) client delivers it.
  private func putToWatch(
    putter: EtcdClient,
    watcher: EtcdClient,
    name: String,
    _ metrics: inout Metrics
  ) async throws {
    let prefix = "\(self.base)/\(name)/"
    let arrivals = Arrivals()
    let logger = self.context.logger
    let (latencies, timeouts) = try await withThrowingTaskGroup(of: Void.self) { group in
      group.addTask {
        do {
          for try await batch in watcher.watch(.prefix(prefix)) {
            let now = ContinuousClock.now
            for event in batch.events { arrivals.record(event.kv.keyString, at: now) }
          }
        } catch {
          logger.warning("floor watch ended with an error", metadata: ["error": "\(error)"])
        }
      }
      defer { group.cancelAll() }
      try await self.waitUntilLive(putter, prefix: prefix, arrivals: arrivals)
      return try await self.timePuts(putter, prefix: prefix, trials: 1000, arrivals: arrivals)
    }
    metrics.latency("put_to_\(name)", latencies)
    if timeouts > 0 { metrics.set("put_to_\(name)_timeouts", timeouts) }
  }

  /// Puts until the watch delivers one (it is then established), then 50 more as warm-up.
  private func waitUntilLive(
    _ putter: EtcdClient,
    prefix: String,
    arrivals: Arrivals
  ) async throws {
    var live = false
    for attempt in 0 ..< 100 where !live {
      let key = "\(prefix)live-\(attempt)"
      try await putter.put(key, value: Self.value)
      live = await arrivals.wait(key, timeout: .milliseconds(200)) != nil
    }
    guard live else { throw BenchError("the watch on \(prefix) delivered nothing in 20 s") }
    for index in 0 ..< 50 {
      let key = "\(prefix)warm-\(index)"
      try await putter.put(key, value: Self.value)
      _ = await arrivals.wait(key, timeout: .seconds(5))
    }
  }

  /// One put at a time; each latency runs from before the put to the watch's receipt of it.
  private func timePuts(
    _ putter: EtcdClient,
    prefix: String,
    trials: Int,
    arrivals: Arrivals
  ) async throws -> ([Duration], Int) {
    let phase = self.context.phase()
    var latencies: [Duration] = []
    var timeouts = 0
    var index = 0
    while index < trials, phase.isOpen {
      let key = "\(prefix)k-\(index)"
      index += 1
      let begin = ContinuousClock.now
      try await putter.put(key, value: Self.value)
      if let seen = await arrivals.wait(key, timeout: .seconds(5)) {
        latencies.append(seen - begin)
      } else {
        timeouts += 1
      }
    }
    return (latencies, timeouts)
  }

  /// The same operations with etcdctl, one process each, plus `etcdctl check perf`.
  private func etcdctl(_ client: EtcdClient, _ metrics: inout Metrics) async throws {
    let endpoint = self.context.endpoint
    let value = String(decoding: Self.value, as: UTF8.self)

    func timed(
      _ name: String,
      _ runs: Int,
      _ arguments: (Int) -> [String],
      network: Bool = true
    )
      async throws
    {
      for index in 0 ..< 3 { _ = try await Etcdctl.run(arguments(-1 - index), endpoint: endpoint) }
      let phase = self.context.phase()
      var latencies: [Duration] = []
      while latencies.count < runs, phase.isOpen {
        let outcome = try await Etcdctl.run(
          arguments(latencies.count),
          endpoint: network ? endpoint : nil
        )
        guard outcome.status == 0 else {
          throw BenchError("etcdctl \(arguments(latencies.count)) exited \(outcome.status)")
        }
        latencies.append(outcome.elapsed)
      }
      metrics.latency(name, latencies)
    }

    try await timed("etcdctl_version", 20, { _ in ["version"] }, network: false)
    try await timed("etcdctl_put", 50) { ["put", "\(self.base)/ctl/\($0)", value] }
    try await timed("etcdctl_get1k", 20) { _ in ["get", "--prefix", "\(self.base)/get1000/"] }
    try await timed("etcdctl_get10k", 10) { _ in ["get", "--prefix", "\(self.base)/get10000/"] }

    // A long-running etcdctl watch: no process start per event, Go's client end to end.
    let prefix = "\(self.base)/ctlwatch/"
    let arrivals = Arrivals()
    let watch = try EtcdctlWatch(endpoint: endpoint, prefix: prefix, arrivals: arrivals)
    do {
      try await self.waitUntilLive(client, prefix: prefix, arrivals: arrivals)
      let (latencies, timeouts) = try await self.timePuts(
        client,
        prefix: prefix,
        trials: 500,
        arrivals: arrivals
      )
      metrics.latency("put_to_etcdctl_watch", latencies)
      if timeouts > 0 { metrics.set("put_to_etcdctl_watch_timeouts", timeouts) }
    } catch {
      await watch.stop()
      throw error
    }
    await watch.stop()

    if self.context.checkPerf {
      let outcome = try await Etcdctl.run(
        ["check", "perf", "--load=s", "--prefix=\(self.base)/perf/"],
        endpoint: endpoint,
        capture: true
      )
      if let perf = Etcdctl.parseCheckPerf(outcome.output) {
        metrics.set("checkperf_s_writes_per_s", perf.throughput)
        metrics.set("checkperf_s_slowest_ms", perf.slowest.milliseconds)
        metrics.set("checkperf_s_stddev_ms", perf.stddev.milliseconds)
        metrics.set("checkperf_s_pass", perf.passed ? 1 : 0)
      } else {
        metrics.note("etcdctl check perf printed no result (exit \(outcome.status))")
      }
    }
  }
}

import Etcd
import EtcdRegistry
import Logging
import RegistryCore
import Synchronization

/// What every scenario run gets: where etcd is, which run this is, and the bounds to keep.
struct BenchContext: Sendable {
  /// `host:port` of the etcd under test.
  var endpoint: String
  /// The run, from 1.
  var run: Int
  /// A key prefix of this invocation; every scenario run writes below its own part of it.
  var namespace: String
  var logger: Logger
  /// Whether the floor runs `etcdctl check perf` (60 s).
  var checkPerf: Bool
  /// The most one measured phase may take; loops stop early (and say so) when it runs out.
  var phaseLimit: Duration
  /// How long the soak scenario runs.
  var soakMinutes: Int = 2

  /// The key prefix of one scenario in this run.
  func prefix(_ scenario: String) -> String { "\(self.namespace)/\(scenario)-r\(self.run)" }

  /// The etcd client configuration for the endpoint under test.
  var etcd: EtcdClient.Config {
    .defaults { $0.endpoints = [self.endpoint] }
  }

  /// A registry configuration under `prefix` (default TTL 10 s).
  func registry(prefix: String) -> EtcdServiceRegistry.Config {
    .defaults {
      $0.etcd = self.etcd
      $0.keyPrefix = prefix
    }
  }

  /// `modes` in order for odd runs and reversed for even runs, so that no mode always runs
  /// first (on a warmer or colder etcd).
  func ordered<Mode>(_ modes: [Mode]) -> [Mode] {
    self.run % 2 == 1 ? modes : modes.reversed()
  }

  /// A time bound for one phase, starting now.
  func phase() -> Phase { Phase(deadline: .now + self.phaseLimit) }
}

/// The time bound of one measured phase.
struct Phase: Sendable {
  var deadline: ContinuousClock.Instant
  var isOpen: Bool { ContinuousClock.now < self.deadline }
}

struct BenchError: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
}

/// The address of instance `index`: `10.a.b.c:8080`, distinct for the first 16 million.
func benchAddress(_ index: Int) -> String {
  let n = index + 1
  return "10.\(n >> 16 & 255).\(n >> 8 & 255).\(n & 255):8080"
}

/// A small registry value, the size of a real one (about 70 bytes).
func benchInstance(service: String, index: Int) -> ServiceInstance {
  ServiceInstance(name: service, address: benchAddress(index), weight: 1 + index % 3, group: "A")
}

/// A shared counter for callers that take work from one pool.
final class Counter: Sendable {
  private let value = Atomic<Int>(0)
  /// Returns the next index, from 0.
  func next() -> Int { self.value.wrappingAdd(1, ordering: .relaxed).oldValue }
}

/// Runs `operation` from `callers` concurrent tasks until `total` operations have started or the
/// phase ends; returns how many ran, the wall time, and each operation's latency.
func concurrently(
  callers: Int,
  total: Int,
  phase: Phase,
  _ operation: @escaping @Sendable (Int) async throws -> Void
) async throws -> (count: Int, elapsed: Duration, latencies: [Duration]) {
  let counter = Counter()
  let start = ContinuousClock.now
  let latencies = try await withThrowingTaskGroup(of: [Duration].self) { group in
    for _ in 0 ..< callers {
      group.addTask {
        var latencies: [Duration] = []
        latencies.reserveCapacity(total / callers + 1)
        while phase.isOpen {
          let index = counter.next()
          guard index < total else { break }
          let begin = ContinuousClock.now
          try await operation(index)
          latencies.append(ContinuousClock.now - begin)
        }
        return latencies
      }
    }
    var all: [Duration] = []
    for try await part in group { all += part }
    return all
  }
  return (latencies.count, ContinuousClock.now - start, latencies)
}

/// Runs `count` registries for the duration of `body`, then shuts them all down together.
func withRegistries<Result: Sendable>(
  _ count: Int,
  configuration: EtcdServiceRegistry.Config,
  logger: Logger,
  _ body: ([EtcdServiceRegistry]) async throws -> Result
) async throws -> Result {
  var registries: [EtcdServiceRegistry] = []
  for _ in 0 ..< count {
    registries.append(try EtcdServiceRegistry(config: configuration, logger: logger))
  }
  return try await withThrowingTaskGroup(of: Void.self) { group in
    for registry in registries {
      group.addTask { try await registry.run() }
    }
    let outcome: Swift.Result<Result, any Error>
    do {
      outcome = .success(try await body(registries))
    } catch {
      outcome = .failure(error)
    }
    await withTaskGroup(of: Void.self) { shutdowns in
      for registry in registries {
        shutdowns.addTask { await registry.shutdown() }
      }
    }
    try await group.waitForAll()
    return try outcome.get()
  }
}

/// Follows a registry watch, recording `snapshot` for the first set, `+address` for each
/// instance in it or added, `~address` for updates and `-address` for removals.
func follow(_ watch: ServiceWatch, into arrivals: Arrivals, logger: Logger) async {
  do {
    for try await event in watch {
      let now = ContinuousClock.now
      switch event {
      case .snapshot(let snapshot):
        for instance in snapshot.instances { arrivals.record("+" + instance.address, at: now) }
        arrivals.record("snapshot", at: now)
      case .added(let instance, _):
        arrivals.record("+" + instance.address, at: now)
      case .updated(let instance, _):
        arrivals.record("~" + instance.address, at: now)
      case .removed(let instance, _):
        arrivals.record("-" + instance.address, at: now)
      }
    }
  } catch {
    logger.warning("registry watch ended with an error", metadata: ["error": "\(error)"])
  }
}

/// Writes `count` instances of `service` straight into etcd (no lease), 16 puts at a time, in
/// the registry's key layout and JSON.
func populate(
  _ client: EtcdClient,
  keyspace: RegistryKeyspace,
  service: String,
  count: Int,
  phase: Phase
) async throws {
  let result = try await concurrently(callers: 16, total: count, phase: phase) { index in
    let instance = benchInstance(service: service, index: index)
    try await client.put(
      keyspace.key(for: instance),
      value: InstanceCodec.json.encode(instance)
    )
  }
  guard result.count == count else {
    throw BenchError("wrote only \(result.count) of \(count) instances of \(service) in time")
  }
}

import Etcd
import EtcdHarness
import EtcdRegistry
import Foundation
import RegistryCore
import RegistryPrimitives
import RegistryTesting
import Synchronization
import Testing

@Suite("EtcdServiceRegistry under faults", .timeLimit(.minutes(4)))
struct EtcdRegistryFaultTests {
  @Test(
    "3 members, leader killed during registration churn: nothing lost, watchers end with exactly the true set, no event twice"
  )
  func leaderKillDuringChurn() async throws {
    try await withEtcdCluster(.defaults { $0.members = 3 }) { cluster in
      let servers = try (0 ..< 4).map { _ in try RunningRegistry(cluster, prefix: "/churn") }
      let watchers = try (0 ..< 2).map { _ in try RunningRegistry(cluster, prefix: "/churn") }
      let recorders = watchers.map { WatchRecorder($0.registry.watch("svc")) }
      defer { recorders.forEach { $0.cancel() } }
      for recorder in recorders { try await recorder.waitForAddresses([]) }

      // Each server registers 10 instances and deregisters every third one, while the leader dies.
      let leader = try await cluster.leader()
      let expected = Locked(Set<String>())
      try await withThrowingTaskGroup(of: Void.self) { group in
        for (index, server) in servers.enumerated() {
          group.addTask {
            for port in 1 ... 10 {
              let address = "10.0.\(index).1:\(port)"
              try await retrying {
                try await server.registry.register(ServiceInstance(name: "svc", address: address))
              }
              expected.withLock { _ = $0.insert(address) }
              if port % 3 == 0 {
                try await retrying {
                  try await server.registry.deregister(service: "svc", address: address)
                }
                expected.withLock { _ = $0.remove(address) }
              }
            }
          }
        }
        group.addTask {
          try await waitUntil("churn has started", within: .seconds(10)) {
            expected.withLock { $0.count } >= 8
          }
          await leader.kill()
        }
        try await group.waitForAll()
      }
      let truth = expected.withLock { $0 }.sorted()
      #expect(truth.count == 28)
      for recorder in recorders {
        try await recorder.waitForAddresses(truth, within: .seconds(20))
        let revisions = recorder.events.dropFirst().map(\.revision)
        #expect(
          zip(revisions, revisions.dropFirst()).allSatisfy { $0 < $1 },
          "no event reported twice or out of order"
        )
      }
      let survivors = cluster.members.filter { $0 !== leader }
      let listed = try await cluster.etcdctl(
        ["get", "/churn/svc/", "--prefix", "--keys-only"],
        endpoints: survivors.map(\.adminEndpoint)
      )
      #expect(listed.split(separator: "\n").filter { !$0.isEmpty }.count == truth.count)
      for registry in servers + watchers { await registry.stop() }
    }
  }

  @Test(
    "200 registries recovering at once after etcd comes back wiped: all succeed, spread by jitter"
  )
  func recoveryStampede() async throws {
    let count = Int(ProcessInfo.processInfo.environment["STAMPEDE_REGISTRIES"] ?? "") ?? 200
    try await withEtcdCluster { cluster in
      let logs = LogCapture()
      let registries = try (0 ..< count).map { index in
        try RunningRegistry(
          cluster,
          prefix: "/stampede",
          logger: logs.logger(label: "registry-\(index)")
        )
      }
      for (index, running) in registries.enumerated() {
        try await running.registry.register(
          ServiceInstance(name: "svc", address: "10.1.\(index / 250).\(index % 250 + 1):80")
        )
      }
      let watcher = try RunningRegistry(cluster, prefix: "/stampede")
      let arrivals = Locked<[String: ContinuousClock.Instant]>([:])
      let recorder = WatchRecorder(watcher.registry.watch("svc"))
      defer { recorder.cancel() }
      try await waitUntil("all are registered", within: .seconds(30)) {
        recorder.currentAddresses.count == count
      }

      let logsBefore = logs.entries.count
      try await cluster.members[0].restart(wipeData: true)
      let back = ContinuousClock.now
      // Record when each instance reappears in etcd.
      try await waitUntil(
        "every registration is restored",
        within: .seconds(60),
        pollEvery: .milliseconds(20)
      ) {
        let listed = try? await cluster.etcdctl([
          "get", "/stampede/svc/", "--prefix", "--keys-only",
        ])
        let keys = listed?.split(separator: "\n").filter { !$0.isEmpty } ?? []
        let now = ContinuousClock.now
        arrivals.withLock { arrivals in
          for key in keys where arrivals[String(key)] == nil { arrivals[String(key)] = now }
        }
        return keys.count == count
      }
      let times = arrivals.withLock { $0.values.map { $0 - back } }.sorted()
      let spread = (times.last ?? .zero) - (times.first ?? .zero)
      print(
        "recovery of \(count) registries after a wiped restart: first \(times.first ?? .zero), median \(times[times.count / 2]), last \(times.last ?? .zero), spread \(spread)"
      )
      #expect(
        spread > .milliseconds(100),
        "re-registrations are spread out, not all at one instant"
      )
      // The arrival spread above also comes from queueing; the jitter itself is measured from
      // what each registry chose. Catches a jitter that is lost (all delays equal) or narrowed:
      // the first attempts, drawn from 0 to 1 s, must fill at least 8 of its ten 100 ms slots.
      var firstDelays: [String: Int] = [:]
      for entry in logs.entries.dropFirst(logsBefore)
      where entry.message == "registry recovery starts" && firstDelays[entry.label] == nil {
        firstDelays[entry.label] = entry.metadata["registry.first_attempt_in_ms"].flatMap {
          Int($0)
        }
      }
      #expect(firstDelays.count == count, "every registry recovered: \(firstDelays.count)")
      let slots = Set(firstDelays.values.map { min($0 / 100, 9) })
      #expect(slots.count >= 8, "first attempts fell in slots \(slots.sorted())")
      try await recorder.waitForAddresses(
        (0 ..< count).map { "10.1.\($0 / 250).\($0 % 250 + 1):80" },
        within: .seconds(30)
      )
      await watcher.stop()
      for running in registries { await running.stop() }
    }
  }
}

/// Retries an operation that may fail while the cluster elects a new leader.
func retrying(_ body: () async throws -> Void) async throws {
  var lastError: (any Error)?
  let deadline = ContinuousClock.now + .seconds(20)
  while ContinuousClock.now < deadline {
    do {
      try await body()
      return
    } catch {
      lastError = error
      try await Task.sleep(for: .milliseconds(50))
    }
  }
  throw lastError ?? WaitTimeoutError(description: "retrying timed out")
}

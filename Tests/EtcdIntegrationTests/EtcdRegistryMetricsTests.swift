import Etcd
import EtcdHarness
import EtcdRegistry
import MetricsTestKit
import RegistryCore
import RegistryTesting
import Testing

@Suite("EtcdServiceRegistry metrics", .timeLimit(.minutes(3)))
struct EtcdRegistryMetricsTests {
  @Test(
    "registrations, grants, keep-alive latency, watched instances, malformed values, a lost lease and a compaction move the metrics; a service's series end with its last watcher"
  )
  func metricsMove() async throws {
    try await withEtcdCluster { cluster in
      let metrics = TestMetrics()
      let running = try RunningRegistry(cluster, prefix: "/metrics", metricsFactory: metrics)
      let registry = running.registry
      func counter(_ label: String, _ dimensions: [(String, String)] = []) -> Int64 {
        metrics.counters(label: label, dimensions: dimensions).first?.totalValue ?? 0
      }
      let service = [("service", "svc")]

      try await registry.register(ServiceInstance(name: "svc", address: "10.0.0.1:1"))
      try await registry.register(ServiceInstance(name: "svc", address: "10.0.0.1:2"))
      #expect(counter("registry_registrations_total") == 2)
      #expect(counter("registry_lease_grants_total") == 1)

      let recorder = WatchRecorder(registry.watch("svc"))
      defer { recorder.cancel() }
      try await recorder.waitForAddresses(["10.0.0.1:1", "10.0.0.1:2"])
      try await waitUntil("the gauge shows 2 watched instances") {
        metrics.recorders(label: "registry_watched_instances", dimensions: service).first?
          .lastValue == 2
      }
      try await waitUntil("a lease renewal is timed", within: .seconds(5)) {
        let values =
          metrics.timers(label: "etcd_lease_keepalive_duration_seconds").first?.values ?? []
        return !values.isEmpty && values.allSatisfy { $0 > 0 }
      }

      // Someone else writes a value that does not decode: skipped and counted.
      try await cluster.etcdctl(["put", "/metrics/svc/10.0.0.9:1", "not json"])
      try await waitUntil("the malformed value is counted") {
        counter("registry_malformed_values_total") >= 1
      }
      try await cluster.etcdctl(["del", "/metrics/svc/10.0.0.9:1"])

      // The lease is revoked behind the registry's back: lost, granted again, re-registered.
      let kv = try #require(
        try await registry.client.get(.key("/metrics/svc/10.0.0.1:1")).kvs.first
      )
      try await registry.client.revokeLease(kv.lease)
      try await waitUntil("the registry re-registers", within: .seconds(15)) {
        counter("registry_reregistrations_total") >= 1
          && counter("registry_lease_losses_total") >= 1
          && counter("registry_lease_grants_total") >= 2
          && counter("registry_recovery_attempts_total") >= 1
      }
      #expect(counter("registry_reregistrations_total") == 1, "one loss, one re-registration")
      try await recorder.waitForAddresses(["10.0.0.1:1", "10.0.0.1:2"], within: .seconds(10))
      #expect(counter("registry_watch_compactions_total", service) == 0)

      // Cut the registry off, change and compact behind its back: its watch restarts from a
      // listing, counted as a restart and a compaction.
      try await cluster.members[0].restart(isolateClients: true)
      try await cluster.etcdctl([
        "put", "/metrics/svc/10.0.0.1:3",
        #"{"Name":"svc","Address":"10.0.0.1:3","Weight":1,"Group":""}"#,
      ])
      // Compacting at the last revision removes the ones before it, where the watch resumes.
      for i in 0 ..< 2 { try await cluster.etcdctl(["put", "/metrics-noise", "\(i)"]) }
      let status = try await cluster.etcdctl(["endpoint", "status", "-w", "fields"])
      let revision = status.split(separator: "\n").first { $0.contains("\"Revision\"") }
        .flatMap { $0.split(separator: ":").last }
        .flatMap { Int($0.trimmingCharacters(in: .whitespaces)) }
      try await cluster.etcdctl(["compact", "\(try #require(revision))"])
      try await cluster.members[0].restart()
      try await waitUntil("the watch restart after the compaction is counted", within: .seconds(20))
      {
        counter("registry_watch_compactions_total", service) >= 1
      }
      #expect(counter("registry_watch_restarts_total", service) >= 1)
      try await recorder.waitForAddresses(
        ["10.0.0.1:1", "10.0.0.1:2", "10.0.0.1:3"],
        within: .seconds(20)
      )
      try await waitUntil("the gauge shows 3 watched instances") {
        metrics.recorders(label: "registry_watched_instances", dimensions: service).first?
          .lastValue == 3
      }

      // The last watcher leaves: the service's series go with its feed, and a new watcher
      // starts them again.
      recorder.cancel()
      try await waitUntil("the service's series are destroyed") {
        metrics.recorders(label: "registry_watched_instances", dimensions: service).isEmpty
          && metrics.counters(label: "registry_watch_restarts_total", dimensions: service).isEmpty
      }
      let again = WatchRecorder(registry.watch("svc"))
      defer { again.cancel() }
      try await again.waitForAddresses(["10.0.0.1:1", "10.0.0.1:2", "10.0.0.1:3"])
      try await waitUntil("the new feed's gauge shows 3 watched instances") {
        metrics.recorders(label: "registry_watched_instances", dimensions: service).first?
          .lastValue == 3
      }
      #expect(counter("registry_watch_restarts_total", service) == 0)
      await running.stop()
    }
  }
}

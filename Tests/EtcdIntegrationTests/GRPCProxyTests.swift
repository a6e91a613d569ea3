import Etcd
import EtcdHarness
import EtcdRegistry
import Foundation
import RegistryCore
import RegistryTesting
import Testing

/// The registry through etcd's grpc-proxy (`etcd grpc-proxy start`), which coalesces watches and
/// numbers a stream's watches itself.
@Suite("through etcd's grpc-proxy", .timeLimit(.minutes(2)), .serialized)
struct GRPCProxyTests {
  @Test(
    "registration, keep-alive, repair within 1 s, watches, compaction and a proxy restart"
  )
  func registryThroughProxy() async throws {
    try await withEtcdCluster { cluster in
      let proxy = try await cluster.startProxy()
      let prefix = uniquePrefix("proxy")
      // A TTL longer than the proxy's restart below: a lease that ends while the proxy is down
      // would legitimately be lost.
      let viaProxy = try RunningRegistry(cluster, prefix: prefix) {
        $0.etcd.endpoints = [proxy.endpoint]
        $0.leaseTTL = .seconds(5)
      }
      let watcherViaProxy = try RunningRegistry(cluster, prefix: prefix) {
        $0.etcd.endpoints = [proxy.endpoint]
      }
      let direct = try RunningRegistry(cluster, prefix: prefix)
      func key(_ address: String) -> String { "\(prefix)svc/\(address)" }
      func exists(_ address: String) async throws -> Bool {
        let value = try await cluster.etcdctl(["get", key(address), "--print-value-only"])
        return !value.isEmpty
      }

      // Two watches on one stream behind the proxy: each must get its own events (the proxy
      // numbers them from 0; a client that chose its own ids got nothing or the wrong ones).
      let other = WatchRecorder(watcherViaProxy.registry.watch("other"))
      let watched = WatchRecorder(watcherViaProxy.registry.watch("svc"))
      defer {
        other.cancel()
        watched.cancel()
      }
      try await other.waitForAddresses([])
      try await watched.waitForAddresses([])

      // Registration and keep-alive through the proxy: the key outlives several TTLs.
      try await viaProxy.registry.register(ServiceInstance(name: "svc", address: "127.0.0.1:1"))
      try await watched.waitForAddresses(["127.0.0.1:1"])
      let registeredAt = ContinuousClock.now
      try await waitUntil("more than two lease TTLs have passed", within: .seconds(15)) {
        ContinuousClock.now - registeredAt >= .seconds(11)
      }
      #expect(try await exists("127.0.0.1:1"), "the lease was kept alive through the proxy")
      try await direct.registry.register(ServiceInstance(name: "other", address: "127.0.0.1:9"))
      try await other.waitForAddresses(["127.0.0.1:9"])
      #expect(watched.currentAddresses == ["127.0.0.1:1"], "the other watch's event went elsewhere")

      // Repair: a key deleted by hand comes back within a second.
      _ = try await cluster.etcdctl(["del", key("127.0.0.1:1")])
      let deletedAt = ContinuousClock.now
      try await waitUntil(
        "the deleted key is restored",
        within: .seconds(1),
        pollEvery: .milliseconds(20)
      ) {
        try await exists("127.0.0.1:1")
      }
      print("grpc-proxy: deleted key restored after \(ContinuousClock.now - deletedAt)")

      // A proxy restart with changes and a compaction while it is down: the watch resumes from
      // a compacted revision, lists again and ends with exactly the true set.
      let eventsBeforeRestart = watched.events.count
      await proxy.stop()
      try await direct.registry.register(ServiceInstance(name: "svc", address: "127.0.0.1:2"))
      try await direct.registry.register(ServiceInstance(name: "svc", address: "127.0.0.1:3"))
      try await direct.registry.deregister(service: "svc", address: "127.0.0.1:3")
      let status = try await cluster.etcdctl(["endpoint", "status", "-w", "json"])
      let revision = try #require(Self.revision(inStatus: status))
      _ = try await cluster.etcdctl(["compact", "\(revision)"])
      try await proxy.restart()
      try await watched.waitForAddresses(["127.0.0.1:1", "127.0.0.1:2"], within: .seconds(10))
      #expect(
        !watched.events.dropFirst(eventsBeforeRestart).contains {
          if case .removed(let instance, _) = $0 { return instance.address == "127.0.0.1:1" }
          return false
        },
        "the registration through the proxy did not disappear across the restart"
      )
      // The registry through the restarted proxy still repairs its key.
      _ = try await cluster.etcdctl(["del", key("127.0.0.1:1")])
      try await waitUntil("the key is restored after the restart", within: .seconds(2)) {
        try await exists("127.0.0.1:1")
      }

      for running in [viaProxy, watcherViaProxy, direct] { await running.stop() }
      #expect(try await !exists("127.0.0.1:1"), "shutdown through the proxy revoked the lease")
    }
  }

  /// The revision in `etcdctl endpoint status -w json`.
  static func revision(inStatus json: String) -> Int64? {
    guard let range = json.range(of: "\"revision\":") else { return nil }
    let digits = json[range.upperBound...].prefix { $0.isNumber }
    return Int64(digits)
  }
}

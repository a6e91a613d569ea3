import Etcd
import EtcdHarness
import EtcdRegistry
import Foundation
import RegistryCore
import RegistryPrimitives
import RegistryTesting
import Synchronization
import Testing

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

@Suite("EtcdServiceRegistry", .timeLimit(.minutes(3)))
struct EtcdRegistryTests {
  @Test("conformance", arguments: RegistryConformance.checks)
  func conformance(_ check: RegistryConformance.Check) async throws {
    let cluster = try await SharedEtcd.get()
    let prefix = uniquePrefix("conformance")
    let running = Locked<[RunningRegistry]>([])
    try await check.run { count in
      let registries = try (0 ..< count).map { _ in try RunningRegistry(cluster, prefix: prefix) }
      running.withLock { $0 = registries }
      return registries.map(\.registry)
    }
    for registry in running.withLock({ $0 }) { await registry.stop() }
  }

  @Test(
    "interop: values written by etcdctl in the Go design's JSON are listed and watched; ours read back as that JSON; malformed ones are skipped"
  )
  func interop() async throws {
    let cluster = try await SharedEtcd.get()
    let prefix = uniquePrefix("interop")
    let running = try RunningRegistry(cluster, prefix: prefix)
    let registry = running.registry
    let root = prefix.dropLast()
    try await cluster.etcdctl([
      "put", "\(root)/svc/10.0.0.1:80",
      #"{"Name":"svc","Address":"10.0.0.1:80","Weight":5,"Group":"A"}"#,
    ])
    try await cluster.etcdctl(["put", "\(root)/svc/10.0.0.9:80", "not json at all"])
    let recorder = WatchRecorder(registry.watch("svc"))
    defer { recorder.cancel() }
    try await recorder.waitForAddresses(["10.0.0.1:80"])
    #expect(
      try await registry.instances(of: "svc") == [
        ServiceInstance(name: "svc", address: "10.0.0.1:80", weight: 5, group: "A")
      ]
    )

    try await cluster.etcdctl([
      "put", "\(root)/svc/10.0.0.2:80",
      #"{"Name":"svc","Address":"10.0.0.2:80","Weight":1,"Group":"B","Future":true}"#,
    ])
    try await recorder.waitForAddresses(["10.0.0.1:80", "10.0.0.2:80"])

    try await registry.register(
      ServiceInstance(name: "svc", address: "10.0.0.3:80", weight: 3, group: "A")
    )
    let written = try await cluster.etcdctl([
      "get", "\(root)/svc/10.0.0.3:80", "--print-value-only",
    ])
    #expect(
      written.trimmingCharacters(in: .newlines)
        == #"{"Name":"svc","Address":"10.0.0.3:80","Weight":3,"Group":"A"}"#
    )
    try await recorder.waitForAddresses(["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"])

    try await cluster.etcdctl(["put", "\(root)/svc/10.0.0.2:80", "{broken"])
    try await recorder.waitForAddresses(["10.0.0.1:80", "10.0.0.3:80"])
    await running.stop()
  }

  @Test("the etcd naming codec writes what grpc-go's etcd resolver reads")
  func namingCodec() async throws {
    let cluster = try await SharedEtcd.get()
    let prefix = uniquePrefix("naming")
    let running = try RunningRegistry(cluster, prefix: prefix) { $0.codec = .etcdNaming }
    try await running.registry.register(
      ServiceInstance(name: "svc", address: "10.0.0.3:80", weight: 2)
    )
    let written = try await cluster.etcdctl([
      "get", "\(prefix)svc/10.0.0.3:80", "--print-value-only",
    ])
    #expect(
      written.trimmingCharacters(in: .newlines)
        == #"{"Op":0,"Addr":"10.0.0.3:80","Metadata":{"Weight":2,"Group":""}}"#
    )
    #expect(try await running.registry.instances(of: "svc").map(\.weight) == [2])
    await running.stop()
  }

  // Catches a registry that opens an etcd watch per local watcher: etcd's own gauge of its
  // watchers grows by one per service, however many local watchers follow it.
  @Test("one etcd watch per service per process, however many local watchers")
  func oneWatchPerService() async throws {
    try await withEtcdCluster { cluster in
      let running = try RunningRegistry(cluster, prefix: "/shared-watch")
      try await running.registry.register(ServiceInstance(name: "a", address: "10.0.0.1:80"))
      try await running.registry.register(ServiceInstance(name: "b", address: "10.0.0.2:80"))
      let metrics = try #require(URL(string: "\(cluster.members[0].clientURL)/metrics"))
      @Sendable func etcdWatchers() async throws -> Int {
        let (data, _) = try await URLSession.shared.data(from: metrics)
        let line = String(decoding: data, as: UTF8.self).split(separator: "\n")
          .first { $0.hasPrefix("etcd_debugging_mvcc_watcher_total ") }
        return try #require(line.flatMap { Double($0.split(separator: " ")[1]) }.map { Int($0) })
      }
      let baseline = try await etcdWatchers()
      let followA = (0 ..< 20).map { _ in WatchRecorder(running.registry.watch("a")) }
      let followB = (0 ..< 10).map { _ in WatchRecorder(running.registry.watch("b")) }
      for recorder in followA { try await recorder.waitForAddresses(["10.0.0.1:80"]) }
      for recorder in followB { try await recorder.waitForAddresses(["10.0.0.2:80"]) }
      // Every local watcher has its snapshot, so every etcd watch it needed exists.
      try await waitUntil("etcd reports two more watchers", within: .seconds(5)) {
        try await etcdWatchers() == baseline + 2
      }
      for recorder in followA + followB { recorder.cancel() }
      try await waitUntil("etcd's watchers go back to the baseline", within: .seconds(10)) {
        try await etcdWatchers() == baseline
      }
      await running.stop()
    }
  }

  @Test("a key deleted by someone else is restored within a second")
  func keyDeleted() async throws {
    let cluster = try await SharedEtcd.get()
    let prefix = uniquePrefix("deleted")
    let running = try RunningRegistry(cluster, prefix: prefix)
    let observer = try RunningRegistry(cluster, prefix: prefix)
    try await running.registry.register(ServiceInstance(name: "svc", address: "10.0.0.1:80"))
    let recorder = WatchRecorder(observer.registry.watch("svc"))
    defer { recorder.cancel() }
    try await recorder.waitForAddresses(["10.0.0.1:80"])
    try await cluster.etcdctl(["del", "\(prefix)svc/10.0.0.1:80"])
    // The observer sees the deletion, then the restoration, within a second of the delete.
    try await recorder.waitUntil("the deletion is seen") { events in
      events.contains { if case .removed = $0 { true } else { false } }
    }
    try await recorder.waitForAddresses(["10.0.0.1:80"], within: .seconds(1))
    await running.stop()
    await observer.stop()
  }

  @Test("shutdown revokes the lease: every key vanishes in one step")
  func shutdownRevokes() async throws {
    let cluster = try await SharedEtcd.get()
    let prefix = uniquePrefix("revoke")
    let running = try RunningRegistry(cluster, prefix: prefix)
    for port in 1 ... 3 {
      try await running.registry.register(ServiceInstance(name: "svc", address: "10.0.0.1:\(port)"))
    }
    let watcher = try RunningRegistry(cluster, prefix: prefix)
    let recorder = WatchRecorder(watcher.registry.watch("svc"))
    defer { recorder.cancel() }
    try await recorder.waitForAddresses(["10.0.0.1:1", "10.0.0.1:2", "10.0.0.1:3"])
    await running.stop()
    try await recorder.waitForAddresses([])
    let removals = recorder.events.filter { if case .removed = $0 { true } else { false } }
    #expect(Set(removals.map(\.revision)).count == 1, "removed at one revision: \(removals)")
    await watcher.stop()
  }

  @Test("shutdown with etcd unreachable completes in bounded time")
  func shutdownUnreachable() async throws {
    try await withEtcdCluster { cluster in
      let running = try RunningRegistry(cluster, prefix: "/bounded") {
        $0.shutdownTimeout = .seconds(1)
      }
      try await running.registry.register(ServiceInstance(name: "svc", address: "10.0.0.1:80"))
      await cluster.members[0].kill()
      let start = ContinuousClock.now
      await running.stop()
      #expect(ContinuousClock.now - start < .seconds(5))
    }
  }

  @Test(
    "etcd stopped for 3 x TTL then restarted with its data: the registration is back, the watcher never saw it go"
  )
  func outageWithData() async throws {
    try await withEtcdCluster { cluster in
      let server = try RunningRegistry(cluster, prefix: "/outage")
      let client = try RunningRegistry(cluster, prefix: "/outage")
      try await server.registry.register(ServiceInstance(name: "svc", address: "10.0.0.1:80"))
      let recorder = WatchRecorder(client.registry.watch("svc"))
      defer { recorder.cancel() }
      try await recorder.waitForAddresses(["10.0.0.1:80"])
      await cluster.members[0].stop()
      let outageEnd = ContinuousClock.now + .seconds(6)
      try await waitUntil("3 x TTL have passed", within: .seconds(10)) {
        ContinuousClock.now >= outageEnd
      }
      try await cluster.members[0].restart()
      try await cluster.waitUntilHealthy(cluster.members[0])
      let back = ContinuousClock.now
      try await waitUntil("the registration is readable again", within: .seconds(2)) {
        (try? await client.registry.instances(of: "svc").map(\.address)) == ["10.0.0.1:80"]
      }
      #expect(ContinuousClock.now - back < .seconds(2))
      // The restarted etcd extends every lease by its TTL once; a registry that never resumed
      // its keep-alive loses the key 2 s later. Catches that: the key must outlive 3 x TTL.
      let kept = back + .seconds(6)
      try await waitUntil(
        "3 x TTL after the restart",
        within: .seconds(10),
        pollEvery: .milliseconds(200)
      ) {
        let listed = try await cluster.etcdctl(["get", "/outage/svc/", "--prefix", "--keys-only"])
        try #require(
          listed.contains("10.0.0.1:80"),
          "the registration vanished after etcd came back: its keep-alive did not resume"
        )
        return ContinuousClock.now >= kept
      }
      #expect(recorder.currentAddresses == ["10.0.0.1:80"])
      #expect(
        !recorder.events.contains { if case .removed = $0 { true } else { false } },
        "\(recorder.events)"
      )
      await server.stop()
      await client.stop()
    }
  }

  @Test("etcd restarted with its data wiped: registrations come back and watchers converge")
  func wiped() async throws {
    try await withEtcdCluster { cluster in
      let server = try RunningRegistry(cluster, prefix: "/wiped")
      let client = try RunningRegistry(cluster, prefix: "/wiped")
      try await server.registry.register(ServiceInstance(name: "svc", address: "10.0.0.1:80"))
      try await server.registry.register(ServiceInstance(name: "svc", address: "10.0.0.2:80"))
      // Push the revision up, so the wiped store's revision is clearly behind.
      for i in 0 ..< 20 { try await cluster.etcdctl(["put", "/wiped-noise", "\(i)"]) }
      let recorder = WatchRecorder(client.registry.watch("svc"))
      defer { recorder.cancel() }
      try await recorder.waitForAddresses(["10.0.0.1:80", "10.0.0.2:80"])
      try await cluster.members[0].restart(wipeData: true)
      try await waitUntil("the registrations are back in etcd", within: .seconds(15)) {
        let value = try? await cluster.etcdctl(["get", "/wiped/svc/", "--prefix", "--keys-only"])
        return value?.contains("10.0.0.1:80") == true && value?.contains("10.0.0.2:80") == true
      }
      // A third instance registered after the wipe must reach the watcher too: its watch has
      // moved to the new store.
      try await server.registry.register(ServiceInstance(name: "svc", address: "10.0.0.3:80"))
      try await recorder.waitForAddresses(
        ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
        within: .seconds(15)
      )
      await server.stop()
      await client.stop()
    }
  }

  @Test(
    "compaction while a watcher is disconnected: it lists again and yields exactly the difference"
  )
  func compaction() async throws {
    try await withEtcdCluster { cluster in
      let reader = try RunningRegistry(cluster, prefix: "/compact")
      for port in 1 ... 3 {
        try await cluster.etcdctl([
          "put", "/compact/svc/10.0.0.1:\(port)",
          #"{"Name":"svc","Address":"10.0.0.1:\#(port)","Weight":1,"Group":""}"#,
        ])
      }
      let recorder = WatchRecorder(reader.registry.watch("svc"))
      defer { recorder.cancel() }
      try await recorder.waitForAddresses(["10.0.0.1:1", "10.0.0.1:2", "10.0.0.1:3"])
      let before = recorder.events.count
      // Cut the registries off etcd (it keeps serving its admin port), change and compact
      // behind their backs, then let them back: the reader's resume revision is gone.
      try await cluster.members[0].restart(isolateClients: true)
      try await cluster.etcdctl([
        "put", "/compact/svc/10.0.0.1:4",
        #"{"Name":"svc","Address":"10.0.0.1:4","Weight":1,"Group":""}"#,
      ])
      try await cluster.etcdctl(["del", "/compact/svc/10.0.0.1:1"])
      try await cluster.etcdctl([
        "put", "/compact/svc/10.0.0.1:2",
        #"{"Name":"svc","Address":"10.0.0.1:2","Weight":9,"Group":""}"#,
      ])
      let status = try await cluster.etcdctl(["endpoint", "status", "-w", "fields"])
      let revision = status.split(separator: "\n").first { $0.contains("\"Revision\"") }
        .flatMap { $0.split(separator: ":").last }
        .flatMap { Int($0.trimmingCharacters(in: .whitespaces)) }
      try await cluster.etcdctl(["compact", "\(try #require(revision))"])
      try await cluster.members[0].restart()
      try await recorder.waitForAddresses(
        ["10.0.0.1:2", "10.0.0.1:3", "10.0.0.1:4"],
        within: .seconds(15)
      )
      let changes = Array(recorder.events.dropFirst(before))
      #expect(
        !changes.contains {
          $0 == .removed(ServiceInstance(name: "svc", address: "10.0.0.1:3"), revision: $0.revision)
        },
        "no spurious remove of an unchanged instance"
      )
      #expect(changes.count == 3, "one event per real change: \(changes)")
      #expect(recorder.current?.instances.first { $0.address == "10.0.0.1:2" }?.weight == 9)
      await reader.stop()
    }
  }
}

@Suite("EtcdServiceRegistry: watchers cancelled while events arrive", .timeLimit(.minutes(3)))
struct EtcdRegistryWatchCancellationTests {
  @Test("500 watches cancelled at random moments during constant changes: no deadlock")
  func cancelDuringEvents() async throws {
    let cluster = try await SharedEtcd.get()
    let prefix = uniquePrefix("churn")
    let watching = try RunningRegistry(cluster, prefix: prefix)
    let writing = try RunningRegistry(cluster, prefix: prefix)
    // A watcher for the whole test keeps the service's shared etcd watch alive, so the churning
    // watchers join a feed that is delivering events.
    let steady = WatchRecorder(watching.registry.watch("churn"))
    try await steady.waitUntil("the first snapshot arrives") { !$0.isEmpty }
    let producer = Task {
      var weight = 1
      while !Task.isCancelled {
        weight = weight % 9 + 1
        try await writing.registry.register(
          ServiceInstance(name: "churn", address: "127.0.0.1:9200", weight: weight)
        )
      }
    }
    let churn = WatchCancellationChurn(registry: watching.registry, service: "churn", count: 500)
    do {
      try await waitUntil(
        "500 watch cycles end (done: \(churn.completedCycles))",
        within: .seconds(60)
      ) { churn.completedCycles == 500 }
    } catch {
      churn.stop()
      producer.cancel()
      throw error
    }
    producer.cancel()
    _ = try? await producer.value
    // The feed still delivers: the steady watcher sees a new instance.
    try await writing.registry.register(ServiceInstance(name: "churn", address: "127.0.0.1:9201"))
    try await steady.waitUntil("the new instance is seen") { events in
      events.contains { event in
        if case .added(let added, _) = event { return added.address == "127.0.0.1:9201" }
        return false
      }
    }
    steady.cancel()
    await writing.stop()
    await watching.stop()
  }
}

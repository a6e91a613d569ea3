import Foundation
import RegistryCore
import RegistryTesting
import Synchronization
import Testing

@Suite("InMemoryRegistry")
struct InMemoryRegistryTests {
  @Test("conformance", arguments: RegistryConformance.checks)
  func conformance(_ check: RegistryConformance.Check) async throws {
    try await check.run { count in
      let first = InMemoryRegistry()
      return [first] + (1 ..< count).map { _ in InMemoryRegistry(sharing: first) }
    }
  }

  @Test("a registration that is not kept alive expires and watchers see it go")
  func ttlExpiry() async throws {
    let registry = InMemoryRegistry()
    let kept = ServiceInstance(name: "svc", address: "127.0.0.1:9001")
    let crashed = ServiceInstance(name: "svc", address: "127.0.0.1:9002")
    // The kept registration is renewed every 50 ms against a 1 s TTL: generous enough for a
    // loaded CI machine, while the other one is never renewed and must expire.
    try registry.register(kept, ttl: .seconds(1))
    try registry.register(crashed, ttl: .seconds(1))
    let keeper = Task {
      while !Task.isCancelled {
        try registry.keepAlive(service: "svc", address: "127.0.0.1:9001")
        try await Task.sleep(for: .milliseconds(50))
      }
    }
    defer { keeper.cancel() }
    let recorder = WatchRecorder(registry.watch("svc"))
    defer { recorder.cancel() }
    try await recorder.waitUntil("the first snapshot arrives") { !$0.isEmpty }
    try await recorder.waitForAddresses(["127.0.0.1:9001"], within: .seconds(10))
    guard case .removed(let removed, _) = recorder.events.last else {
      Issue.record("the last event is not a removal: \(recorder.events)")
      return
    }
    #expect(removed == crashed)
    #expect(throws: RegistryError.self) {
      try registry.keepAlive(service: "svc", address: "127.0.0.1:9002")
    }
    do {
      try registry.keepAlive(service: "svc", address: "127.0.0.1:9002")
    } catch let error as RegistryError {
      #expect(error.code == .notFound)
    }
    #expect(try await registry.instances(of: "svc") == [kept])
  }

  @Test("a ttl below 10 ms is refused")
  func shortTTL() throws {
    let registry = InMemoryRegistry()
    #expect(throws: RegistryError.self) {
      try registry.register(
        ServiceInstance(name: "svc", address: "127.0.0.1:1"),
        ttl: .milliseconds(1)
      )
    }
  }

  @Test("the snapshots view yields the whole set after every change")
  func snapshots() async throws {
    let registry = InMemoryRegistry()
    try await registry.register(ServiceInstance(name: "svc", address: "127.0.0.1:9001"))
    var iterator = registry.watch("svc").snapshots.makeAsyncIterator()
    let first = try #require(try await iterator.next())
    #expect(first.instances.map(\.address) == ["127.0.0.1:9001"])
    try await registry.register(ServiceInstance(name: "svc", address: "127.0.0.1:9000"))
    let second = try #require(try await iterator.next())
    #expect(second.instances.map(\.address) == ["127.0.0.1:9000", "127.0.0.1:9001"])
    #expect(second.revision > first.revision)
  }

  @Test("a watch re-iterated starts a new subscription with a fresh snapshot")
  func reiteration() async throws {
    let registry = InMemoryRegistry()
    let watch = registry.watch("svc")
    var first = watch.makeAsyncIterator()
    guard case .snapshot(let empty) = try #require(try await first.next()) else {
      Issue.record("expected a snapshot")
      return
    }
    #expect(empty.instances.isEmpty)
    try await registry.register(ServiceInstance(name: "svc", address: "127.0.0.1:9001"))
    var second = watch.makeAsyncIterator()
    guard case .snapshot(let one) = try #require(try await second.next()) else {
      Issue.record("expected a snapshot")
      return
    }
    #expect(one.instances.map(\.address) == ["127.0.0.1:9001"])
  }
}

@Suite("InMemoryRegistry: watchers cancelled while events arrive")
struct InMemoryRegistryWatchCancellationTests {
  @Test("2,000 watches cancelled at random moments during constant changes: no deadlock")
  func cancelDuringEvents() async throws {
    let registry = InMemoryRegistry()
    let instance = ServiceInstance(name: "churn", address: "127.0.0.1:9100")
    try registry.register(instance, ttl: nil)
    // The changes come from a thread of their own (the synchronous `register(_:ttl:)`), so a
    // deadlock cannot take the concurrency pool down with it and hang the test.
    let producing = Flag()
    let producer = Thread {
      var weight = 1
      while producing.isSet {
        weight = weight % 9 + 1
        var changed = instance
        changed.weight = weight
        try? registry.register(changed, ttl: nil)
      }
    }
    producer.start()
    defer { producing.clear() }
    let churn = WatchCancellationChurn(registry: registry, service: "churn", count: 2_000)
    defer { churn.stop() }
    try await waitUntil(
      "2,000 watch cycles end (done: \(churn.completedCycles))",
      within: .seconds(60)
    ) { churn.completedCycles == 2_000 }
    // The registry still delivers: a new watcher sees a new instance.
    producing.clear()
    let recorder = WatchRecorder(registry.watch("churn"))
    defer { recorder.cancel() }
    try await recorder.waitUntil("the first snapshot arrives") { !$0.isEmpty }
    try registry.register(ServiceInstance(name: "churn", address: "127.0.0.1:9101"), ttl: nil)
    try await recorder.waitUntil("the new instance is seen") { events in
      events.contains { event in
        if case .added(let added, _) = event { return added.address == "127.0.0.1:9101" }
        return false
      }
    }
  }
}

/// A flag shared with a thread.
private final class Flag: Sendable {
  private let value = Atomic<Bool>(true)
  var isSet: Bool { self.value.load(ordering: .relaxed) }
  func clear() { self.value.store(false, ordering: .relaxed) }
}

public import RegistryCore
import RegistryPrimitives
import Synchronization
public import Testing

/// The conformance suite every ``ServiceRegistry`` implementation passes.
///
/// Run each check as its own test case, with a factory that returns registries sharing one
/// backend (registries of the same etcd, or handles of one in-memory store):
///
/// ```swift
/// @Test(arguments: RegistryConformance.checks)
/// func conformance(_ check: RegistryConformance.Check) async throws {
///   try await check.run { count in
///     let first = InMemoryRegistry()
///     return [first] + (1..<count).map { _ in InMemoryRegistry(sharing: first) }
///   }
/// }
/// ```
///
/// The suite shuts the registries down at the end of each check. Each check uses service names
/// of its own, so checks can share a backend; give each call of the factory its own key prefix
/// where the backend outlives the test.
public enum RegistryConformance {
  /// Makes `count` registries that see the same data.
  public typealias Factory = @Sendable (_ count: Int) async throws -> [any ServiceRegistry]

  /// One check of the suite.
  public struct Check: Sendable, CustomStringConvertible, CustomTestStringConvertible {
    /// What the check proves.
    public let name: String
    let registries: Int
    let body:
      @Sendable (_ registries: [any ServiceRegistry], _ service: String) async throws -> Void

    public var description: String { self.name }
    public var testDescription: String { self.name }

    /// Runs the check against registries from `factory`, then shuts them down.
    public func run(_ factory: Factory) async throws {
      let registries = try await factory(self.registries)
      try #require(
        registries.count == self.registries,
        "the factory must return \(self.registries) registries"
      )
      let service = "conformance-\(UInt32.random(in: 0 ... .max))"
      do {
        try await self.body(registries, service)
      } catch {
        for registry in registries { await registry.shutdown() }
        throw error
      }
      for registry in registries { await registry.shutdown() }
    }
  }

  /// Every check.
  public static var checks: [Check] {
    [
      registerThenList, reregisterUpdates, identicalReregisterIsQuiet, deregisterRemoves,
      watchStartsWithSnapshot, watchOfUnknownServiceIsEmpty, watchYieldsChangesInOrder,
      prefixIsolation, concurrentRegistrations, manyWatchers, cancellationEndsWatch,
      shutdownRemovesEverything, validationErrors,
    ]
  }

  static func instance(
    _ service: String,
    _ port: Int,
    weight: Int = 1,
    group: String = ""
  ) -> ServiceInstance {
    ServiceInstance(name: service, address: "127.0.0.1:\(port)", weight: weight, group: group)
  }

  static let registerThenList = Check(
    name: "register then list returns every field, sorted",
    registries: 1
  ) {
    registries,
    service in
    let registry = registries[0]
    let full = ServiceInstance(
      name: service,
      address: "10.0.0.7:8082",
      weight: 3,
      group: "A",
      metadata: ["zone": "eu-1", "build": "42"],
      version: "1.4.2"
    )
    try await registry.register(instance(service, 9002))
    try await registry.register(full)
    try await registry.register(instance(service, 9001))
    let listed = try await registry.instances(of: service)
    #expect(listed.map(\.address) == ["10.0.0.7:8082", "127.0.0.1:9001", "127.0.0.1:9002"])
    #expect(listed.first == full)
  }

  static let reregisterUpdates = Check(
    name: "registering an address again replaces its value",
    registries: 1
  ) {
    registries,
    service in
    let registry = registries[0]
    try await registry.register(instance(service, 9001, weight: 1))
    try await registry.register(instance(service, 9001, weight: 5, group: "B"))
    let listed = try await registry.instances(of: service)
    #expect(listed == [instance(service, 9001, weight: 5, group: "B")])
  }

  static let identicalReregisterIsQuiet = Check(
    name: "registering an identical value again yields no event",
    registries: 1
  ) {
    registries,
    service in
    let registry = registries[0]
    try await registry.register(instance(service, 9001))
    let recorder = WatchRecorder(registry.watch(service))
    defer { recorder.cancel() }
    try await recorder.waitUntil("the first snapshot arrives") { !$0.isEmpty }
    try await registry.register(instance(service, 9001))
    try await registry.register(instance(service, 9002))
    try await recorder.waitUntil("the second instance is added") { $0.count >= 2 }
    let events = recorder.events
    #expect(events.count == 2)
    guard case .added(let added, _) = events[1] else {
      Issue.record("expected .added after the snapshot, got \(events[1])")
      return
    }
    #expect(added.address == "127.0.0.1:9002")
  }

  static let deregisterRemoves = Check(
    name: "deregister removes; an unknown address is not an error",
    registries: 1
  ) {
    registries,
    service in
    let registry = registries[0]
    try await registry.register(instance(service, 9001))
    try await registry.register(instance(service, 9002))
    try await registry.deregister(service: service, address: "127.0.0.1:9001")
    #expect(try await registry.instances(of: service).map(\.address) == ["127.0.0.1:9002"])
    try await registry.deregister(service: service, address: "127.0.0.1:9999")
    try await registry.deregister(service: service, address: "127.0.0.1:9002")
    #expect(try await registry.instances(of: service).isEmpty)
  }

  static let watchStartsWithSnapshot = Check(
    name: "a watch yields the current set first",
    registries: 2
  ) {
    registries,
    service in
    try await registries[0].register(instance(service, 9001))
    try await registries[0].register(instance(service, 9002, weight: 2))
    let recorder = WatchRecorder(registries[1].watch(service))
    defer { recorder.cancel() }
    try await recorder.waitUntil("the first event arrives") { !$0.isEmpty }
    guard case .snapshot(let snapshot) = recorder.events[0] else {
      Issue.record("the first event is not a snapshot: \(recorder.events[0])")
      return
    }
    #expect(snapshot.service == service)
    #expect(snapshot.instances == [instance(service, 9001), instance(service, 9002, weight: 2)])
    #expect(snapshot.revision > 0)
  }

  static let watchOfUnknownServiceIsEmpty = Check(
    name: "a watch of a service with no instances starts empty",
    registries: 1
  ) {
    registries,
    service in
    let recorder = WatchRecorder(registries[0].watch(service))
    defer { recorder.cancel() }
    try await recorder.waitUntil("the first event arrives") { !$0.isEmpty }
    guard case .snapshot(let snapshot) = recorder.events[0] else {
      Issue.record("the first event is not a snapshot: \(recorder.events[0])")
      return
    }
    #expect(snapshot.instances.isEmpty)
  }

  static let watchYieldsChangesInOrder = Check(
    name: "a watch yields added, updated, removed in order with rising revisions",
    registries: 2
  ) {
    registries,
    service in
    let (writer, reader) = (registries[0], registries[1])
    let recorder = WatchRecorder(reader.watch(service))
    defer { recorder.cancel() }
    try await recorder.waitUntil("the first snapshot arrives") { !$0.isEmpty }
    try await writer.register(instance(service, 9001))
    try await writer.register(instance(service, 9001, weight: 7))
    try await writer.deregister(service: service, address: "127.0.0.1:9001")
    try await recorder.waitUntil("three changes arrive") { $0.count >= 4 }
    let events = Array(recorder.events.dropFirst())
    #expect(events.count == 3)
    #expect(events[0] == .added(instance(service, 9001), revision: events[0].revision))
    #expect(events[1] == .updated(instance(service, 9001, weight: 7), revision: events[1].revision))
    #expect(events[2] == .removed(instance(service, 9001, weight: 7), revision: events[2].revision))
    let revisions = recorder.events.map(\.revision)
    #expect(
      revisions == revisions.sorted() && Set(revisions).count == revisions.count,
      "revisions: \(revisions)"
    )
  }

  static let prefixIsolation = Check(
    name: "a service never sees a service whose name extends its own",
    registries: 1
  ) {
    registries,
    service in
    let registry = registries[0]
    let longer = service + "-server"
    let recorder = WatchRecorder(registry.watch(service))
    defer { recorder.cancel() }
    try await recorder.waitUntil("the first snapshot arrives") { !$0.isEmpty }
    try await registry.register(instance(longer, 9001))
    try await registry.register(instance(service, 9002))
    try await recorder.waitForAddresses(["127.0.0.1:9002"])
    #expect(try await registry.instances(of: service).map(\.address) == ["127.0.0.1:9002"])
    #expect(try await registry.instances(of: longer).map(\.address) == ["127.0.0.1:9001"])
    #expect(recorder.events.count == 2, "the watch saw \(recorder.events)")
    try await registry.deregister(service: longer, address: "127.0.0.1:9001")
  }

  static let concurrentRegistrations = Check(
    name: "concurrent registrations from many tasks are all visible",
    registries: 2
  ) {
    registries,
    service in
    let recorder = WatchRecorder(registries[1].watch(service))
    defer { recorder.cancel() }
    try await recorder.waitUntil("the first snapshot arrives") { !$0.isEmpty }
    let writer = registries[0]
    try await withThrowingTaskGroup(of: Void.self) { group in
      for port in 10_000 ..< 10_050 {
        group.addTask { try await writer.register(instance(service, port, weight: port % 5)) }
      }
      try await group.waitForAll()
    }
    let expected = (10_000 ..< 10_050).map { "127.0.0.1:\($0)" }.sorted()
    #expect(try await writer.instances(of: service).map(\.address) == expected)
    try await recorder.waitForAddresses(expected, within: .seconds(10))
  }

  static let manyWatchers = Check(
    name: "twenty watchers all converge to the same set",
    registries: 2
  ) {
    registries,
    service in
    let recorders = (0 ..< 20).map { _ in WatchRecorder(registries[1].watch(service)) }
    defer { recorders.forEach { $0.cancel() } }
    for recorder in recorders {
      try await recorder.waitUntil("the first snapshot arrives") { !$0.isEmpty }
    }
    for port in 9001 ... 9005 { try await registries[0].register(instance(service, port)) }
    try await registries[0].deregister(service: service, address: "127.0.0.1:9003")
    let expected = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9004", "127.0.0.1:9005"]
    for recorder in recorders {
      try await recorder.waitForAddresses(expected, within: .seconds(10))
    }
    let sequences = Set(recorders.map { $0.events.dropFirst().map { $0 } })
    #expect(sequences.count == 1, "every watcher sees the same changes in the same order")
  }

  static let cancellationEndsWatch = Check(
    name: "cancelling the watching task ends the watch",
    registries: 1
  ) {
    registries,
    service in
    let registry = registries[0]
    let started = Locked(false)
    let task = Task {
      var count = 0
      for try await _ in registry.watch(service) {
        count += 1
        started.withLock { $0 = true }
      }
      return count
    }
    try await waitUntil("the watch has started") { started.withLock { $0 } }
    task.cancel()
    let ended = Locked(false)
    let waiter = Task {
      _ = try? await task.value
      ended.withLock { $0 = true }
    }
    try await waitUntil("the cancelled watch ends", within: .seconds(5)) { ended.withLock { $0 } }
    waiter.cancel()
  }

  static let shutdownRemovesEverything = Check(
    name: "shutdown removes every registration and refuses more work",
    registries: 2
  ) {
    registries,
    service in
    let (leaving, staying) = (registries[0], registries[1])
    try await staying.register(instance(service, 9000))
    for port in 9001 ... 9003 { try await leaving.register(instance(service, port)) }
    let recorder = WatchRecorder(staying.watch(service))
    defer { recorder.cancel() }
    try await recorder.waitForAddresses([
      "127.0.0.1:9000", "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003",
    ])
    await leaving.shutdown()
    try await recorder.waitForAddresses(["127.0.0.1:9000"])
    #expect(try await staying.instances(of: service).map(\.address) == ["127.0.0.1:9000"])
    await #expect(throws: RegistryError.self) {
      try await leaving.register(instance(service, 9004))
    }
    do {
      try await leaving.register(instance(service, 9004))
    } catch let error as RegistryError {
      #expect(error.code == .shutdown)
    }
    #expect(try await staying.instances(of: service).map(\.address) == ["127.0.0.1:9000"])
  }

  static let validationErrors = Check(
    name: "invalid instances are refused with a typed error and nothing is written",
    registries: 1
  ) {
    registries,
    service in
    let registry = registries[0]
    let bad: [(ServiceInstance, String)] = [
      (ServiceInstance(name: "", address: "127.0.0.1:80"), "name"),
      (ServiceInstance(name: "a/b", address: "127.0.0.1:80"), "name"),
      (ServiceInstance(name: service, address: "127.0.0.1"), "address"),
      (ServiceInstance(name: service, address: "127.0.0.1:0"), "address"),
      (ServiceInstance(name: service, address: "127.0.0.1:70000"), "address"),
      (ServiceInstance(name: service, address: "0.0.0.0:8080"), "address"),
      (ServiceInstance(name: service, address: "[::]:8080"), "address"),
      (ServiceInstance(name: service, address: "::1:8080"), "address"),
      (ServiceInstance(name: service, address: "127.0.0.1:80", weight: -1), "weight"),
      (ServiceInstance(name: service, address: "127.0.0.1:80", group: "a b"), "group"),
    ]
    for (instance, field) in bad {
      do {
        try await registry.register(instance)
        Issue.record("registering \(instance) should have failed")
      } catch let error as RegistryError {
        #expect(error.code == .invalidArgument, "\(instance): \(error)")
        #expect(error.field == field, "\(instance): \(error)")
        #expect(!error.message.isEmpty)
      }
    }
    #expect(try await registry.instances(of: service).isEmpty)
    await #expect(throws: RegistryError.self) { try await registry.instances(of: "bad/name") }
  }
}

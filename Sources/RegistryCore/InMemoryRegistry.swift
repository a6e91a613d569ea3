public import Logging
import RegistryPrimitives
import Synchronization

/// The embedded registry: a ``ServiceRegistry`` held in this process's memory.
///
/// It is the default when no etcd is configured, and it is shared by reference: hand the same
/// instance to every server and client of the process. Handles made with ``init(sharing:logger:)``
/// see the same data but own their registrations, so shutting one down removes only what it
/// registered, as a process leaving an etcd cluster would.
///
/// Registrations can carry a time to live (``register(_:ttl:)``); one not renewed with
/// ``keepAlive(service:address:)`` in time expires and watchers see it removed, as with an etcd
/// lease. This makes crash behaviour testable without etcd.
///
/// ```swift
/// let registry = InMemoryRegistry()
/// try await registry.register(ServiceInstance(name: "user-server", address: "127.0.0.1:8080"))
/// for try await event in registry.watch("user-server") { print(event) }
/// ```
public final class InMemoryRegistry: ServiceRegistry {
  private let store: Store
  private let owner: UInt64
  private let logger: Logger

  /// Creates an empty registry.
  ///
  /// - Parameter logger: Where registrations and expiries are logged (at debug and info).
  public init(
    logger: Logger = Logger(label: "registry", factory: { _ in SwiftLogNoOpLogHandler() })
  ) {
    self.store = Store()
    self.owner = self.store.newOwner()
    self.logger = logger
  }

  /// Creates a handle on the same data as `other`, with registrations of its own.
  public init(sharing other: InMemoryRegistry, logger: Logger? = nil) {
    self.store = other.store
    self.owner = self.store.newOwner()
    self.logger = logger ?? other.logger
  }

  public func register(_ instance: ServiceInstance) async throws {
    try self.register(instance, ttl: nil)
  }

  /// Registers `instance` with a time to live: unless renewed by ``keepAlive(service:address:)``
  /// (or registered again) within `ttl`, it expires and is removed.
  ///
  /// - Parameter ttl: The time to live, at least 10 ms; `nil` for a registration that lasts
  ///   until it is deregistered.
  public func register(_ instance: ServiceInstance, ttl: Duration?) throws {
    try instance.validate()
    if let ttl, ttl < .milliseconds(10) {
      throw RegistryError.invalid("ttl", "ttl \(ttl) is too short; use at least 10 milliseconds")
    }
    let change = try self.store.put(instance, owner: self.owner, ttl: ttl)
    self.logger.debug(
      "registered instance",
      metadata: [
        "registry.service": "\(instance.name)", "registry.address": "\(instance.address)",
        "registry.change": "\(change)",
      ]
    )
  }

  /// Renews a registration made with a time to live.
  ///
  /// - Throws: ``RegistryError`` with code `notFound` when the registration has expired or was
  ///   removed (register it again), as etcd answers a keep-alive of a lost lease.
  public func keepAlive(service: String, address: String) throws {
    try self.store.renew(service: service, address: address, owner: self.owner)
  }

  public func deregister(service: String, address: String) async throws {
    try ServiceInstance.validate(serviceName: service)
    try self.store.delete(service: service, address: address, owner: self.owner)
  }

  public func instances(of service: String) async throws -> [ServiceInstance] {
    try ServiceInstance.validate(serviceName: service)
    return try self.store.list(service, owner: self.owner).instances
  }

  public func watch(_ service: String) -> ServiceWatch {
    let store = self.store
    let owner = self.owner
    return ServiceWatch {
      let (stream, continuation) = AsyncThrowingStream.makeStream(of: RegistryEvent.self)
      do {
        try ServiceInstance.validate(serviceName: service)
        let id = try store.addWatcher(service, owner: owner, continuation: continuation)
        continuation.onTermination = { _ in store.removeWatcher(service, id: id) }
      } catch {
        continuation.finish(throwing: error)
      }
      return stream
    }
  }

  public func shutdown() async {
    let removed = self.store.shutdown(owner: self.owner)
    self.logger.debug("registry shut down", metadata: ["registry.removed": "\(removed)"])
  }
}

extension InMemoryRegistry {
  private struct Entry {
    var instance: ServiceInstance
    var owner: UInt64
    var ttl: Duration?
    var expiresAt: ContinuousClock.Instant?
  }

  private struct Watcher {
    var owner: UInt64
    var continuation: AsyncThrowingStream<RegistryEvent, any Error>.Continuation
  }

  private struct State {
    /// Events are queued here under the lock and yielded after it (see ``EventDelivery``).
    let delivery: EventDelivery<RegistryEvent>
    var revision: Int64 = 0
    var services: [String: [String: Entry]] = [:]
    var watchers: [String: [UInt64: Watcher]] = [:]
    var nextID: UInt64 = 0
    var shutDownOwners: Set<UInt64> = []
    var expiringEntries = 0
    var reaperRunning = false

    mutating func newID() -> UInt64 {
      self.nextID += 1
      return self.nextID
    }

    func checkOpen(_ owner: UInt64, _ operation: String) throws(RegistryError) {
      if self.shutDownOwners.contains(owner) { throw .shutDown(operation) }
    }

    func snapshot(_ service: String) -> RegistrySnapshot {
      let instances = self.services[service]?.values.map(\.instance) ?? []
      return RegistrySnapshot(service: service, instances: instances, revision: self.revision)
    }

    /// Queues `event` for the service's watchers. Queued under the lock, so every watcher gets
    /// events in revision order even when several tasks mutate at once; yielded by
    /// ``Store/withState(_:)`` once the lock is released.
    func publish(_ service: String, _ event: RegistryEvent) {
      guard let watchers = self.watchers[service] else { return }
      self.delivery.enqueue(event, to: watchers.values.map(\.continuation))
    }

    mutating func remove(_ service: String, _ address: String) -> Entry? {
      guard let entry = self.services[service]?.removeValue(forKey: address) else { return nil }
      if self.services[service]?.isEmpty == true { self.services[service] = nil }
      if entry.expiresAt != nil { self.expiringEntries -= 1 }
      self.revision += 1
      self.publish(service, .removed(entry.instance, revision: self.revision))
      return entry
    }
  }

  private final class Store: Sendable {
    private let delivery = EventDelivery<RegistryEvent>()
    private let state: Locked<State>

    init() {
      self.state = Locked(State(delivery: self.delivery))
    }

    /// Runs `body` under the lock, then yields the events it queued.
    private func withState<Result, Failure: Error>(
      _ body: (inout State) throws(Failure) -> Result
    ) throws(Failure) -> Result {
      defer { self.delivery.drain() }
      return try self.state.withLock { state throws(Failure) in try body(&state) }
    }

    func newOwner() -> UInt64 {
      self.state.withLock { $0.newID() }
    }

    enum Change: String { case added, updated, renewed }

    func put(
      _ instance: ServiceInstance,
      owner: UInt64,
      ttl: Duration?
    ) throws(RegistryError)
      -> Change
    {
      let now = ContinuousClock.now
      let (change, startReaper) = try self.withState { state throws(RegistryError) in
        try state.checkOpen(owner, "register")
        let previous = state.services[instance.name]?[instance.address]
        let entry = Entry(
          instance: instance,
          owner: owner,
          ttl: ttl,
          expiresAt: ttl.map { now + $0 }
        )
        state.services[instance.name, default: [:]][instance.address] = entry
        state.expiringEntries +=
          (entry.expiresAt != nil ? 1 : 0) - (previous?.expiresAt != nil ? 1 : 0)
        let change: Change
        if let previous {
          if previous.instance == instance {
            change = .renewed
          } else {
            state.revision += 1
            state.publish(instance.name, .updated(instance, revision: state.revision))
            change = .updated
          }
        } else {
          state.revision += 1
          state.publish(instance.name, .added(instance, revision: state.revision))
          change = .added
        }
        let startReaper = state.expiringEntries > 0 && !state.reaperRunning
        if startReaper { state.reaperRunning = true }
        return (change, startReaper)
      }
      if startReaper { self.startReaper() }
      return change
    }

    func renew(service: String, address: String, owner: UInt64) throws(RegistryError) {
      let now = ContinuousClock.now
      try self.state.withLock { state throws(RegistryError) in
        try state.checkOpen(owner, "keep a registration alive")
        guard var entry = state.services[service]?[address] else {
          throw RegistryError(
            code: .notFound,
            message:
              "\(service)/\(address) is not registered (its time to live expired or it was removed); register it again"
          )
        }
        if let ttl = entry.ttl { entry.expiresAt = now + ttl }
        state.services[service]?[address] = entry
      }
    }

    func delete(service: String, address: String, owner: UInt64) throws(RegistryError) {
      try self.withState { state throws(RegistryError) in
        try state.checkOpen(owner, "deregister")
        _ = state.remove(service, address)
      }
    }

    func list(_ service: String, owner: UInt64) throws(RegistryError) -> RegistrySnapshot {
      try self.state.withLock { state throws(RegistryError) in
        try state.checkOpen(owner, "list instances")
        return state.snapshot(service)
      }
    }

    func addWatcher(
      _ service: String,
      owner: UInt64,
      continuation: AsyncThrowingStream<RegistryEvent, any Error>.Continuation
    ) throws(RegistryError) -> UInt64 {
      try self.withState { state throws(RegistryError) in
        try state.checkOpen(owner, "watch")
        let id = state.newID()
        state.watchers[service, default: [:]][id] = Watcher(
          owner: owner,
          continuation: continuation
        )
        // The snapshot is taken under the same lock as the registration: no change can fall
        // between them, and it is queued ahead of every later change.
        state.delivery.enqueue(.snapshot(state.snapshot(service)), to: [continuation])
        return id
      }
    }

    func removeWatcher(_ service: String, id: UInt64) {
      self.state.withLock { state in
        state.watchers[service]?[id] = nil
        if state.watchers[service]?.isEmpty == true { state.watchers[service] = nil }
      }
    }

    /// Removes the owner's registrations and ends its watches; returns how many were removed.
    func shutdown(owner: UInt64) -> Int {
      let (removed, finished) = self.withState { state in
        guard state.shutDownOwners.insert(owner).inserted else {
          return (0, [AsyncThrowingStream<RegistryEvent, any Error>.Continuation]())
        }
        var removed = 0
        for (service, entries) in state.services {
          for (address, entry) in entries where entry.owner == owner {
            _ = state.remove(service, address)
            removed += 1
          }
        }
        var finished: [AsyncThrowingStream<RegistryEvent, any Error>.Continuation] = []
        for (service, watchers) in state.watchers {
          for (id, watcher) in watchers where watcher.owner == owner {
            finished.append(watcher.continuation)
            state.watchers[service]?[id] = nil
          }
        }
        return (removed, finished)
      }
      // Finishing runs onTermination, which takes the lock: do it outside.
      for continuation in finished { continuation.finish() }
      return removed
    }

    /// Removes expired entries; returns whether any entry still has a deadline.
    func expire(now: ContinuousClock.Instant) -> Bool {
      self.withState { state in
        var expired: [(String, String)] = []
        for (service, entries) in state.services {
          for (address, entry) in entries {
            if let deadline = entry.expiresAt, deadline <= now {
              expired.append((service, address))
            }
          }
        }
        for (service, address) in expired { _ = state.remove(service, address) }
        if state.expiringEntries == 0 {
          state.reaperRunning = false
          return false
        }
        return true
      }
    }

    /// Expiry needs a clock that runs without any caller; the reaper lives only while entries
    /// with a deadline exist, holds the store weakly, and stops by itself when they are gone.
    private func startReaper() {
      Task { [weak self] in
        while true {
          do {
            try await Task.sleep(for: .milliseconds(20))
          } catch {
            return
          }
          guard let store = self, store.expire(now: .now) else { return }
        }
      }
    }
  }
}

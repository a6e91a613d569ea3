import Etcd
import Logging
import RegistryCore
import RegistryPrimitives
import Synchronization

/// One etcd watch of one service, shared by every local watcher of it.
///
/// It lists the service, then follows etcd's watch from the next revision. After a compaction
/// or a replaced store it lists again and publishes only the difference. It never publishes an
/// empty set because of an error: while etcd is unreachable the last known set stands.
final class ServiceFeed: Sendable {
  let service: String
  let prefix: String
  let metrics: WatchMetrics
  private let state = Locked(State())
  private let stopSignal = Signal()
  /// Events are queued under `state`'s lock and yielded after it: a subscriber's
  /// `onTermination` takes that lock (see `EventDelivery` for the deadlock this avoids).
  private let delivery = EventDelivery<RegistryEvent>()

  private struct State {
    var snapshot: RegistrySnapshot?
    var subscribers: [UInt64: AsyncThrowingStream<RegistryEvent, any Error>.Continuation] = [:]
    var nextID: UInt64 = 0
    var stopped = false
  }

  init(service: String, prefix: String, metrics: WatchMetrics) {
    self.service = service
    self.prefix = prefix
    self.metrics = metrics
  }

  /// Adds a subscriber; it gets the current set at once when the feed has one, or as soon as
  /// the first listing completes.
  func subscribe(
    _ continuation: AsyncThrowingStream<RegistryEvent, any Error>.Continuation
  ) -> UInt64 {
    let (id, stopped) = self.state.withLock { state in
      state.nextID += 1
      if state.stopped { return (state.nextID, true) }
      state.subscribers[state.nextID] = continuation
      if let snapshot = state.snapshot {
        self.delivery.enqueue(.snapshot(snapshot), to: [continuation])
      }
      return (state.nextID, false)
    }
    self.delivery.drain()
    if stopped { continuation.finish() }
    return id
  }

  /// Removes a subscriber; returns whether none are left.
  func unsubscribe(_ id: UInt64) -> Bool {
    self.state.withLock { state in
      state.subscribers[id] = nil
      return state.subscribers.isEmpty
    }
  }

  /// Stops the feed if it has no subscribers; returns whether it stopped.
  func stopIfUnused() -> Bool {
    let stop = self.state.withLock { state in
      guard state.subscribers.isEmpty, !state.stopped else { return false }
      state.stopped = true
      return true
    }
    if stop { self.stopSignal.fire() }
    return stop
  }

  /// Stops the feed and ends every subscription.
  func stop() {
    let subscribers = self.state.withLock { state in
      state.stopped = true
      defer { state.subscribers = [:] }
      return Array(state.subscribers.values)
    }
    for subscriber in subscribers { subscriber.finish() }
    self.stopSignal.fire()
  }

  func run(registry: EtcdServiceRegistry) async {
    await withTaskGroup(of: Void.self) { group in
      group.addTask { await self.follow(registry) }
      await self.stopSignal.waitIgnoringCancellation()
      group.cancelAll()
    }
  }

  private func follow(_ registry: EtcdServiceRegistry) async {
    let logger = registry.logger
    var failures = 0
    while !Task.isCancelled {
      do {
        let listed = try await registry.list(self.service)
        self.publish(listing: listed)
        failures = 0
        var options = EtcdWatchOptions()
        options.startRevision = listed.revision + 1
        for try await batch in registry.client.watch(.prefix(self.prefix), options: options) {
          self.apply(batch, registry: registry)
        }
        return  // the client shut down
      } catch let error as EtcdError where error.code == .compacted || error.code == .storeReplaced
      {
        self.metrics.restarts.increment()
        self.metrics.compactions.increment()
        logger.warning(
          "service watch lost its revision; listing again",
          metadata: [
            "registry.service": "\(self.service)", "registry.reason": "\(error.code)",
            "etcd.revision": "\(error.compactRevision.map { "\($0)" } ?? "-")",
          ]
        )
      } catch {
        if Task.isCancelled { return }
        failures += 1
        self.metrics.restarts.increment()
        let delay = registry.config.recoveryBackoff.delay(attempt: min(failures - 1, 6))
        logger.warning(
          "service watch failed; listing again",
          metadata: [
            "registry.service": "\(self.service)", "registry.error": "\(error)",
            "registry.retry_in": "\(delay)",
          ]
        )
        do {
          try await Task.sleep(for: delay)
        } catch {
          return
        }
      }
    }
  }

  /// Publishes a fresh listing: the first set as a snapshot, later ones as the difference.
  private func publish(listing: RegistrySnapshot) {
    defer { self.metrics.instances.record(listing.instances.count) }
    defer { self.delivery.drain() }
    self.state.withLock { state in
      let subscribers = Array(state.subscribers.values)
      guard let previous = state.snapshot else {
        state.snapshot = listing
        self.delivery.enqueue(.snapshot(listing), to: subscribers)
        return
      }
      // Queued under the lock: every subscriber gets the events in order.
      for event in previous.changes(to: listing) {
        self.delivery.enqueue(event, to: subscribers)
      }
      state.snapshot = listing
    }
  }

  private func apply(_ batch: EtcdWatchBatch, registry: EtcdServiceRegistry) {
    // Decode outside the lock; decoding may log.
    let changes: [(address: String, instance: ServiceInstance?, revision: Int64)] = batch.events
      .compactMap { event in
        guard let (service, address) = registry.keyspace.parse(event.kv.keyString),
          service == self.service
        else {
          return nil
        }
        switch event.kind {
        case .put:
          // A value that does not decode is treated as absent: the instance cannot be dialled.
          return (
            address,
            registry.decode(event.kv, service: self.service, prefix: Array(self.prefix.utf8)),
            event.kv.modRevision
          )
        case .delete:
          return (address, nil, event.kv.modRevision)
        }
      }
    defer { self.delivery.drain() }
    let count = self.state.withLock { state -> Int? in
      // Changed in place (`state.snapshot!`): a copy would cost O(instances) per batch.
      guard state.snapshot != nil else { return nil }
      let subscribers = Array(state.subscribers.values)
      for change in changes {
        let current = state.snapshot!.instance(at: change.address)
        let event: RegistryEvent?
        switch (current, change.instance) {
        case (nil, let new?): event = .added(new, revision: change.revision)
        case (let old?, let new?):
          event = old == new ? nil : .updated(new, revision: change.revision)
        case (let old?, nil): event = .removed(old, revision: change.revision)
        case (nil, nil): event = nil
        }
        state.snapshot!.revision = max(state.snapshot!.revision, change.revision)
        guard let event else { continue }
        state.snapshot!.apply(event)
        self.delivery.enqueue(event, to: subscribers)
      }
      state.snapshot!.revision = max(state.snapshot!.revision, batch.header.revision)
      return state.snapshot!.instances.count
    }
    if let count { self.metrics.instances.record(count) }
  }
}

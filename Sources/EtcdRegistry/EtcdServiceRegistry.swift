public import CoreMetrics
public import Etcd
public import Logging
public import RegistryCore
import RegistryPrimitives
public import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The ``ServiceRegistry`` on etcd.
///
/// Every registration of a registry shares one lease, granted on first use and kept alive over
/// the etcd client's keep-alive stream. When the lease is lost (it expired during an outage,
/// etcd came back wiped, or it was revoked) or one of its keys disappears (deleted by someone
/// else), the registry grants a new lease and writes its keys again, with jittered exponential
/// backoff, until it succeeds or shuts down. ``shutdown()`` revokes the lease, so all its keys
/// vanish in one step, and returns within ``Config/shutdownTimeout`` even when etcd is
/// unreachable.
///
/// Watches of one service share one etcd watch: the service is listed, then followed from the
/// next revision, across reconnects; after a compaction or a replaced store it is listed again
/// and only the difference is reported. Values that do not decode are skipped with a warning.
///
/// ## Metrics
///
/// Through the `metricsFactory` given to ``init(configuration:logger:metricsFactory:)``
/// (by default the global `MetricsSystem.factory`):
///
/// | name | kind | dimensions | counts |
/// |---|---|---|---|
/// | `registry_registrations_total` | counter | | `register` calls etcd acknowledged |
/// | `registry_deregistrations_total` | counter | | `deregister` calls etcd acknowledged |
/// | `registry_lease_grants_total` | counter | | leases granted (the first and each replacement) |
/// | `registry_lease_losses_total` | counter | | leases found expired, revoked or gone |
/// | `registry_reregistrations_total` | counter | | recoveries that wrote every registration again |
/// | `registry_recovery_attempts_total` | counter | | attempts of those recoveries, failed ones too |
/// | `registry_key_repairs_total` | counter | | registered keys deleted by someone else, restored |
/// | `registry_malformed_values_total` | counter | | registry values that did not decode, skipped |
/// | `registry_watch_restarts_total` | counter | `service` | watches listed again after an error |
/// | `registry_watch_compactions_total` | counter | `service` | of those, after a compaction |
/// | `registry_watched_instances` | gauge | `service` | instances the watch last saw |
/// | `etcd_lease_keepalive_duration_seconds` | timer | | lease renewal round trips |
///
/// The `service` series exist while the service is watched: when its last watcher ends they are
/// destroyed (a gauge left behind would keep reporting instances nobody follows any more).
///
/// Run it for its lifetime, scoped or as a swift-service-lifecycle `Service`:
///
/// ```swift
/// try await withEtcdServiceRegistry(config: .defaults, logger: logger) { registry in
///   try await registry.register(ServiceInstance(name: "user-server", address: "10.0.0.7:8082"))
/// }
/// ```
public final class EtcdServiceRegistry: ServiceRegistry, Service {
  /// The configuration the registry was made with.
  public let config: Config
  /// The etcd client the registry runs on.
  public let client: EtcdClient
  let keyspace: RegistryKeyspace
  let logger: Logger
  let metrics: RegistryMetrics
  let state = Locked(State())
  let shutdownRequested = Signal()
  let shutdownDone = Signal()
  let feedLaunches: AsyncStream<ServiceFeed>.Continuation
  private let feedLaunchStream: AsyncStream<ServiceFeed>

  struct State {
    /// What this registry wants registered, by key.
    var registrations: [String: ServiceInstance] = [:]
    /// The lease: none, being granted or held; its generation; whether to restore.
    var leasing = RegistryLeaseState<Task<EtcdLease, any Error>>()
    /// Whether run() runs (and was cancelled) and whether shutdown began.
    var lifecycle = RegistryLifecycle()
    /// Keys whose registration etcd has acknowledged: only these are restored when deleted.
    var confirmed: Set<String> = []
    var feeds: [String: ServiceFeed] = [:]
    var wake = Wakeup()
  }

  /// Creates a registry. Nothing connects until ``run()``.
  ///
  /// - Parameters:
  ///   - metricsFactory: Where the registry's metrics go (registrations, lease grants and
  ///     losses, re-registrations and their attempts, key repairs, malformed values skipped,
  ///     watch restarts and compactions, instances per watched service, and the etcd client's
  ///     keep-alive latency). The names are listed under "Metrics" above.
  /// - Throws: ``RegistryError`` (`invalidArgument`) for a bad prefix or TTL, or `EtcdError`
  ///   for a bad endpoint.
  public init(
    config: Config,
    logger: Logger,
    metricsFactory: any MetricsFactory = MetricsSystem.factory
  ) throws {
    guard config.leaseTTL >= .seconds(1) else {
      throw RegistryError(
        code: .invalidArgument,
        message:
          "lease TTL \(config.leaseTTL) is below 1 second; etcd's minimum is about 2 seconds",
        field: "leaseTTL"
      )
    }
    self.config = config
    self.keyspace = try RegistryKeyspace(prefix: config.keyPrefix)
    self.logger = logger
    self.metrics = RegistryMetrics(factory: metricsFactory)
    self.client = try EtcdClient(
      config: config.etcd,
      logger: logger,
      metricsFactory: metricsFactory
    )
    (self.feedLaunchStream, self.feedLaunches) = AsyncStream.makeStream(of: ServiceFeed.self)
  }

  /// Runs the etcd client, lease maintenance, key repair and the watch feeds until
  /// ``shutdown()`` or a graceful shutdown of the service group.
  public func run() async throws {
    self.state.withLock { $0.lifecycle.runStarted() }
    defer {
      self.state.withLock { $0.lifecycle.runEnded() }
      self.shutdownDone.fire()
    }
    try await withTaskCancellationHandler {
      try await self.runUntilShutdown()
    } onCancel: {
      // Cancelled: stop at once, as a crash would. The lease is not revoked; it expires after
      // its TTL and takes the registrations with it.
      self.state.withLock { $0.lifecycle.runCancelled() }
      self.shutdownRequested.fire()
    }
  }

  private func runUntilShutdown() async throws {
    try await withGracefulShutdownHandler {
      try await withThrowingDiscardingTaskGroup { group in
        // Not client.run(): the client must outlive the service group's graceful shutdown
        // long enough to revoke the lease; performShutdown() shuts it down afterwards.
        group.addTask { try await self.client.runUntilShutdown() }
        group.addTask { await self.maintainLease() }
        group.addTask { await self.repairDeletedKeys() }
        group.addTask {
          await self.shutdownRequested.waitIgnoringCancellation()
          await self.performShutdown()
        }
        // Feeds start when a service is first watched; they run here, as children of run(),
        // and the launch stream ends at shutdown.
        for await feed in self.feedLaunchStream {
          group.addTask { await feed.run(registry: self) }
        }
      }
    } onGracefulShutdown: {
      self.shutdownRequested.fire()
    }
  }

  /// Begins shutting down: the same as ``shutdown()`` without waiting for it.
  public func beginGracefulShutdown() {
    self.shutdownRequested.fire()
  }

  public func register(_ instance: ServiceInstance) async throws {
    try instance.validate()
    let key = self.keyspace.key(for: instance)
    let value = self.config.codec.encode(instance)
    try self.state.withLock { state throws(RegistryError) in
      if state.lifecycle.isShutDown { throw RegistryError.shutDown("register") }
      state.registrations[key] = instance
    }
    do {
      while true {
        let (lease, generation) = try await self.currentLease()
        do {
          try await self.client.put(key, value: value, lease: lease.id)
        } catch let error as EtcdError where error.code == .leaseNotFound {
          self.leaseLost(lease, reason: "a write found it gone")
          continue
        }
        // A recovery that switched leases while this write was in flight may have missed it:
        // write again with the new lease.
        let stale = self.state.withLock { $0.leasing.generation != generation }
        if !stale { break }
      }
    } catch {
      self.state.withLock { state in
        if state.registrations[key] == instance { state.registrations[key] = nil }
      }
      throw Self.registryError(error, "register \(instance.name) at \(instance.address)")
    }
    self.state.withLock { state in
      if state.registrations[key] != nil { state.confirmed.insert(key) }
    }
    self.metrics.registrations.increment()
    self.logger.info(
      "registered instance",
      metadata: [
        "registry.service": "\(instance.name)", "registry.address": "\(instance.address)",
        "registry.weight": "\(instance.weight)", "registry.group": "\(instance.group)",
      ]
    )
  }

  public func deregister(service: String, address: String) async throws {
    try ServiceInstance.validate(serviceName: service)
    let key = self.keyspace.key(service: service, address: address)
    try self.state.withLock { state throws(RegistryError) in
      if state.lifecycle.isShutDown { throw RegistryError.shutDown("deregister") }
      state.registrations[key] = nil
      state.confirmed.remove(key)
    }
    do {
      try await self.client.delete(.key(key))
    } catch {
      throw Self.registryError(error, "deregister \(service) at \(address)")
    }
    self.metrics.deregistrations.increment()
    self.logger.info(
      "deregistered instance",
      metadata: ["registry.service": "\(service)", "registry.address": "\(address)"]
    )
  }

  public func instances(of service: String) async throws -> [ServiceInstance] {
    try ServiceInstance.validate(serviceName: service)
    try self.state.withLock { state throws(RegistryError) in
      if state.lifecycle.isShutDown { throw RegistryError.shutDown("list instances") }
    }
    do {
      return try await self.list(service).instances
    } catch {
      throw Self.registryError(error, "list \(service)")
    }
  }

  /// Lists a service at one revision, in pages; malformed values are skipped with a warning.
  func list(_ service: String) async throws -> RegistrySnapshot {
    let prefix = Array(self.keyspace.servicePrefix(service).utf8)
    // Each value is decoded in place as the response is read: no copy of keys and values.
    let instances = Locked<[ServiceInstance]>([])
    let header = try await self.client.visitAll(
      .prefix(self.keyspace.servicePrefix(service)),
      pageSize: self.config.listPageSize,
      restart: { instances.withLock { $0.removeAll() } },
      visit: { kv in
        guard let instance = self.decode(kv, service: service, prefix: prefix) else { return }
        instances.withLock { $0.append(instance) }
      }
    )
    return RegistrySnapshot(
      service: service,
      instances: instances.withLock { $0 },
      revision: header.revision
    )
  }

  /// Decodes the instance stored in `kv`, a key under `prefix` (the service's key prefix, as
  /// bytes); `nil` for a key of another layout or a malformed value (counted and logged).
  func decode(_ kv: EtcdKeyValue, service: String, prefix: [UInt8]) -> ServiceInstance? {
    kv.key.withUnsafeBytes { key in
      kv.value.withUnsafeBytes { value in
        self.decode(
          EtcdKeyValueView(
            key: key,
            value: value,
            createRevision: kv.createRevision,
            modRevision: kv.modRevision,
            version: kv.version,
            lease: kv.lease
          ),
          service: service,
          prefix: prefix
        )
      }
    }
  }

  /// ``decode(_:service:prefix:)`` of a key-value read in place.
  func decode(_ kv: EtcdKeyValueView, service: String, prefix: [UInt8]) -> ServiceInstance? {
    // The address is the rest of the key after the service's prefix.
    guard kv.key.count > prefix.count, let key = kv.key.baseAddress,
      prefix.withUnsafeBytes({ $0.baseAddress.map { memcmp(key, $0, prefix.count) == 0 } ?? true })
    else {
      return nil
    }
    let address = String(
      decoding: UnsafeRawBufferPointer(rebasing: kv.key[prefix.count...]),
      as: UTF8.self
    )
    do {
      // Every caller has validated `service` (listing and watching check it first).
      return try self.config.codec.decode(
        kv.value,
        service: service,
        address: address,
        serviceIsValid: true
      )
    } catch {
      self.metrics.malformedValues.increment()
      self.logger.warning(
        "skipped malformed registry value",
        metadata: [
          "registry.service": "\(service)", "registry.address": "\(address)",
          "registry.key": "\(kv.keyString)", "registry.error": "\(error.message)",
          "etcd.revision": "\(kv.modRevision)",
        ]
      )
      return nil
    }
  }

  public func watch(_ service: String) -> ServiceWatch {
    ServiceWatch {
      let (stream, continuation) = AsyncThrowingStream.makeStream(of: RegistryEvent.self)
      do {
        try ServiceInstance.validate(serviceName: service)
        let (feed, launch) = try self.state.withLock { state throws(RegistryError) in
          if state.lifecycle.isShutDown { throw RegistryError.shutDown("watch") }
          if let feed = state.feeds[service] { return (feed, false) }
          let feed = ServiceFeed(
            service: service,
            prefix: self.keyspace.servicePrefix(service),
            metrics: self.metrics.watch(service: service)
          )
          state.feeds[service] = feed
          return (feed, true)
        }
        let id = feed.subscribe(continuation)
        continuation.onTermination = { _ in
          if feed.unsubscribe(id) { self.retire(feed) }
        }
        if launch { self.feedLaunches.yield(feed) }
      } catch {
        continuation.finish(throwing: error)
      }
      return stream
    }
  }

  /// Stops a feed whose last subscriber left, unless a new subscriber arrived meanwhile.
  private func retire(_ feed: ServiceFeed) {
    let retired = self.state.withLock { state in
      guard state.feeds[feed.service] === feed, feed.stopIfUnused() else { return false }
      state.feeds[feed.service] = nil
      // Under the lock, before a new feed of the service can make the same series again.
      feed.metrics.destroy()
      return true
    }
    if retired {
      self.logger.debug(
        "stopped watching service",
        metadata: ["registry.service": "\(feed.service)"]
      )
    }
  }

  public func shutdown() async {
    let running = self.state.withLock { $0.lifecycle.isRunning }
    self.shutdownRequested.fire()
    if running {
      // run() performs the shutdown and signals when it has returned.
      await self.shutdownDone.waitIgnoringCancellation()
    }
    // Nobody ran the registry, or run() ended early (cancelled): shut down here.
    await self.performShutdown()
  }

  /// Revokes the lease (bounded by the shutdown timeout), ends the watches and stops the client.
  private func performShutdown() async {
    typealias Decided = (
      RegistryLifecycle.ShutdownAction, EtcdLease?, [ServiceFeed], CheckedContinuation<Void, Never>?
    )
    let decided = self.state.withLock { state -> Decided? in
      guard let action = state.lifecycle.beginShutdown() else { return nil }
      state.confirmed = []
      state.registrations = [:]
      defer {
        for feed in state.feeds.values { feed.metrics.destroy() }
        state.feeds = [:]
      }
      return (action, state.leasing.lease, Array(state.feeds.values), state.wake.take())
    }
    // A shutdown already under way (run()'s and shutdown()'s both end here) finishes alone.
    guard let (action, lease, feeds, wake) = decided else { return }
    wake?.resume()
    self.feedLaunches.finish()
    for feed in feeds { feed.stop() }
    if let lease, action == .leaveLeaseToExpire {
      self.logger.info(
        "run() cancelled; the registry lease is left to expire",
        metadata: ["etcd.lease": "\(lease.id)"]
      )
    } else if let lease {
      do {
        try await withDeadline(self.config.shutdownTimeout) {
          try await self.client.revokeLease(lease.id, timeout: self.config.shutdownTimeout)
        }
        self.logger.info("revoked registry lease", metadata: ["etcd.lease": "\(lease.id)"])
      } catch {
        self.logger.warning(
          "could not revoke registry lease; its keys vanish when it expires",
          metadata: ["etcd.lease": "\(lease.id)", "registry.error": "\(error)"]
        )
      }
    }
    self.client.beginGracefulShutdown()
  }

  static func registryError(_ error: any Error, _ operation: String) -> any Error {
    guard let error = error as? EtcdError else { return error }
    let code: RegistryError.Code
    switch error.code {
    case .unavailable: code = .unavailable
    case .timeout: code = .timeout
    case .permissionDenied, .authFailed: code = .permissionDenied
    case .invalidArgument: code = .invalidArgument
    case .shutdown: code = .shutdown
    default: code = .internalError
    }
    return RegistryError(
      code: code,
      message: "could not \(operation): \(error.message)",
      cause: error
    )
  }
}

/// Runs an ``EtcdServiceRegistry`` for the duration of `body`, then shuts it down (revoking its
/// lease, so its registrations vanish at once).
public func withEtcdServiceRegistry<Result: Sendable>(
  config: EtcdServiceRegistry.Config,
  logger: Logger,
  metricsFactory: any MetricsFactory = MetricsSystem.factory,
  _ body: (EtcdServiceRegistry) async throws -> Result
) async throws -> Result {
  let registry = try EtcdServiceRegistry(
    config: config,
    logger: logger,
    metricsFactory: metricsFactory
  )
  return try await withThrowingTaskGroup(of: Void.self) { group in
    group.addTask { try await registry.run() }
    let result: Result
    do {
      result = try await body(registry)
    } catch {
      await registry.shutdown()
      try? await group.waitForAll()
      throw error
    }
    await registry.shutdown()
    try await group.waitForAll()
    return result
  }
}

/// Runs `body`, giving up with ``RegistryError/Code/timeout`` after `limit`.
func withDeadline<T: Sendable>(
  _ limit: Duration,
  _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
  try await withTimeout(
    limit,
    onTimeout: { RegistryError(code: .timeout, message: "gave up after \(limit)") },
    body
  )
}

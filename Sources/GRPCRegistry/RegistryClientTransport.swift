import GRPCConnection
public import GRPCCore
public import Logging
public import RegistryCore
import RegistryPrimitives
import Synchronization

/// A grpc-swift-2 `ClientTransport` that balances calls over the live instances of a service in
/// a `ServiceRegistry`, by weight, and restricted to a group when the call asks for one.
///
/// It follows the registry's watch and keeps one connection per instance (the project's own
/// `HTTP2Connection` by default). Each call picks an instance by smooth
/// weighted round robin (or power of two choices, see ``Config``) among the instances of its
/// group: the group set by ``withRegistryGroup(_:isolation:_:)`` around the call, else the
/// `ServiceContext`'s `registryGroup`, else the target's. A call whose stream cannot start on one instance is tried on another; an instance
/// that leaves the registry gets no new calls at once and is closed when its calls have finished;
/// instances whose calls keep failing are ejected for a while; and instances that serve
/// `grpc.health.v1.Health` are watched over it, so one that reports `NOT_SERVING` or whose health
/// stream breaks stops getting calls at once. With the default connections, an instance that
/// stops answering altogether (hung, or stopped with SIGSTOP) while calls wait for it stops
/// getting new calls within about a second (``GRPCConnection/HTTP2Connection/StallDetection``).
///
/// ```swift
/// let transport = RegistryClientTransport(
///   target: .registry(service: "user-server"),
///   registry: registry,
///   logger: logger
/// )
/// try await withGRPCClient(transport: transport) { client in
///   let users = User_UserMesService.Client(wrapping: client)
///   let reply = try await withRegistryGroup("A") {
///     try await users.getById(.with { $0.id = 1 })
///   }
/// }
/// ```
///
/// ## Metrics
///
/// Through ``Config/metricsFactory`` (by default the global `MetricsSystem.factory`):
///
/// | name | kind | dimensions | counts |
/// |---|---|---|---|
/// | `registry_client_calls_total` | counter | `service`, `instance` | streams opened per instance |
/// | `registry_client_failovers_total` | counter | `service` | calls moved to another instance |
/// | `registry_client_ejections_total` | counter | `service`, `instance` | outlier ejections |
/// | `registry_client_readmissions_total` | counter | `service`, `instance` | re-admissions |
///
/// A call whose stream could not start on one instance counts once on each instance it tried,
/// and once as a fail-over; an ejected instance is re-admitted by its first success on probation.
/// The per-instance series are destroyed once the transport has no connection to the instance
/// any more (it left the registry, or the transport shut down), so changing addresses do not
/// pile up series in the metrics backend.
///
/// `GRPCClient.runConnections()` calls ``connect()``, which runs everything (the registry watch,
/// the connections, the health watches) as child tasks until ``beginGracefulShutdown()`` and the
/// last call have finished, or until the task is cancelled.
public final class RegistryClientTransport: ClientTransport, Sendable {
  /// Messages are byte arrays, as the generated code and GRPCProtobuf produce them.
  public typealias Bytes = [UInt8]

  /// The service (and default group) this transport routes to.
  public let target: RegistryTarget
  /// The configuration.
  public let config: Config
  /// The retry throttle from the configured service config, if it has one.
  public let retryThrottle: RetryThrottle?

  private let registry: any ServiceRegistry
  private let logger: Logger
  private let metrics: TransportMetrics
  private let state: Locked<Balancer>
  private let started = Atomic<Bool>(false)
  private let stopWatching = Signal()
  private let actions: AsyncStream<Subchannel>
  private let actionsContinuation: AsyncStream<Subchannel>.Continuation
  private let methodConfigs: [MethodConfig.Name: MethodConfig]

  /// Creates a transport; nothing happens until ``connect()`` runs (calls made before wait for
  /// the registry's first answer).
  ///
  /// - Parameters:
  ///   - target: The service, and the group calls go to unless they set their own.
  ///   - registry: The registry to follow.
  ///   - config: The configuration.
  ///   - logger: Receives membership, health and ejection events (debug and info).
  public init(
    target: RegistryTarget,
    registry: any ServiceRegistry,
    config: Config = .defaults,
    logger: Logger
  ) {
    self.target = target
    self.registry = registry
    self.config = config
    self.logger = logger
    self.metrics = TransportMetrics(service: target.service, factory: config.metricsFactory)
    self.state = Locked(
      Balancer(
        service: target.service,
        policy: config.loadBalancing,
        outlier: config.outlierDetection,
        healthChecking: config.healthChecking != nil,
        subsetting: config.subsetting,
        slowStart: config.slowStart,
        defaultGroup: target.group
      )
    )
    (self.actions, self.actionsContinuation) = AsyncStream.makeStream(of: Subchannel.self)
    var methodConfigs: [MethodConfig.Name: MethodConfig] = [:]
    for methodConfig in config.serviceConfig.methodConfig {
      for name in methodConfig.names { methodConfigs[name] = methodConfig }
    }
    self.methodConfigs = methodConfigs
    self.retryThrottle = config.serviceConfig.retryThrottling.map { RetryThrottle(policy: $0) }
  }

  // MARK: - ClientTransport

  /// Follows the registry and keeps the instances' connections until ``beginGracefulShutdown()``
  /// (after in-flight calls finish) or until the calling task is cancelled.
  ///
  /// - Throws: ``GRPCRegistryError`` with code `alreadyRunning` when called twice.
  public func connect() async throws {
    guard self.started.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged
    else {
      throw GRPCRegistryError(
        code: .alreadyRunning,
        message: "connect() was already called; a RegistryClientTransport runs once."
      )
    }
    await withDiscardingTaskGroup { group in
      group.addTask {
        await withDiscardingTaskGroup { watch in
          watch.addTask { await self.watchRegistry() }
          await self.stopWatching.wait()
          watch.cancelAll()
        }
      }
      for await subchannel in self.actions {
        group.addTask { await self.run(subchannel) }
      }
    }
    // Cancelled: nothing else may wait for connections that no longer run.
    self.perform(self.state.withLock { $0.beginShutdown() })
  }

  /// Stops following the registry and starting calls; ``connect()`` returns once the in-flight
  /// calls have finished and every connection has closed.
  public func beginGracefulShutdown() {
    self.stopWatching.fire()
    let effects = self.state.withLock { $0.beginShutdown() }
    self.actionsContinuation.finish()
    self.perform(effects)
  }

  /// Returns the configured service config's method config for `descriptor`: an exact match,
  /// else the service's default, else the global default.
  public func config(forMethod descriptor: MethodDescriptor) -> MethodConfig? {
    guard !self.methodConfigs.isEmpty else { return nil }
    let service = descriptor.service.fullyQualifiedService
    return self.methodConfigs[MethodConfig.Name(service: service, method: descriptor.method)]
      ?? self.methodConfigs[MethodConfig.Name(service: service, method: "")]
      ?? self.methodConfigs[MethodConfig.Name(service: "", method: "")]
  }

  /// Picks an instance for the call and opens a stream on it; a stream that cannot start is
  /// tried on another instance (up to ``Config/maxStreamStartAttempts``).
  ///
  /// Fails with `unavailable` when the call's group has no instances (the message names the
  /// service and group) or none of them can take the call. Before the registry's first answer,
  /// and with `waitForReady` while no instance is available, the call waits within its timeout
  /// (`CallOptions.timeout`, else the deadline of `HTTP2Connection.withCallDeadline`).
  public func withStream<T: Sendable>(
    descriptor: MethodDescriptor,
    options: CallOptions,
    _ closure: (_ stream: RPCStream<Inbound, Outbound>, _ context: ClientContext) async throws -> T
  ) async throws -> T {
    let group = currentRegistryGroup ?? self.target.group
    let preference = RegistryPreferenceContext.preference ?? self.config.metadataPreference
    let deadline = HTTP2Connection.deadline(of: options)
    var excluded: [UInt64] = []
    var lastError: (any Error)?
    for _ in 0 ..< max(1, self.config.maxStreamStartAttempts) {
      let subchannel: Subchannel
      do {
        subchannel = try await self.pick(
          group: group,
          preference: preference,
          excluding: excluded,
          waitForReady: options.waitForReady ?? false,
          deadline: deadline
        )
      } catch {
        // Every instance was tried: the reason the last one failed says more than "none left".
        throw lastError ?? error
      }
      if lastError != nil { self.metrics.failovers.increment() }
      var attemptOptions = options
      if let deadline { attemptOptions.timeout = deadline - .now }
      let outcome = CallOutcome()
      do {
        let result = try await subchannel.connection.withStream(
          descriptor: descriptor,
          options: attemptOptions
        ) { stream, context in
          outcome.markStarted()
          let observed = RPCStream(
            descriptor: stream.descriptor,
            inbound: RPCAsyncSequence(
              wrapping: ObservedInbound(base: stream.inbound, outcome: outcome)
            ),
            outbound: stream.outbound
          )
          return try await closure(observed, context)
        }
        self.release(subchannel, failure: outcome.failure)
        return result
      } catch {
        let unavailable = (error as? RPCError)?.code == .unavailable
        if outcome.started {
          self.release(subchannel, failure: outcome.failure ?? unavailable)
          throw error
        }
        self.release(subchannel, failure: unavailable)
        self.logger.debug(
          "Stream could not start; trying another instance",
          metadata: [
            "registry.service": "\(self.target.service)",
            "registry.address": "\(subchannel.address)", "grpc.error": "\(error)",
          ]
        )
        if Task.isCancelled { throw error }
        if let rpcError = error as? RPCError,
          rpcError.code == .deadlineExceeded || rpcError.code == .cancelled
        {
          throw error
        }
        excluded.append(subchannel.id)
        lastError = error
      }
    }
    throw lastError
      ?? RPCError(
        code: .unavailable,
        message: "No instance of '\(self.target.service)' took the call."
      )
  }

  // MARK: - Introspection

  /// The registered instances the transport connects to (with ``Config/subsetting``, its subset
  /// and the subsets of the groups its calls asked for), as it sees them, sorted by address.
  public var instanceStatuses: [InstanceStatus] {
    self.state.withLock { state in
      state.active.values.compactMap { id -> InstanceStatus? in
        guard let entry = state.entries[id] else { return nil }
        return InstanceStatus(entry)
      }
    }.sorted { $0.instance.address < $1.instance.address }
  }

  // MARK: - Picking

  private func pick(
    group: String?,
    preference: MetadataPreference?,
    excluding excluded: [UInt64],
    waitForReady: Bool,
    deadline: ContinuousClock.Instant?
  ) async throws -> Subchannel {
    let resolutionDeadline = ContinuousClock.now + self.config.resolutionTimeout
    while true {
      var random = SystemRandomNumberGenerator()
      let now = ContinuousClock.now
      var scopeEffects: Balancer.Effects?
      let (result, hasSnapshot, generation) = self.state.withLock { state in
        if state.subsetting != nil {
          scopeEffects = state.ensureScope(group) { id, instance in
            self.makeSubchannel(id: id, instance: instance)
          }
        }
        return (
          state.pick(
            group: group,
            preference: preference,
            excluding: excluded,
            now: now,
            random: &random
          ),
          state.hasSnapshot, state.generation
        )
      }
      if let scopeEffects { self.perform(scopeEffects) }
      let error: RPCError
      switch result {
      case .picked(let subchannel):
        subchannel.calls.increment()
        return subchannel
      case .unavailable(let reason):
        error = reason
      }
      guard error.code == .unavailable, !hasSnapshot || waitForReady, excluded.isEmpty else {
        throw error
      }
      var until = deadline
      if !hasSnapshot, !waitForReady {
        until = min(deadline ?? resolutionDeadline, resolutionDeadline)
      }
      if let until, ContinuousClock.now >= until {
        if let deadline, deadline <= until {
          throw RPCError(
            code: .deadlineExceeded,
            message: "The call's deadline passed while waiting for an instance: \(error.message)"
          )
        }
        throw error
      }
      try Task.checkCancellation()
      await self.waitForChange(after: generation, until: until)
    }
  }

  private func waitForChange(
    after generation: UInt64,
    until deadline: ContinuousClock.Instant?
  ) async {
    let id = self.state.withLock { $0.makeID() }
    await withTaskGroup(of: Void.self) { group in
      if let deadline {
        group.addTask { try? await Task.sleep(until: deadline) }
      }
      group.addTask {
        await withTaskCancellationHandler {
          await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let resume = self.state.withLock { state in
              if state.generation != generation || Task.isCancelled { return true }
              state.waiters[id] = continuation
              return false
            }
            if resume { continuation.resume() }
          }
        } onCancel: {
          let waiter = self.state.withLock { $0.waiters.removeValue(forKey: id) }
          waiter?.resume()
        }
      }
      await group.next()
      group.cancelAll()
    }
  }

  private func release(_ subchannel: Subchannel, failure: Bool?) {
    let now = ContinuousClock.now
    let effects = self.state.withLock { $0.release(subchannel.id, failure: failure, now: now) }
    self.perform(effects)
  }

  private func perform(_ effects: Balancer.Effects) {
    for waiter in effects.wake { waiter.resume() }
    for address in effects.ejected {
      self.metrics.instance(address)?.ejections.increment()
      self.logger.warning(
        "Instance ejected after consecutive failures",
        metadata: ["registry.service": "\(self.target.service)", "registry.address": "\(address)"]
      )
    }
    for address in effects.readmitted {
      self.metrics.instance(address)?.readmissions.increment()
      self.logger.info(
        "Ejected instance re-admitted after a success",
        metadata: ["registry.service": "\(self.target.service)", "registry.address": "\(address)"]
      )
    }
    for subchannel in effects.close {
      self.logger.debug(
        "Closing connection to removed instance",
        metadata: [
          "registry.service": "\(self.target.service)", "registry.address": "\(subchannel.address)",
        ]
      )
      subchannel.close.fire()
    }
    for subchannel in effects.start {
      self.logger.debug(
        "Connecting to new instance",
        metadata: [
          "registry.service": "\(self.target.service)", "registry.address": "\(subchannel.address)",
        ]
      )
      if case .terminated = self.actionsContinuation.yield(subchannel) {
        // Shut down meanwhile: the subchannel never runs, so it must not linger.
        self.ended(subchannel)
      }
    }
  }

  // MARK: - Registry watch

  private func watchRegistry() async {
    var attempt = 0
    while !Task.isCancelled {
      let delay: Duration
      do {
        for try await snapshot in self.registry.watch(self.target.service).snapshots {
          let effects = self.state.withLock { state in
            state.apply(snapshot.instances) { id, instance in
              self.makeSubchannel(id: id, instance: instance)
            }
          }
          self.perform(effects)
          attempt = 0
        }
        if Task.isCancelled { return }
        delay = self.config.registryBackoff.delay(attempt: attempt)
        self.logger.info(
          "Registry watch ended; subscribing again",
          metadata: ["registry.service": "\(self.target.service)"]
        )
      } catch {
        if Task.isCancelled { return }
        delay = self.config.registryBackoff.delay(attempt: attempt)
        // The last known instances stay in use: an error never empties the set.
        self.logger.warning(
          "Registry watch failed; keeping the last known instances and retrying",
          metadata: [
            "registry.service": "\(self.target.service)", "registry.error": "\(error)",
            "registry.retry_in": "\(delay)",
          ]
        )
      }
      attempt += 1
      do {
        try await Task.sleep(for: delay)
      } catch {
        return
      }
    }
  }

  private func makeSubchannel(id: UInt64, instance: ServiceInstance) -> Subchannel? {
    do {
      var logger = self.logger
      logger[metadataKey: "registry.address"] = "\(instance.address)"
      let connection = try InstanceConnection.make(
        address: instance.address,
        kind: self.config.connection,
        tls: self.config.tls,
        logger: logger
      )
      return Subchannel(
        id: id,
        address: instance.address,
        connection: connection,
        calls: self.metrics.retain(instance: instance.address).calls
      )
    } catch {
      self.logger.info(
        "Skipping an instance whose address cannot be dialled",
        metadata: [
          "registry.service": "\(self.target.service)", "registry.address": "\(instance.address)",
          "registry.error": "\(error)",
        ]
      )
      return nil
    }
  }

  // MARK: - One instance

  private func run(_ subchannel: Subchannel) async {
    await withDiscardingTaskGroup { group in
      group.addTask {
        do {
          try await subchannel.connection.connect()
        } catch {
          self.logger.debug(
            "Connection ended with an error",
            metadata: [
              "registry.service": "\(self.target.service)",
              "registry.address": "\(subchannel.address)", "grpc.error": "\(error)",
            ]
          )
        }
      }
      switch subchannel.connection {
      case .own(let connection):
        group.addTask {
          for await state in connection.connectivityStates() {
            let connectivity: Balancer.Connectivity
            switch state {
            case .idle:
              connectivity = .idle
              // A connection that went idle (lost, or drained by GOAWAY) reconnects only when
              // asked. An instance still in the registry should be ready to take calls, so ask;
              // a gracefully stopping server has deregistered (and this subchannel is closing)
              // before it sends GOAWAY.
              connection.requestConnection()
            case .connecting: connectivity = .connecting
            case .ready: connectivity = .ready
            case .transientFailure: connectivity = .transientFailure
            case .shutdown: connectivity = .shutdown
            }
            self.perform(self.state.withLock { $0.setConnectivity(subchannel.id, connectivity) })
          }
        }
      case .posix:
        // The stock transport does not report connectivity; it queues calls until connected.
        self.perform(self.state.withLock { $0.setConnectivity(subchannel.id, .ready) })
      }
      group.addTask {
        await withDiscardingTaskGroup { health in
          if let healthChecking = self.config.healthChecking {
            health.addTask { await self.watchHealth(subchannel, healthChecking) }
          }
          await subchannel.close.wait()
          // The health stream is a call too: it must end before the connection can drain.
          health.cancelAll()
        }
        subchannel.connection.beginGracefulShutdown()
      }
    }
    self.ended(subchannel)
  }

  /// A subchannel is gone (ran and ended, or never started): the balancer forgets it and its
  /// address's metrics lose a user.
  private func ended(_ subchannel: Subchannel) {
    self.metrics.release(instance: subchannel.address)
    self.perform(self.state.withLock { $0.subchannelEnded(subchannel.id) })
  }

  private func watchHealth(_ subchannel: Subchannel, _ policy: HealthChecking) async {
    // The client is never run: it only frames calls on the subchannel's connection, which the
    // transport runs itself.
    let health = Grpc_Health_V1_Health.Client(
      wrapping: GRPCClient(transport: subchannel.connection)
    )
    var request = Grpc_Health_V1_HealthCheckRequest()
    request.service = policy.serviceName
    var options = CallOptions.defaults
    options.waitForReady = true
    var delay = policy.retryDelay
    while !Task.isCancelled {
      do {
        try await health.watch(request, options: options) { response in
          for try await message in response.messages {
            let status: Balancer.Health = message.status == .serving ? .serving : .notServing
            self.perform(self.state.withLock { $0.setHealth(subchannel.id, status) })
          }
        }
        self.setHealth(subchannel, .broken, reason: "the health stream ended")
      } catch let error as RPCError where error.code == .unimplemented {
        self.setHealth(
          subchannel,
          .notWatched,
          reason: "the instance does not serve grpc.health.v1"
        )
        return
      } catch {
        if Task.isCancelled { return }
        self.setHealth(subchannel, .broken, reason: "\(error)")
      }
      do {
        try await Task.sleep(for: delay)
      } catch {
        return
      }
      delay = min(delay * 2, policy.maxRetryDelay)
    }
  }

  private func setHealth(_ subchannel: Subchannel, _ health: Balancer.Health, reason: String) {
    self.logger.debug(
      "Instance health changed",
      metadata: [
        "registry.service": "\(self.target.service)",
        "registry.address": "\(subchannel.address)", "registry.health": "\(health)",
        "registry.reason": "\(reason)",
      ]
    )
    self.perform(self.state.withLock { $0.setHealth(subchannel.id, health) })
  }
}

import GRPCConnection
public import GRPCCore
import GRPCNIOTransportHTTP2
public import Logging
public import RegistryCore
import RegistryPrimitives
public import ServiceLifecycle
import Synchronization

/// A grpc-swift-2 server that registers itself in a `ServiceRegistry` once it listens, and
/// deregisters and drains before it stops: a swift-service-lifecycle `Service`.
///
/// ``run()`` binds (port 0 allowed), learns the bound address, registers
/// `name, advertised address, weight, group, metadata` within the register timeout (a failure
/// stops the start with a ``GRPCRegistryError``), reports SERVING on `grpc.health.v1.Health`, and
/// serves. On graceful shutdown (SIGTERM through a `ServiceGroup`, or
/// ``beginGracefulShutdown()``) it reports NOT_SERVING, deregisters, waits the drain delay, then
/// shuts the gRPC server down gracefully. Cancelling ``run()`` stops it at once without
/// deregistering, as a crash would; the registry's lease (or time to live) removes it.
///
/// ```swift
/// let server = RegisteredServer(
///   config: .init(name: "user-server") { $0.weight = 3; $0.group = "A" },
///   services: [UserDirectory()],
///   registry: registry,
///   logger: logger
/// )
/// let group = ServiceGroup(
///   configuration: .init(services: [.init(service: server)], gracefulShutdownSignals: [.sigterm], logger: logger)
/// )
/// try await group.run()
/// ```
public final class RegisteredServer: Service, Sendable {
  /// The configuration.
  public let config: Config

  private let makeServices: @Sendable (RegisteredServer) -> [any RegistrableRPCService]
  private let registry: any ServiceRegistry
  private let logger: Logger
  private let state = Locked(State())
  private let shutdownRequested = Signal()

  private struct State {
    var started = false
    var advertisedAddress: String?
    var result: Result<ServiceInstance, any Error>?
    var waiters: [UInt64: CheckedContinuation<ServiceInstance, any Error>] = [:]
    var nextID: UInt64 = 0
  }

  /// Creates a server; nothing happens until ``run()``.
  ///
  /// - Parameters:
  ///   - config: Where to listen and what to register.
  ///   - services: The gRPC services to serve (the health service is added when
  ///     ``Config/servesHealth`` is on).
  ///   - registry: The registry to register in.
  ///   - logger: Receives the server's life cycle (info and below).
  public init(
    config: Config,
    services: [any RegistrableRPCService],
    registry: any ServiceRegistry,
    logger: Logger
  ) {
    self.config = config
    self.makeServices = { _ in services }
    self.registry = registry
    self.logger = logger
  }

  /// Creates a server whose services are made when it runs, from the server itself: for
  /// services that answer with the server's ``advertisedAddress``.
  ///
  /// ```swift
  /// let server = RegisteredServer(config: config, registry: registry, logger: logger) { server in
  ///   [UserDirectory(name: { server.advertisedAddress ?? "" })]
  /// }
  /// ```
  public init(
    config: Config,
    registry: any ServiceRegistry,
    logger: Logger,
    services makeServices: @escaping @Sendable (RegisteredServer) -> [any RegistrableRPCService]
  ) {
    self.config = config
    self.makeServices = makeServices
    self.registry = registry
    self.logger = logger
  }

  /// The address the server advertises, once it is bound (`nil` before). Services that answer
  /// with their own address read it here; it is set before the instance is registered.
  public var advertisedAddress: String? {
    self.state.withLock { $0.advertisedAddress }
  }

  /// Waits until the server is registered and returns the registered instance.
  ///
  /// - Throws: The error that stopped ``run()`` before registration, or `CancellationError`.
  public func registeredInstance() async throws -> ServiceInstance {
    let id = self.state.withLock { state in
      state.nextID += 1
      return state.nextID
    }
    return try await withTaskCancellationHandler {
      try await withCheckedThrowingContinuation { continuation in
        let result = self.state.withLock { state -> Result<ServiceInstance, any Error>? in
          if let result = state.result { return result }
          if Task.isCancelled { return .failure(CancellationError()) }
          state.waiters[id] = continuation
          return nil
        }
        if let result { continuation.resume(with: result) }
      }
    } onCancel: {
      let waiter = self.state.withLock { $0.waiters.removeValue(forKey: id) }
      waiter?.resume(throwing: CancellationError())
    }
  }

  /// Starts the graceful shutdown: NOT_SERVING, deregister, drain delay, then the gRPC server's
  /// graceful shutdown. ``run()`` returns once the last call has finished.
  public func beginGracefulShutdown() {
    self.shutdownRequested.fire()
  }

  /// Binds, registers, serves until graceful shutdown, then deregisters and drains.
  ///
  /// - Throws: ``GRPCRegistryError``: `invalidConfiguration` (bad host, an unspecified address
  ///   with no routable local address, an invalid instance), `bindFailed`,
  ///   `registrationTimedOut`, `registrationFailed`, `alreadyRunning`.
  public func run() async throws {
    let alreadyStarted = self.state.withLock { state in
      defer { state.started = true }
      return state.started
    }
    if alreadyStarted {
      throw GRPCRegistryError(
        code: .alreadyRunning,
        message: "run() was already called; a RegisteredServer runs once."
      )
    }
    do {
      try await self.serve()
    } catch {
      self.finishRegistration(.failure(error))
      throw error
    }
  }

  private func serve() async throws {
    let bindAddress = try self.bindAddress()
    switch self.config.transport {
    case .own(var serverConfig):
      serverConfig.tls = self.config.tls
      let host = bindAddress.ipv4?.host ?? bindAddress.ipv6?.host ?? self.config.host
      let transport = HTTP2Server(
        host: host,
        port: self.config.port,
        config: serverConfig,
        logger: self.logger
      )
      try await self.serve(on: transport) {
        let address = try await transport.listeningAddress
        return (address.host, address.port)
      }
    case .stock:
      var transportConfig = HTTP2ServerTransport.Posix.Config.defaults()
      if self.config.answersTrafficPings { transportConfig.answerTrafficPings() }
      let transport = HTTP2ServerTransport.Posix(
        address: bindAddress,
        transportSecurity: self.config.tls?.transportSecurity ?? .plaintext,
        config: transportConfig
      )
      try await self.serve(on: transport) {
        let bound = try await transport.listeningAddress
        if let ipv4 = bound.ipv4 { return (ipv4.host, ipv4.port) }
        if let ipv6 = bound.ipv6 { return (ipv6.host, ipv6.port) }
        throw GRPCRegistryError(
          code: .invalidConfiguration,
          message:
            "the server is bound to \(bound), which has no host:port; set an advertised address"
        )
      }
    }
  }

  private func serve<Transport: ServerTransport>(
    on transport: Transport,
    boundAddress: @escaping @Sendable () async throws -> (host: String, port: Int)
  ) async throws {
    let health = HealthService()
    var services = self.makeServices(self)
    if self.config.servesHealth { services.append(health) }
    let server = GRPCServer(transport: transport, services: services)

    let serverEnded = Signal()
    try await withThrowingTaskGroup(of: Void.self) { group in
      group.addTask {
        // A server that stops by itself ends the wait for shutdown below.
        defer {
          serverEnded.fire()
          self.shutdownRequested.fire()
        }
        try await server.serve()
      }

      let instance: ServiceInstance
      do {
        instance = try await self.bindAndRegister(boundAddress: boundAddress, group: &group)
      } catch {
        health.shutdown()
        group.cancelAll()
        throw error
      }
      health.setStatus(.serving)
      self.finishRegistration(.success(instance))
      self.logger.info(
        "Registered and serving",
        metadata: [
          "registry.service": "\(instance.name)", "registry.address": "\(instance.address)",
          "registry.weight": "\(instance.weight)", "registry.group": "\(instance.group)",
        ]
      )

      await withGracefulShutdownHandler {
        await self.shutdownRequested.wait()
      } onGracefulShutdown: {
        self.shutdownRequested.fire()
      }
      if Task.isCancelled {
        // Abrupt stop: no deregistration, as after a crash.
        group.cancelAll()
        return
      }
      if serverEnded.isFired {
        self.logger.warning(
          "Server stopped unexpectedly; deregistering",
          metadata: ["registry.address": "\(instance.address)"]
        )
        health.shutdown()
        try? await Self.withTimeout(self.config.deregisterTimeout) {
          try await self.registry.deregister(service: instance.name, address: instance.address)
        }
        try await group.waitForAll()
        return
      }

      // Deregister first so that no new calls are routed here, then give the clients the drain
      // delay to notice before the server stops taking streams.
      health.setStatus(.notServing)
      self.logger.info(
        "Deregistering and draining",
        metadata: [
          "registry.address": "\(instance.address)", "registry.drain": "\(self.config.drainDelay)",
        ]
      )
      do {
        try await Self.withTimeout(self.config.deregisterTimeout) {
          try await self.registry.deregister(service: instance.name, address: instance.address)
        }
      } catch {
        self.logger.warning(
          "Deregistration failed; the registry's lease will remove the instance",
          metadata: ["registry.address": "\(instance.address)", "registry.error": "\(error)"]
        )
      }
      try? await Task.sleep(for: self.config.drainDelay)
      health.shutdown()
      server.beginGracefulShutdown()
      try await group.waitForAll()
      self.logger.info("Server stopped", metadata: ["registry.address": "\(instance.address)"])
    }
  }

  private func bindAndRegister(
    boundAddress: @Sendable () async throws -> (host: String, port: Int),
    group: inout ThrowingTaskGroup<Void, any Error>
  ) async throws -> ServiceInstance {
    let bound: (host: String, port: Int)
    do {
      bound = try await boundAddress()
    } catch let error as GRPCRegistryError {
      throw error
    } catch {
      // serve() has failed (the listening address is only missing then): report its error.
      var cause: any Error = error
      do {
        try await group.next()
      } catch let serveError {
        cause = serveError
      }
      throw GRPCRegistryError(
        code: .bindFailed,
        message:
          "could not listen on \(self.config.host):\(self.config.port); check that the address is local and the port is free\(self.config.tls == nil ? "" : ", and that the TLS certificate chain and private key are readable PEM files that belong together")",
        cause: cause
      )
    }
    let advertised = try self.advertisedAddress(bound: bound)
    self.state.withLock { $0.advertisedAddress = advertised }

    let instance = ServiceInstance(
      name: self.config.name,
      address: advertised,
      weight: self.config.weight,
      group: self.config.group,
      metadata: self.config.metadata,
      version: self.config.version
    )
    do {
      try instance.validate()
    } catch {
      throw GRPCRegistryError(
        code: .invalidConfiguration,
        message: "the instance to register is invalid: \(error.message)",
        cause: error
      )
    }
    do {
      try await Self.withTimeout(self.config.registerTimeout) {
        try await self.registry.register(instance)
      }
    } catch let error as TimeoutError {
      throw GRPCRegistryError(
        code: .registrationTimedOut,
        message:
          "registering \(instance.name) at \(instance.address) did not complete within \(self.config.registerTimeout); check that the registry (etcd) is reachable, or raise the register timeout",
        cause: error
      )
    } catch is CancellationError {
      throw CancellationError()
    } catch {
      throw GRPCRegistryError(
        code: .registrationFailed,
        message:
          "registering \(instance.name) at \(instance.address) failed: \(error); the server did not start",
        cause: error
      )
    }
    return instance
  }

  private func finishRegistration(_ result: Result<ServiceInstance, any Error>) {
    let waiters = self.state.withLock {
      state -> [CheckedContinuation<ServiceInstance, any Error>] in
      guard state.result == nil else { return [] }
      state.result = result
      defer { state.waiters.removeAll() }
      return Array(state.waiters.values)
    }
    for waiter in waiters { waiter.resume(with: result) }
  }

  // MARK: - Addresses

  private func bindAddress() throws(GRPCRegistryError) -> GRPCNIOTransportHTTP2.SocketAddress {
    let host = self.config.host
    guard (0 ... 65535).contains(self.config.port) else {
      throw GRPCRegistryError(
        code: .invalidConfiguration,
        message: "port \(self.config.port) is out of range; use 0 (any free port) to 65535"
      )
    }
    if host == "localhost" { return .ipv4(host: "127.0.0.1", port: self.config.port) }
    if HostResolver.isIPv4Literal(host) { return .ipv4(host: host, port: self.config.port) }
    let unbracketed =
      host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
    if unbracketed.contains(":") { return .ipv6(host: unbracketed, port: self.config.port) }
    throw GRPCRegistryError(
      code: .invalidConfiguration,
      message:
        "cannot listen on host '\(host)': use an IP address of this machine, localhost, 0.0.0.0 or ::"
    )
  }

  private func advertisedAddress(
    bound: (host: String, port: Int)
  ) throws(GRPCRegistryError) -> String {
    if let advertised = self.config.advertisedAddress {
      let parsed: ServiceAddress
      do {
        parsed = try ServiceAddress(parsing: advertised)
      } catch {
        throw GRPCRegistryError(
          code: .invalidConfiguration,
          message: "the advertised address is invalid: \(error.message)"
        )
      }
      guard !parsed.isUnspecified else {
        throw GRPCRegistryError(
          code: .invalidConfiguration,
          message:
            "the advertised address '\(advertised)' is unspecified; advertise the address clients dial (this machine's IP or DNS name)"
        )
      }
      return parsed.description
    }
    let (host, port) = bound
    let address = ServiceAddress(host: host, port: port)
    guard address.isUnspecified else { return address.description }
    let candidates = LocalAddresses.routable(ipv4: true, ipv6: address.isIPv6)
    guard let local = candidates.first else {
      throw GRPCRegistryError(
        code: .invalidConfiguration,
        message:
          "the server listens on \(address) (every interface) but this machine has no routable address to advertise; set an advertised address (--advertise host:port) that clients can dial"
      )
    }
    return ServiceAddress(host: local, port: port).description
  }

  // MARK: - Timeouts

  struct TimeoutError: Error, CustomStringConvertible {
    var timeout: Duration
    var description: String { "timed out after \(self.timeout)" }
  }

  /// `body` within `timeout`, or ``TimeoutError``.
  static func withTimeout<T: Sendable>(
    _ timeout: Duration,
    _ body: @escaping @Sendable () async throws -> T
  ) async throws -> T {
    try await RegistryPrimitives.withTimeout(
      timeout,
      onTimeout: { TimeoutError(timeout: timeout) },
      body
    )
  }

}

public import CoreMetrics
import GRPCConnection
import GRPCCore
public import Logging
import RegistryPrimitives
public import ServiceLifecycle
import Synchronization

/// A client for etcd's v3 API: KV, transactions, leases with keep-alive, watches, auth and
/// cluster status.
///
/// It runs on the project's own HTTP/2 connection (``GRPCConnection``), which stays connected to
/// etcd's grpc-go server however many calls it makes. One connection per endpoint; requests go to
/// one endpoint and fail over to the next when it is down or has no leader. Watches share one
/// stream and lease keep-alives another; both reconnect by themselves and resume where they were.
///
/// Run it for its lifetime, either scoped:
///
/// ```swift
/// try await withEtcdClient(config: .defaults, logger: logger) { etcd in
///   try await etcd.put("/greeting", value: "hello")
/// }
/// ```
///
/// or as a swift-service-lifecycle `Service` in a `ServiceGroup` (``run()`` and
/// ``beginGracefulShutdown()``).
///
/// ## Metrics
///
/// | name | kind | dimensions | measures |
/// |---|---|---|---|
/// | `etcd_lease_keepalive_duration_seconds` | timer | | from sending a lease renewal to etcd's answer |
public final class EtcdClient: Service, Sendable {
  /// The configuration the client was made with.
  public let config: Config
  let logger: Logger
  let endpoints: [Endpoint]
  private let preferredEndpoint = Atomic<Int>(0)
  let auth: AuthTokens
  let watches: WatchMultiplexer
  let keepAlives: LeaseKeepAliveLoop
  let shutdownSignal = Signal()

  /// Creates a client. Nothing connects until ``run()``.
  ///
  /// - Parameters:
  ///   - config: Endpoints, TLS, credentials, timeouts.
  ///   - logger: Receives connection, failover, watch and lease events (info and below).
  ///   - metricsFactory: Where the client's metrics go (see "Metrics" above); by default the
  ///     global `MetricsSystem.factory`.
  /// - Throws: ``EtcdError`` (`invalidArgument`) when an endpoint is not `host:port` or the list
  ///   is empty.
  public init(
    config: Config,
    logger: Logger,
    metricsFactory: any MetricsFactory = MetricsSystem.factory
  ) throws(EtcdError) {
    guard !config.endpoints.isEmpty else {
      throw EtcdError(
        code: .invalidArgument,
        message: "no etcd endpoints configured; pass at least one host:port, such as 127.0.0.1:2379"
      )
    }
    self.config = config
    self.logger = logger
    var endpoints: [Endpoint] = []
    for address in config.endpoints {
      endpoints.append(try Endpoint(address: address, configuration: config, logger: logger))
    }
    self.endpoints = endpoints
    self.auth = AuthTokens(credentials: config.credentials)
    self.watches = WatchMultiplexer(logger: logger)
    self.keepAlives = LeaseKeepAliveLoop(
      logger: logger,
      latency: Timer(
        label: "etcd_lease_keepalive_duration_seconds",
        dimensions: [],
        factory: metricsFactory
      )
    )
  }

  /// Runs the connections, the watch stream and the keep-alive stream until
  /// ``beginGracefulShutdown()`` (or the task is cancelled).
  public func run() async throws {
    try await withGracefulShutdownHandler {
      try await self.runUntilShutdown()
    } onGracefulShutdown: {
      self.beginGracefulShutdown()
    }
  }

  /// Runs like ``run()`` but ignores swift-service-lifecycle's graceful shutdown: only
  /// ``beginGracefulShutdown()`` (or cancellation of the task) ends it. For an owner that still
  /// needs the client while it shuts down itself: the registry revokes its lease after the
  /// service group's shutdown began, then shuts the client down.
  package func runUntilShutdown() async throws {
    try await withTaskCancellationHandler {
      try await withThrowingDiscardingTaskGroup { group in
        for endpoint in self.endpoints {
          group.addTask { try await endpoint.client.runConnections() }
        }
        group.addTask { await self.watches.run(client: self) }
        group.addTask { await self.keepAlives.run(client: self) }
        group.addTask {
          await self.shutdownSignal.waitIgnoringCancellation()
          // Streams end first so the gRPC clients can finish their graceful shutdown.
          await self.watches.stopped()
          await self.keepAlives.stopped()
          for endpoint in self.endpoints { endpoint.client.beginGracefulShutdown() }
        }
      }
    } onCancel: {
      self.beginGracefulShutdown()
    }
  }

  /// Ends watches and keep-alives, refuses new requests, and lets in-flight ones finish;
  /// ``run()`` returns soon after.
  public func beginGracefulShutdown() {
    self.shutdownSignal.fire()
    self.watches.shutdown()
    self.keepAlives.shutdown()
  }

  var isShutDown: Bool { self.shutdownSignal.isFired }

  /// The endpoint requests currently go to.
  public var currentEndpoint: String {
    self.endpoints[self.preferredEndpoint.load(ordering: .relaxed) % self.endpoints.count].address
  }

  /// Moves to the endpoint after `index`, unless another caller already moved on.
  func failover(from index: Int) {
    let next = (index + 1) % self.endpoints.count
    if self.preferredEndpoint.compareExchange(expected: index, desired: next, ordering: .relaxed)
      .exchanged,
      self.endpoints.count > 1
    {
      self.logger.warning(
        "etcd endpoint failover",
        metadata: [
          "etcd.from": "\(self.endpoints[index].address)",
          "etcd.to": "\(self.endpoints[next].address)",
        ]
      )
    }
  }

  /// The index and endpoint requests should use now.
  func pickEndpoint() -> (Int, Endpoint) {
    let index = self.preferredEndpoint.load(ordering: .relaxed) % self.endpoints.count
    return (index, self.endpoints[index])
  }

  /// Runs one unary request with the deadline, failover, and re-authentication rules.
  ///
  /// A request that fails as `unavailable` (endpoint down, no leader, silent) or takes longer
  /// than ``Config/attemptTimeout`` on one member moves to the next endpoint and is
  /// tried again until the deadline; an expired auth token is renewed once and the request
  /// tried again.
  func unary<Result: Sendable>(
    _ operation: String,
    timeout: Duration? = nil,
    authenticated: Bool = true,
    _ body: (GRPCClient<HTTP2Connection>, Metadata, CallOptions) async throws -> Result
  ) async throws -> Result {
    guard !self.isShutDown else { throw EtcdError.shutDown() }
    let timeout = timeout ?? self.config.requestTimeout
    let deadline = ContinuousClock.now + timeout
    var attempt = 0
    var reauthenticated = false
    while true {
      let (index, endpoint) = self.pickEndpoint()
      let attemptDeadline = min(deadline, ContinuousClock.now + self.config.attemptTimeout)
      do {
        var metadata = authenticated ? try await self.auth.metadata(for: self) : [:]
        // etcd's require-leader flag: a member without a leader (cut off from its peers, or in
        // a cluster that lost quorum) answers `unavailable` at once instead of holding the
        // request, and the request moves to the next endpoint.
        metadata.addString("true", forKey: Self.requireLeaderKey)
        do {
          // The connection enforces the deadline (not `CallOptions.timeout`, whose cancelled
          // sleep the Swift runtime keeps for the whole timeout: see `withCallDeadline`).
          return try await HTTP2Connection.withCallDeadline(attemptDeadline) {
            try await body(endpoint.client, metadata, .defaults)
          }
        } catch let error as RPCError
          where error.code == .unauthenticated && authenticated && self.auth.isConfigured
          && !reauthenticated
        {
          // The token expired (etcd's simple tokens live --auth-token-ttl): renew it once.
          reauthenticated = true
          self.auth.invalidate(metadata)
          continue
        }
      } catch let error as RPCError {
        let remaining = deadline - ContinuousClock.now
        // An attempt that ran out of its own time (not the request's) moves on as well.
        let attemptTimedOut = error.code == .deadlineExceeded && attemptDeadline < deadline
        if Self.isRetryable(error) || attemptTimedOut, remaining > .zero, !self.isShutDown {
          attempt += 1
          self.failover(from: index)
          self.logger.debug(
            "etcd request retried",
            metadata: [
              "etcd.operation": "\(operation)", "etcd.endpoint": "\(endpoint.address)",
              "etcd.attempt": "\(attempt)", "etcd.error": "\(error.message)",
            ]
          )
          // After trying every endpoint once, back off before the next round.
          if attempt % self.endpoints.count == 0 {
            let delay = min(
              self.config.retryBackoff.delay(attempt: attempt / self.endpoints.count - 1),
              remaining
            )
            try await Task.sleep(for: delay)
          }
          continue
        }
        var etcdError = EtcdError(rpc: error, operation: operation, endpoint: endpoint.address)
        // A request that timed out or found no connection usually failed because the
        // connection could not be made: say why (refused, TLS handshake, ...).
        if error.code == .deadlineExceeded || error.code == .unavailable,
          endpoint.connection.connectivityState != .ready,
          let failure = endpoint.connection.lastConnectionFailure
        {
          etcdError.message +=
            "; the last connection attempt to \(endpoint.address) failed: \(failure.message)"
        }
        throw etcdError
      }
    }
  }

  /// etcd's metadata key for "fail if this member has no leader" (value `true`).
  static let requireLeaderKey = "hasleader"

  /// Closes the connection to the endpoint at `index` (its streams fail and move on) and moves
  /// requests to the next endpoint: the member stopped answering.
  func abandon(endpoint index: Int, reason: String) {
    self.endpoints[index].connection.closeConnections(reason: reason)
    self.failover(from: index)
  }

  static func isRetryable(_ error: RPCError) -> Bool {
    switch error.code {
    case .unavailable:
      return true
    case .unknown:
      // etcd reports a leader change during a request this way; the request was not applied.
      return error.message.contains("leader changed")
    default:
      return false
    }
  }
}

/// Runs an ``EtcdClient`` for the duration of `body` and shuts it down afterwards, whether
/// `body` returns or throws.
public func withEtcdClient<Result: Sendable>(
  config: EtcdClient.Config,
  logger: Logger,
  _ body: (EtcdClient) async throws -> Result
) async throws -> Result {
  let client = try EtcdClient(config: config, logger: logger)
  return try await withThrowingTaskGroup(of: Void.self) { group in
    group.addTask { try await client.run() }
    let result: Result
    do {
      result = try await body(client)
    } catch {
      client.beginGracefulShutdown()
      try? await group.waitForAll()
      throw error
    }
    client.beginGracefulShutdown()
    try await group.waitForAll()
    return result
  }
}

/// One member endpoint: its connection and the gRPC client over it.
final class Endpoint: Sendable {
  let address: String
  let connection: HTTP2Connection
  let client: GRPCClient<HTTP2Connection>

  init(address: String, configuration: EtcdClient.Config, logger: Logger) throws(EtcdError) {
    guard let endpoint = HostPort(address) else {
      throw EtcdError(
        code: .invalidArgument,
        message:
          "etcd endpoint '\(address)' is not host:port (such as 127.0.0.1:2379 or [::1]:2379); drop any http:// scheme"
      )
    }
    self.address = address
    var config = HTTP2Connection.Config.defaults
    config.connectTimeout = configuration.connectTimeout
    config.backoff = .init(
      initial: configuration.retryBackoff.initial,
      maximum: configuration.retryBackoff.maximum,
      multiplier: configuration.retryBackoff.multiplier,
      jitter: configuration.retryBackoff.jitter
    )
    if let interval = configuration.keepaliveInterval {
      // Only while streams are open: etcd counts pings on a connection without streams
      // against its keep-alive policy, and there is nothing to detect there.
      config.keepalive = .init(
        interval: interval,
        timeout: configuration.keepaliveTimeout,
        permitWithoutCalls: false
      )
    }
    // A request waiting on a member that went silent fails as `unavailable` and fails over.
    config.stallDetection = .init(
      silence: configuration.silenceTimeout / 3,
      pingTimeout: configuration.silenceTimeout * 2 / 3,
      closesConnection: true
    )
    config.tls = configuration.tls
    var endpointLogger = logger
    endpointLogger[metadataKey: "etcd.endpoint"] = "\(address)"
    self.connection = HTTP2Connection(
      target: .host(endpoint.host, port: endpoint.port),
      config: config,
      logger: endpointLogger
    )
    self.client = GRPCClient(transport: self.connection)
  }

}

public import GRPCCore
public import Logging
internal import NIOCore
internal import NIOHTTP2
internal import NIOPosix
internal import NIOSSL
import RegistryPrimitives
internal import Synchronization

/// A gRPC client connection to one endpoint over HTTP/2, usable as a grpc-swift-2
/// `ClientTransport`.
///
/// It keeps one HTTP/2 connection open (reconnecting with backoff), survives grpc-go's BDP pings
/// (see ``HTTP2Connection/HTTP2/controlFrameRateLimit``), drains on GOAWAY, and reports its
/// ``ConnectivityState``. RPCs run on a single connection-level channel handler: no child channel
/// per stream.
///
/// ```swift
/// let connection = HTTP2Connection(target: .host("127.0.0.1", port: 2379), logger: logger)
/// try await withGRPCClient(transport: connection) { client in
///   let kv = Etcdserverpb_KV.Client(wrapping: client)
///   …
/// }
/// ```
///
/// `GRPCClient.runConnections()` calls ``connect()``; to use the connection without a
/// `GRPCClient`, run ``connect()`` in a task group and call ``beginGracefulShutdown()`` when done.
public final class HTTP2Connection: ClientTransport, Sendable {
  /// Messages are byte arrays, as generated code and GRPCProtobuf produce them.
  public typealias Bytes = [UInt8]

  /// The endpoint.
  public let target: Target
  /// The configuration.
  public let config: Config
  /// The retry throttle from the service config, if it has one.
  public let retryThrottle: RetryThrottle?

  let logger: Logger
  let group: MultiThreadedEventLoopGroup
  private let authority: String
  private let methodConfigs: [MethodConfig.Name: MethodConfig]
  private let state: Locked<StateMachine>

  /// Creates a connection; nothing happens until ``connect()`` runs.
  ///
  /// - Parameters:
  ///   - target: The endpoint.
  ///   - config: The configuration.
  ///   - logger: Receives connection events (info and below).
  public init(target: Target, config: Config = .defaults, logger: Logger) {
    self.target = target
    self.config = config
    self.logger = logger
    self.group = .singleton
    self.authority =
      config.rpc.authority ?? config.tls?.serverHostname.map { host in
        switch target.kind {
        case .host(_, let port): return "\(host):\(port)"
        case .unixDomainSocket: return host
        }
      } ?? target.defaultAuthority

    var methodConfigs: [MethodConfig.Name: MethodConfig] = [:]
    for methodConfig in config.serviceConfig.methodConfig {
      for name in methodConfig.names {
        methodConfigs[name] = methodConfig
      }
    }
    self.methodConfigs = methodConfigs
    self.retryThrottle = config.serviceConfig.retryThrottling.map { RetryThrottle(policy: $0) }
    self.state = Locked(StateMachine())
  }

  // MARK: - Connectivity

  /// The current connectivity state.
  public var connectivityState: ConnectivityState {
    self.state.withLock { $0.connectivity }
  }

  /// Why the most recent connection attempt failed (refused, TLS handshake, timeout), or `nil`
  /// when the last attempt succeeded. Lets callers explain an RPC that timed out waiting.
  public var lastConnectionFailure: RPCError? {
    self.state.withLock { $0.lastFailure }
  }

  /// The current connectivity state followed by every change, until the connection shuts down.
  ///
  /// Each call returns an independent sequence. A consumer that falls behind sees the most recent
  /// states (up to 32 are buffered).
  public func connectivityStates() -> AsyncStream<ConnectivityState> {
    let (stream, continuation) = AsyncStream.makeStream(
      of: ConnectivityState.self,
      bufferingPolicy: .bufferingNewest(32)
    )
    let id = self.state.withLock { state -> UInt64? in
      // Yielding under the lock orders the current state before any concurrent update.
      continuation.yield(state.connectivity)
      if state.connectivity == .shutdown {
        return nil
      }
      let id = state.makeID()
      state.watchers[id] = continuation
      return id
    }
    if let id {
      continuation.onTermination = { [weak self] _ in
        _ = self?.state.withLock { $0.watchers.removeValue(forKey: id) }
      }
    } else {
      continuation.finish()
    }
    return stream
  }

  /// Starts connecting if the connection is idle after a previous connection was lost or
  /// drained; RPCs do this implicitly. A load balancer calls it for endpoints it wants ready.
  public func requestConnection() {
    let idle = self.state.withLock { state -> Bool in
      guard state.connectivity == .idle, !state.shuttingDown else { return false }
      state.connectRequested = true
      return true
    }
    if idle {
      self.wake()
    }
  }

  /// Closes the open connection (and any draining one) at once: every RPC on it fails with
  /// `unavailable`, and the next RPC connects again.
  ///
  /// For a caller that found the server silent by its own means (the etcd client, when a lease
  /// renewal goes unanswered) and retries elsewhere: the other streams on the silent connection
  /// fail now instead of when a keep-alive PING times out.
  package func closeConnections(reason: String) {
    let channels = self.state.withLock { $0.connections.values.map { $0.connection.channel } }
    guard !channels.isEmpty else { return }
    self.logger.info(
      "Closing the connection",
      metadata: ["grpc.target": "\(self.target)", "grpc.reason": "\(reason)"]
    )
    for channel in channels { channel.close(promise: nil) }
  }

  // MARK: - ClientTransport

  /// Returns the service config's method config for `descriptor`: an exact match, else the
  /// service's default, else the global default.
  public func config(forMethod descriptor: MethodDescriptor) -> MethodConfig? {
    guard !self.methodConfigs.isEmpty else { return nil }
    let service = descriptor.service.fullyQualifiedService
    return self.methodConfigs[MethodConfig.Name(service: service, method: descriptor.method)]
      ?? self.methodConfigs[MethodConfig.Name(service: service, method: "")]
      ?? self.methodConfigs[MethodConfig.Name(service: "", method: "")]
  }

  /// Keeps a connection to the target until ``beginGracefulShutdown()`` (after in-flight RPCs
  /// finish) or until the calling task is cancelled (RPCs fail with `unavailable`).
  ///
  /// Connection attempts that fail are retried after ``Config/backoff``; a connection that is
  /// lost or drained (GOAWAY) is replaced at once.
  ///
  /// - Throws: ``HTTP2ConnectionError`` if called twice or if the TLS configuration is unusable.
  public func connect() async throws {
    let sslContext = try self.config.tls?.makeSSLContext()
    let alreadyStarted = self.state.withLock { state -> Bool in
      if state.started { return true }
      state.started = true
      return false
    }
    if alreadyStarted {
      throw HTTP2ConnectionError(
        code: .alreadyRunning,
        message: "connect() was already called; an HTTP2Connection runs once."
      )
    }

    await withTaskCancellationHandler {
      await self.run(sslContext: sslContext)
    } onCancel: {
      self.shutdown(force: true)
    }
  }

  /// Stops new RPCs (they fail with `failedPrecondition`) and lets ``connect()`` return once the
  /// in-flight ones have finished.
  public func beginGracefulShutdown() {
    self.shutdown(force: false)
  }

  /// Opens an HTTP/2 stream for one RPC and passes it to `closure`; the stream is reset if it is
  /// still open when `closure` returns.
  ///
  /// If the connection is not ready, the call waits while a connection attempt is under way
  /// (or, with `waitForReady`, until one succeeds) within the call's timeout, and fails with
  /// `unavailable` while the connection is in transient failure.
  public func withStream<T: Sendable>(
    descriptor: MethodDescriptor,
    options: CallOptions,
    _ closure: (_ stream: RPCStream<Inbound, Outbound>, _ context: ClientContext) async throws -> T
  ) async throws -> T {
    let deadline = Self.deadline(of: options)
    let connection = try await self.reserveConnection(
      waitForReady: options.waitForReady ?? false,
      timeout: try Self.remaining(until: deadline)
    )
    let timeout: Duration?
    do {
      timeout = try Self.remaining(until: deadline)
    } catch {
      self.releaseConnection(connection)
      throw error
    }

    let stream = ClientStream(
      connection: connection,
      path: "/\(descriptor.service.fullyQualifiedService)/\(descriptor.method)",
      authority: self.authority,
      timeout: timeout,
      maxRequestBytes: options.maxRequestMessageBytes ?? self.config.rpc.maxRequestMessageBytes,
      maxResponseBytes: options.maxResponseMessageBytes ?? self.config.rpc.maxResponseMessageBytes
    )
    // The stream's connection: the one reserved, or the one it moved to (see `move`).
    defer { self.releaseConnection(stream.releaseHome()) }
    defer { stream.close() }

    let rpcStream = RPCStream(
      descriptor: descriptor,
      inbound: RPCAsyncSequence(wrapping: ClientStreamInbound(stream: stream)),
      outbound: RPCWriter.Closable(wrapping: ClientStreamOutbound(stream: stream))
    )
    let context = ClientContext(
      descriptor: descriptor,
      remotePeer: connection.remotePeer,
      localPeer: connection.localPeer
    )

    return try await withTaskCancellationHandler {
      try await closure(rpcStream, context)
    } onCancel: {
      stream.cancel(RPCError(code: .cancelled, message: "The RPC was cancelled."))
    }
  }

  // MARK: - Streams and connections

  func reserveConnection(
    waitForReady: Bool,
    timeout: Duration?
  ) async throws -> ActiveConnection {
    switch self.state.withLock({ $0.reserve(waitForReady: waitForReady) }) {
    case .reserved(let connection):
      return connection
    case .fail(let error):
      throw error
    case .wait(let wakeLoop):
      if wakeLoop {
        self.wake()
      }
      return try await self.waitForConnection(waitForReady: waitForReady, timeout: timeout)
    }
  }

  private func waitForConnection(
    waitForReady: Bool,
    timeout: Duration?
  ) async throws -> ActiveConnection {
    let id = self.state.withLock { $0.makeID() }
    return try await withTaskCancellationHandler {
      try await withCheckedThrowingContinuation { continuation in
        var timer: Scheduled<Void>?
        if let timeout {
          timer = self.group.any().scheduleTask(in: TimeAmount(timeout)) {
            let (waiter, lastFailure) = self.state.withLock {
              ($0.waiters.removeValue(forKey: id), $0.lastFailure)
            }
            // Say why there was no connection (refused, TLS handshake, ...): that is what the
            // reader needs to fix.
            let reason =
              lastFailure.map { " The last connection attempt failed: \($0.message)" } ?? ""
            waiter?.continuation.resume(
              throwing: RPCError(
                code: .deadlineExceeded,
                message:
                  "The RPC's deadline passed while waiting for a connection to \(self.target).\(reason)",
                cause: lastFailure
              )
            )
          }
        }
        let action = self.state.withLock {
          $0.enqueue(
            Waiter(continuation: continuation, waitForReady: waitForReady, timer: timer),
            id: id
          )
        }
        switch action {
        case .reserved(let connection):
          timer?.cancel()
          continuation.resume(returning: connection)
        case .fail(let error):
          timer?.cancel()
          continuation.resume(throwing: error)
        case .wait(let wakeLoop):
          if wakeLoop {
            self.wake()
          }
        }
      }
    } onCancel: {
      let waiter = self.state.withLock { $0.waiters.removeValue(forKey: id) }
      waiter?.timer?.cancel()
      waiter?.continuation.resume(
        throwing: RPCError(
          code: .cancelled,
          message: "The RPC was cancelled while waiting for a connection."
        )
      )
    }
  }

  func releaseConnection(_ connection: ActiveConnection) {
    let close = self.state.withLock { $0.release(connection.id) }
    if close {
      connection.channel.close(promise: nil)
    }
  }

  // MARK: - Connection loop

  private func run(sslContext: NIOSSLContext?) async {
    var backoff = BackoffIterator(self.config.backoff)
    var attempt = 0
    // Connections in a row that the server ended before any RPC could use them.
    var endedBeforeUse = 0

    loop: while true {
      switch self.state.withLock({ $0.nextStep() }) {
      case .stop:
        break loop
      case .waitForDemand:
        await self.park()
        continue loop
      case .connect(let update):
        self.publish(update)
      }
      attempt += 1
      let id = self.state.withLock { $0.startAttempt() }

      do {
        let connection = try await self.establish(id: id, sslContext: sslContext)
        let waiters: [Waiter]
        let update: StateMachine.Update?
        switch self.state.withLock({ $0.ready(connection) }) {
        case .close:
          connection.channel.close(promise: nil)
          break loop
        case .endedBeforeUse:
          // The server's GOAWAY (or close) came between its SETTINGS and this point, e.g. a
          // max-age GOAWAY on a loaded machine: no stream used it, the waiters keep waiting, and
          // the next connection is made now (after a backoff if this keeps happening).
          connection.channel.close(promise: nil)
          endedBeforeUse += 1
          self.logger.debug(
            "Connection ended before its first RPC; connecting again",
            metadata: ["grpc.target": "\(self.target)", "grpc.connect_attempt": "\(attempt)"]
          )
          if endedBeforeUse > 1 {
            await self.sleep(backoff.next())
          }
          continue loop
        case .use(let ready, let readyUpdate):
          waiters = ready
          update = readyUpdate
        }
        for waiter in waiters {
          waiter.timer?.cancel()
          waiter.continuation.resume(returning: connection)
        }
        self.publish(update)
        self.logger.debug(
          "Connected",
          metadata: ["grpc.target": "\(self.target)", "grpc.connect_attempt": "\(attempt)"]
        )
        backoff.reset()
        attempt = 0
        endedBeforeUse = 0

        // Serve until the connection stops taking new streams (lost, GOAWAY, shutdown).
        while self.state.withLock({ $0.isCurrent(connection.id) }) {
          await self.park()
        }
      } catch {
        let reason =
          self.config.tls == nil
          ? nil
          : TLS.explainHandshakeFailure(
            error,
            host: self.config.tls?.serverHostname ?? self.target.host
          )
        let rpcError = RPCError(
          code: .unavailable,
          message: "Could not connect to \(self.target): \(reason ?? "\(error).")",
          cause: error
        )
        let (failed, update) = self.state.withLock { $0.connectFailed(id, rpcError) }
        for waiter in failed {
          waiter.timer?.cancel()
          waiter.continuation.resume(throwing: rpcError)
        }
        self.publish(update)
        let delay = backoff.next()
        self.logger.debug(
          "Connection attempt failed",
          metadata: [
            "grpc.target": "\(self.target)", "grpc.error": "\(error)",
            "grpc.connect_attempt": "\(attempt)", "grpc.backoff": "\(delay)",
          ]
        )
        await self.sleep(delay)
      }
    }

    // Shut down: wait for every channel (draining ones included) to close.
    let channels = self.state.withLock { $0.connections.values.map { $0.connection.channel } }
    for channel in channels {
      try? await channel.closeFuture.get()
    }
    self.finishWatchers()
  }

  /// Sleeps out a backoff; other events (an old connection closing) also wake the loop, so it
  /// parks until the deadline or a shutdown.
  private func sleep(_ delay: Duration) async {
    let until = NIODeadline.now() + TimeAmount(delay)
    let timer = self.group.any().scheduleTask(deadline: until) { self.wake() }
    repeat {
      await self.park()
    } while NIODeadline.now() < until && !self.state.withLock({ $0.shuttingDown })
    timer.cancel()
  }

  /// Connects TCP (and TLS) and waits for the server's SETTINGS, within the connect timeout.
  /// Events from a connection's handler, on its event loop.
  func handle(_ event: ConnectionEvent, connectionID: UInt64) {
    switch event {
    case .draining(let reason):
      self.logger.debug(
        "Connection draining",
        metadata: ["grpc.target": "\(self.target)", "grpc.reason": "\(reason)"]
      )
      let update = self.state.withLock { $0.draining(connectionID) }
      self.publish(update)
      self.wake()
    case .closed(let error):
      self.logger.debug(
        "Connection closed",
        metadata: [
          "grpc.target": "\(self.target)", "grpc.error": "\(error.map { "\($0)" } ?? "none")",
        ]
      )
      let update = self.state.withLock { $0.closed(connectionID) }
      self.publish(update)
      self.wake()
    }
  }

  private func shutdown(force: Bool) {
    let (waiters, channels, update) = self.state.withLock { $0.shutdown(force: force) }
    let error = RPCError(
      code: .failedPrecondition,
      message: "The connection to \(self.target) is shutting down; no new RPCs can start."
    )
    for waiter in waiters {
      waiter.timer?.cancel()
      waiter.continuation.resume(throwing: error)
    }
    for channel in channels {
      channel.close(promise: nil)
    }
    self.publish(update)
    self.wake()
    if !self.state.withLock({ $0.started }) {
      // connect() never ran, so nothing else will end the watchers' sequences.
      self.finishWatchers()
    }
  }

  /// Parks the connection loop until the next ``wake()``, or returns at once for one that came
  /// while it was not parked.
  private func park() async {
    await self.state.park(at: \.loopWakeup) { state in
      defer { state.wakeupPending = false }
      return state.wakeupPending
    }
  }

  private func wake() {
    let waiter = self.state.withLock { state -> CheckedContinuation<Void, Never>? in
      if let waiter = state.loopWakeup.take() { return waiter }
      state.wakeupPending = true
      return nil
    }
    waiter?.resume()
  }

  private func publish(_ update: StateMachine.Update?) {
    guard let update else { return }
    for watcher in update.watchers {
      watcher.yield(update.state)
    }
  }

  private func finishWatchers() {
    let (watchers, update) = self.state.withLock { state in
      let update = state.setConnectivity(.shutdown)
      let watchers = Array(state.watchers.values)
      state.watchers.removeAll()
      return (watchers, update)
    }
    self.publish(update)
    for watcher in watchers {
      watcher.finish()
    }
  }
}

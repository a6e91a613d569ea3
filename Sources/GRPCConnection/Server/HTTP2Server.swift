public import GRPCCore
public import Logging
internal import NIOCore
internal import NIOHTTP2
internal import NIOPosix
internal import NIOSSL
import RegistryPrimitives
internal import Synchronization

/// The project's own gRPC server transport: a grpc-swift-2 `ServerTransport` on one
/// `NIOHTTP2Handler` per connection, without a stream multiplexer or child channels.
///
/// Every `GRPCServer` can serve on it, with its services, interceptors and generated stubs
/// unchanged:
///
/// ```swift
/// let server = GRPCServer(
///   transport: HTTP2Server(host: "0.0.0.0", port: 8080, logger: logger),
///   services: [UserDirectory()]
/// )
/// try await server.serve()
/// ```
///
/// Each connection's frames go to one channel handler that drives a state machine for the
/// connection (GOAWAY, idle and age limits, the client PING and SETTINGS policy) and one per
/// call (request validation, framing, the response's headers, messages and trailers). A call's
/// handler runs in a task of its own (on the connection's event loop when it is the only call
/// there, if ``Config/handlerExecution`` asks for it); the deadline a client sends (`grpc-timeout`), a client's
/// RST_STREAM and the connection's end cancel that task and fire the call's
/// `ServerContext.cancellation`.
///
/// Messages are uncompressed (`identity`): a client that compresses is answered `unimplemented`
/// with `grpc-accept-encoding: identity`, as gRPC specifies.
public final class HTTP2Server: ServerTransport, Sendable {
  public typealias Bytes = [UInt8]

  /// The configuration.
  public let config: Config
  private let host: String
  private let port: Int
  private let group: any EventLoopGroup
  private let logger: Logger
  private let state = Locked(State())

  private struct State {
    enum Phase {
      case idle
      case listening(any Channel)
      case shuttingDown
      case stopped
    }

    var phase = Phase.idle
    var address: Result<ListeningAddress, any Error>?
    var addressWaiters: [CheckedContinuation<ListeningAddress, any Error>] = []
    var connections: [ObjectIdentifier: NIOLoopBound<ServerConnectionHandler>] = [:]
    var runningCalls = 0
    var acceptedConnections = 0
    var finished: CheckedContinuation<Void, Never>?
    var methods: [String: MethodDescriptor] = [:]
    var shutdownRequested = false
    /// Each event loop's place for a handler (`HandlerExecution.eventLoopWhenAlone`).
    var handlerSlots: [ObjectIdentifier: EventLoopHandlerSlot] = [:]

    var isDone: Bool {
      if case .listening = self.phase { return false }
      return self.connections.isEmpty && self.runningCalls == 0
    }
  }

  /// Where the server listens, once bound.
  public struct ListeningAddress: Sendable, Hashable, CustomStringConvertible {
    /// The IP address (`127.0.0.1`, `::1`).
    public var host: String
    /// The port (the one the system chose when the server asked for port 0).
    public var port: Int

    /// `host:port`, the IPv6 host in brackets.
    public var description: String {
      self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)"
    }
  }

  /// Creates a server transport that listens on `host:port` (port 0: any free port) once
  /// `GRPCServer.serve()` runs.
  ///
  /// - Parameters:
  ///   - host: The IP address to bind (`0.0.0.0`, `::`, `127.0.0.1`).
  ///   - port: The port; 0 lets the system choose (read it from ``listeningAddress``).
  ///   - config: Limits, TLS and connection management.
  ///   - logger: Receives connection events (debug) and policy violations (info).
  public init(host: String, port: Int, config: Config = .defaults, logger: Logger) {
    self.host = host
    self.port = port
    self.config = config
    self.group = MultiThreadedEventLoopGroup.singleton
    self.logger = logger
  }

  /// The bound address; waits until the server listens.
  ///
  /// - Throws: The error that stopped the server from listening (the address is in use, the
  ///   TLS files are unreadable), or `CancellationError`.
  public var listeningAddress: ListeningAddress {
    get async throws {
      try await withCheckedThrowingContinuation { continuation in
        let result = self.state.withLock { state -> Result<ListeningAddress, any Error>? in
          if let address = state.address { return address }
          state.addressWaiters.append(continuation)
          return nil
        }
        if let result { continuation.resume(with: result) }
      }
    }
  }

  /// Connections accepted so far (for tests).
  var acceptedConnectionCount: Int {
    self.state.withLock { $0.acceptedConnections }
  }

  /// Connections open now (for tests).
  var openConnectionCount: Int {
    self.state.withLock { $0.connections.count }
  }

  public func configure(context: GRPCServerContext) {
    var byPath: [String: MethodDescriptor] = [:]
    for method in context.methods {
      byPath["/" + method.fullyQualifiedMethod] = method
    }
    self.state.withLock { $0.methods = byPath }
  }

  public func listen(
    streamHandler:
      @escaping @Sendable (
        _ stream: RPCStream<Inbound, Outbound>,
        _ context: ServerContext
      ) async -> Void
  ) async throws {
    let channel: any Channel
    do {
      channel = try await self.bind(streamHandler: streamHandler)
    } catch {
      self.resolveAddress(.failure(error))
      self.state.withLock { $0.phase = .stopped }
      throw error
    }
    let address = ListeningAddress(
      host: channel.localAddress?.ipAddress ?? self.host,
      port: channel.localAddress?.port ?? self.port
    )
    let shutdownEarly = self.state.withLock { state -> Bool in
      if state.shutdownRequested { return true }
      state.phase = .listening(channel)
      return false
    }
    self.resolveAddress(.success(address))
    if shutdownEarly {
      try? await channel.close()
      self.state.withLock { $0.phase = .stopped }
      return
    }
    self.logger.debug("gRPC server listening", metadata: ["grpc.address": "\(address)"])

    await withTaskCancellationHandler {
      await withCheckedContinuation { continuation in
        let done = self.state.withLock { state -> Bool in
          if state.isDone { return true }
          state.finished = continuation
          return false
        }
        if done { continuation.resume() }
      }
    } onCancel: {
      self.stop(graceful: false)
    }
  }

  /// Stops accepting connections, sends every connection GOAWAY, and lets the calls in flight
  /// finish; ``listen(streamHandler:)`` returns when the last one has (or, with
  /// ``Config/maxConnectionAgeGrace``-like ``Config/shutdownGraceTime``, when that time is up).
  public func beginGracefulShutdown() {
    self.stop(graceful: true)
  }

  private func stop(graceful: Bool) {
    let (listener, connections) = self.state.withLock {
      state -> ((any Channel)?, [NIOLoopBound<ServerConnectionHandler>]) in
      state.shutdownRequested = true
      var listener: (any Channel)?
      if case .listening(let channel) = state.phase { listener = channel }
      state.phase = .shuttingDown
      return (listener, Array(state.connections.values))
    }
    listener?.close(promise: nil)
    for connection in connections {
      connection.eventLoop.execute {
        if graceful {
          connection.value.drain(reason: "server shutting down")
        } else {
          connection.value.closeNow()
        }
      }
    }
    self.finishIfDone()
  }

  private func resolveAddress(_ result: Result<ListeningAddress, any Error>) {
    let waiters = self.state.withLock { state in
      state.address = result
      defer { state.addressWaiters = [] }
      return state.addressWaiters
    }
    for waiter in waiters { waiter.resume(with: result) }
  }

  private func finishIfDone() {
    let continuation = self.state.withLock { state -> CheckedContinuation<Void, Never>? in
      guard state.isDone else { return nil }
      if case .shuttingDown = state.phase { state.phase = .stopped }
      defer { state.finished = nil }
      return state.finished
    }
    continuation?.resume()
  }

  // MARK: - Connections

  private func bind(
    streamHandler:
      @escaping @Sendable (RPCStream<Inbound, Outbound>, ServerContext) async -> Void
  ) async throws -> any Channel {
    let sslContext = try self.config.tls.map { try $0.makeSSLContext() }
    let settings = self.config.connectionSettings
    let connectionConfiguration = self.config.http2ConnectionConfiguration
    let streamConfiguration = self.config.http2StreamConfiguration
    let launcher = CallLauncher(server: self, streamHandler: streamHandler)
    let bootstrap = ServerBootstrap(group: self.group)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .serverChannelOption(.backlog, value: 256)
      .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
      .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          try self.configure(
            channel,
            ssl: sslContext,
            settings: settings,
            connectionConfiguration: connectionConfiguration,
            streamConfiguration: streamConfiguration,
            launcher: launcher
          )
        }
      }
    do {
      return try await bootstrap.bind(host: self.host, port: self.port).get()
    } catch {
      throw HTTP2ConnectionError(
        code: .connectFailed,
        message:
          "Could not listen on \(self.host):\(self.port): \(error). Check that the address is local and the port is free.",
        cause: error
      )
    }
  }

  private func configure(
    _ channel: any Channel,
    ssl: NIOSSLContext?,
    settings: ServerConnectionHandler.Settings,
    connectionConfiguration: NIOHTTP2Handler.ConnectionConfiguration,
    streamConfiguration: NIOHTTP2Handler.StreamConfiguration,
    launcher: CallLauncher
  ) throws {
    let pipeline = channel.pipeline.syncOperations
    if let ssl {
      try pipeline.addHandler(NIOSSLServerHandler(context: ssl))
    }
    try pipeline.addHandler(
      NIOHTTP2Handler(
        mode: .server,
        connectionConfiguration: connectionConfiguration,
        streamConfiguration: streamConfiguration
      )
    )
    let peers = Peers(channel: channel)
    let key = ObjectIdentifier(channel)
    let loopBudget = self.config.handlerExecution.eventLoopBudget
    let (methods, slot) = self.state.withLock { state in
      var slot: EventLoopHandlerSlot?
      if let loopBudget {
        let loop = ObjectIdentifier(channel.eventLoop)
        slot =
          state.handlerSlots[loop]
          ?? EventLoopHandlerSlot(eventLoop: channel.eventLoop, budget: TimeAmount(loopBudget))
        state.handlerSlots[loop] = slot
      }
      return (state.methods, slot)
    }
    let handler = ServerConnectionHandler(
      settings: settings,
      knownMethods: methods,
      logger: self.logger,
      handlerSlot: slot,
      launch: { stream, descriptor, slot in
        launcher.launch(stream, descriptor: descriptor, peers: peers, slot: slot)
      },
      onClosed: { [weak self] in
        self?.connectionClosed(key)
      }
    )
    try pipeline.addHandler(handler)
    let refuse = self.state.withLock { state -> Bool in
      switch state.phase {
      case .idle, .listening:
        // `.idle`: accepted between the bind and `listen` recording it.
        break
      case .shuttingDown, .stopped:
        return true
      }
      state.connections[key] = NIOLoopBound(handler, eventLoop: channel.eventLoop)
      state.acceptedConnections += 1
      return false
    }
    if refuse {
      // Accepted while the server was shutting down.
      channel.close(promise: nil)
    }
  }

  private func connectionClosed(_ key: ObjectIdentifier) {
    self.state.withLock { _ = $0.connections.removeValue(forKey: key) }
    self.finishIfDone()
  }

  fileprivate func callStarted() {
    self.state.withLock { $0.runningCalls += 1 }
  }

  fileprivate func callEnded() {
    let check = self.state.withLock { state -> Bool in
      state.runningCalls -= 1
      if case .listening = state.phase { return false }
      return state.runningCalls == 0
    }
    if check { self.finishIfDone() }
  }
}

/// The local and remote address of a connection in grpc's notation.
private struct Peers: Sendable {
  let remote: String
  let local: String

  init(channel: any Channel) {
    self.remote = ActiveConnection.describe(channel.remoteAddress)
    self.local = ActiveConnection.describe(channel.localAddress)
  }
}

/// Starts a task per call that runs the server's stream handler.
private struct CallLauncher: Sendable {
  let server: HTTP2Server
  let streamHandler:
    @Sendable (RPCStream<HTTP2Server.Inbound, HTTP2Server.Outbound>, ServerContext) async -> Void

  /// Runs the call's handler in a task: on `slot`'s event loop (releasing it when the handler
  /// returns) when given one, on the global executor otherwise.
  func launch(
    _ stream: ServerStream,
    descriptor: MethodDescriptor,
    peers: Peers,
    slot: EventLoopHandlerSlot?
  ) {
    let server = self.server
    let streamHandler = self.streamHandler
    server.callStarted()
    let run: @Sendable () async -> Void = {
      await withServerContextRPCCancellationHandle { handle in
        stream.setCancellationHandle(handle)
        let rpc = RPCStream(
          descriptor: descriptor,
          inbound: RPCAsyncSequence<RPCRequestPart<[UInt8]>, any Error>(
            wrapping: ServerStreamInbound(stream: stream)
          ),
          outbound: RPCWriter.Closable(wrapping: ServerStreamOutbound(stream: stream))
        )
        let context = ServerContext(
          descriptor: descriptor,
          remotePeer: peers.remote,
          localPeer: peers.local,
          cancellation: handle
        )
        await streamHandler(rpc, context)
      }
      server.callEnded()
    }
    let task: Task<Void, Never>
    if let slot {
      task = Task(executorPreference: slot) {
        await run()
        slot.release()
      }
    } else {
      task = Task { await run() }
    }
    stream.attach(task)
  }
}

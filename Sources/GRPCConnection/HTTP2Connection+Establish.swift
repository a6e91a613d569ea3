internal import GRPCCore
internal import NIOCore
internal import NIOHTTP2
internal import NIOPosix
internal import NIOSSL

extension HTTP2Connection {
  /// Opens one connection: TCP (or a Unix domain socket), TLS if configured, HTTP/2 with the
  /// project's ``ConnectionHandler``; returns once the server's SETTINGS arrived, or throws
  /// (connect failure, the connect timeout, a connection closed before its SETTINGS).
  func establish(id: UInt64, sslContext: NIOSSLContext?) async throws -> ActiveConnection {
    let eventLoop = self.group.next()
    let deadline = NIODeadline.now() + TimeAmount(self.config.connectTimeout)
    let readyPromise = eventLoop.makePromise(of: NIOLoopBound<ConnectionHandler>.self)
    let settings = ConnectionHandler.Settings(
      streamWindowSize: self.config.http2.streamWindowSize,
      connectionWindowSize: self.config.http2.connectionWindowSize,
      keepalive: self.config.keepalive,
      stallDetection: self.config.stallDetection
    )
    let connectionConfiguration = self.config.nioConnectionConfiguration
    let streamConfiguration = self.config.nioStreamConfiguration
    let serverHostname = self.config.tls?.serverHostname ?? self.target.host
    let logger = self.logger
    let onEvent: @Sendable (ConnectionEvent) -> Void = { [weak self] event in
      self?.handle(event, connectionID: id)
    }

    let bootstrap = ClientBootstrap(group: eventLoop)
      .connectTimeout(TimeAmount(self.config.connectTimeout))
      .channelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          let sync = channel.pipeline.syncOperations
          if let sslContext {
            // SNI must not be an IP address.
            let sni = serverHostname.flatMap {
              (try? SocketAddress(ipAddress: $0, port: 0)) == nil ? $0 : nil
            }
            try sync.addHandler(NIOSSLClientHandler(context: sslContext, serverHostname: sni))
          }
          try sync.addHandler(
            NIOHTTP2Handler(
              mode: .client,
              connectionConfiguration: connectionConfiguration,
              streamConfiguration: streamConfiguration
            )
          )
          try sync.addHandler(
            ConnectionHandler(
              settings: settings,
              readyPromise: readyPromise,
              logger: logger,
              onEvent: onEvent
            )
          )
        }
      }

    let channel: any Channel
    do {
      switch self.target.kind {
      case .host(let host, let port):
        channel = try await bootstrap.connect(host: host, port: port).get()
      case .unixDomainSocket(let path):
        channel = try await bootstrap.connect(unixDomainSocketPath: path).get()
      }
    } catch {
      readyPromise.fail(error)
      throw error
    }

    let timeout = eventLoop.scheduleTask(deadline: deadline) {
      readyPromise.fail(
        HTTP2ConnectionError(
          code: .connectFailed,
          message:
            "The server did not complete the TLS/HTTP/2 handshake within the connect timeout."
        )
      )
    }
    // The handler comes with the SETTINGS, not from the pipeline afterwards: a connection the
    // server closes right after its SETTINGS has an empty pipeline by then.
    let handler: NIOLoopBound<ConnectionHandler>
    do {
      handler = try await readyPromise.futureResult.get()
      timeout.cancel()
    } catch {
      timeout.cancel()
      channel.close(promise: nil)
      throw error
    }

    return ActiveConnection(
      id: id,
      channel: channel,
      handler: handler,
      scheme: sslContext == nil ? "http" : "https",
      streamWindowSize: self.config.http2.streamWindowSize,
      onRefusedStream: { [weak self] stream in self?.move(stream) }
    )
  }

  /// A stream its connection could not open (closed, or draining after a GOAWAY) before
  /// anything was sent: it goes to the next connection, as grpc's transparent retry does.
  func move(_ stream: ClientStream) {
    Task {
      let old = stream.connection
      do {
        let next = try await self.reserveConnection(waitForReady: false, timeout: stream.timeout)
        if stream.moved(to: next) {
          self.releaseConnection(old)
        } else {
          // The caller finished meanwhile and gave back `old` itself.
          self.releaseConnection(next)
        }
      } catch {
        // `old` stays the stream's: the caller gives it back.
        stream.fail(
          error as? RPCError
            ?? RPCError(code: .unavailable, message: "No connection for the RPC.", cause: error)
        )
      }
    }
  }
}

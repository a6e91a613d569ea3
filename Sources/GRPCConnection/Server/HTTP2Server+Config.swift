internal import NIOCore
internal import NIOHTTP2
internal import NIOSSL

extension HTTP2Server {
  /// What an ``HTTP2Server`` allows and enforces.
  public struct Config: Sendable {
    /// The largest request message accepted; a larger one ends the call with
    /// `resourceExhausted`. 4 MiB, as grpc.
    public var maxRequestMessageBytes: Int

    /// Calls one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS); a client
    /// queues the rest. With ``streamWindowSize`` it bounds the request data a connection can
    /// make the server hold: 256 x 256 KiB = 64 MiB by default.
    public var maxConcurrentStreams: Int

    /// The receive window of each call: request data the client may send ahead of the handler
    /// reading it.
    public var streamWindowSize: Int

    /// The receive window of the connection.
    public var connectionWindowSize: Int

    /// The largest header block a client may send (SETTINGS_MAX_HEADER_LIST_SIZE).
    public var maxHeaderListSize: Int

    /// How often a client may PING (grpc's keepalive enforcement). A client that pings sooner
    /// more than twice gets GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings") and is disconnected,
    /// except that a ping that follows response data the server sent is always allowed: the
    /// bandwidth probes grpc-go clients send with nearly every response never count.
    public var minClientPingInterval: Duration

    /// Whether clients may ping (at ``minClientPingInterval``) with no call in flight.
    public var permitClientPingsWithoutCalls: Bool

    /// A connection with no call for this long is closed with a graceful GOAWAY; `nil`: never.
    public var maxConnectionIdle: Duration?

    /// A connection is drained with a graceful GOAWAY after this long (plus up to 10% jitter);
    /// `nil`: never. Makes long-lived clients re-resolve and rebalance.
    public var maxConnectionAge: Duration?

    /// How long calls may run after a GOAWAY (graceful shutdown, maximum age or idle) before
    /// the connection is closed under them; `nil`: as long as they take.
    public var shutdownGraceTime: Duration?

    /// TLS; `nil` serves plaintext HTTP/2.
    public var tls: TLS?

    /// RST_STREAM frames a client may send per window before the connection is closed
    /// (the HTTP/2 rapid-reset attack, CVE-2023-44487). The same limit applies to the streams
    /// it opens with a malformed request header block, which the server resets.
    public var maxResetsPerWindow: Int
    public var resetWindow: Duration

    /// Where call handlers run; ``HandlerExecution/eventLoopWhenAlone`` by default.
    public var handlerExecution: HandlerExecution = .eventLoopWhenAlone

    public init(
      maxRequestMessageBytes: Int,
      maxConcurrentStreams: Int,
      streamWindowSize: Int,
      connectionWindowSize: Int,
      maxHeaderListSize: Int,
      minClientPingInterval: Duration,
      permitClientPingsWithoutCalls: Bool,
      maxConnectionIdle: Duration?,
      maxConnectionAge: Duration?,
      shutdownGraceTime: Duration?,
      tls: TLS?,
      maxResetsPerWindow: Int,
      resetWindow: Duration
    ) {
      self.maxRequestMessageBytes = maxRequestMessageBytes
      self.maxConcurrentStreams = maxConcurrentStreams
      self.streamWindowSize = streamWindowSize
      self.connectionWindowSize = connectionWindowSize
      self.maxHeaderListSize = maxHeaderListSize
      self.minClientPingInterval = minClientPingInterval
      self.permitClientPingsWithoutCalls = permitClientPingsWithoutCalls
      self.maxConnectionIdle = maxConnectionIdle
      self.maxConnectionAge = maxConnectionAge
      self.shutdownGraceTime = shutdownGraceTime
      self.tls = tls
      self.maxResetsPerWindow = maxResetsPerWindow
      self.resetWindow = resetWindow
    }

    /// 4 MiB messages, 256 concurrent calls per connection, 256 KiB call and 4 MiB connection
    /// windows, 16 KiB header blocks, client pings at most every 5 minutes (grpc's default)
    /// besides those after responses, no idle or age limit, no grace limit, plaintext, 1,000
    /// resets per 10 seconds.
    public static var defaults: Self {
      Self(
        maxRequestMessageBytes: 4 * 1024 * 1024,
        maxConcurrentStreams: 256,
        streamWindowSize: 256 * 1024,
        connectionWindowSize: 4 * 1024 * 1024,
        maxHeaderListSize: 16 * 1024,
        minClientPingInterval: .seconds(300),
        permitClientPingsWithoutCalls: false,
        maxConnectionIdle: nil,
        maxConnectionAge: nil,
        shutdownGraceTime: nil,
        tls: nil,
        maxResetsPerWindow: 1000,
        resetWindow: .seconds(10)
      )
    }

    /// The defaults, changed by `configure`.
    public static func defaults(_ configure: (inout Self) -> Void) -> Self {
      var config = Self.defaults
      configure(&config)
      return config
    }

    var connectionSettings: ServerConnectionHandler.Settings {
      var policy = ServerConnectionStateMachine.Policy()
      policy.minPingInterval = TimeAmount(self.minClientPingInterval)
      policy.permitPingsWithoutCalls = self.permitClientPingsWithoutCalls
      policy.maxMalformedStreamsPerWindow = self.maxResetsPerWindow
      policy.malformedStreamWindow = TimeAmount(self.resetWindow)
      return ServerConnectionHandler.Settings(
        maxRequestBytes: self.maxRequestMessageBytes,
        streamWindowSize: self.streamWindowSize,
        connectionWindowSize: self.connectionWindowSize,
        policy: policy,
        maxIdleTime: self.maxConnectionIdle.map { TimeAmount($0) },
        maxAge: self.maxConnectionAge.map { TimeAmount($0) },
        maxGraceTime: self.shutdownGraceTime.map { TimeAmount($0) }
      )
    }

    var http2ConnectionConfiguration: NIOHTTP2Handler.ConnectionConfiguration {
      var configuration = NIOHTTP2Handler.ConnectionConfiguration()
      configuration.initialSettings = [
        HTTP2Setting(parameter: .maxConcurrentStreams, value: self.maxConcurrentStreams),
        HTTP2Setting(
          parameter: .initialWindowSize,
          value: min(self.streamWindowSize, Int(Int32.max))
        ),
        HTTP2Setting(parameter: .maxHeaderListSize, value: self.maxHeaderListSize),
      ]
      configuration.targetWindowSize = self.connectionWindowSize
      // PINGs and SETTINGS are policed by the connection's state machine (grpc's rules, which
      // allow a PING after every response); swift-nio-http2's own count, which does not know
      // about responses, only stops floods of the other control frames.
      var controlFrames = NIOHTTP2Handler.ControlFrameRateLimitConfiguration()
      controlFrames.maximumCount = 10_000
      controlFrames.windowLength = .seconds(1)
      configuration.controlFrameRateLimit = controlFrames
      configuration.maximumRecentlyResetStreams = 1024
      // Request header blocks are checked once each by ServerStreamStateMachine (HeaderBlock,
      // the same rules), and the blocks the server sends are built from checked parts.
      configuration.headerBlockValidation = .disabled
      return configuration
    }

    var http2StreamConfiguration: NIOHTTP2Handler.StreamConfiguration {
      var configuration = NIOHTTP2Handler.StreamConfiguration()
      configuration.targetWindowSize = self.streamWindowSize
      var resets = NIOHTTP2Handler.StreamResetFrameRateLimitConfiguration()
      resets.maximumCount = self.maxResetsPerWindow
      resets.windowLength = TimeAmount(self.resetWindow)
      configuration.streamResetFrameRateLimit = resets
      var errors = NIOHTTP2Handler.StreamErrorRateLimitConfiguration()
      errors.maximumCount = self.maxResetsPerWindow
      errors.windowLength = TimeAmount(self.resetWindow)
      configuration.streamErrorRateLimit = errors
      return configuration
    }
  }

  /// Where an ``HTTP2Server`` runs call handlers.
  ///
  /// A handler on Swift concurrency's global executor costs a call two thread hand-offs: from
  /// the connection's event loop, which read the request, to a pool thread, and back for the
  /// response. For a client that makes one call at a time those hand-offs are most of the time
  /// the server adds: with ``eventLoopWhenAlone`` a grpc-go client making one call at a time got
  /// 32–58 % more calls/s and the server spent 18–34 % less CPU per call (BENCHMARKS.md,
  /// "Handlers on the event loop"). With calls in parallel the pool's threads are worth more
  /// than the hand-offs, so those handlers stay there.
  ///
  /// ``eventLoopWhenAlone`` is the default. Choose ``concurrencyPool`` for services whose
  /// handlers block their thread (synchronous file or database calls, locks held for long):
  /// such a handler, run on a loop, holds up every connection on that loop until it returns.
  public struct HandlerExecution: Sendable, Hashable, CustomStringConvertible {
    private enum Place: Hashable {
      case pool
      case eventLoopWhenAlone(budget: Duration)
    }
    private let place: Place

    /// Every handler runs on Swift concurrency's global executor.
    public static let concurrencyPool = Self(place: .pool)

    /// The default: ``eventLoopWhenAlone(budget:)`` with a budget of 1 ms. A unary handler takes
    /// tens of microseconds; a loop's other connections wait about a millisecond behind the
    /// writes of one large response anyway.
    public static let eventLoopWhenAlone = Self.eventLoopWhenAlone(budget: .milliseconds(1))

    /// A call that is the only one open on its connection runs its handler on the connection's
    /// event loop, if no other handler runs on that loop this way; every other call runs on
    /// Swift concurrency's global executor. Child tasks of such a handler run on the loop too.
    ///
    /// A handler on the loop holds up the reads and writes of every connection on that loop for
    /// as long as it runs without suspending, so its time there is bounded: once it has run for
    /// longer than `budget` in one stretch (computing, or writing a long response without ever
    /// waiting for the client), it moves to the global executor for the rest of the call. The
    /// stretch that goes over is not interrupted (a handler that blocks its thread for a second
    /// holds the loop for that second), so handlers that block their thread belong on the pool.
    ///
    /// For services whose clients mostly make one call at a time. Each suspension of such a
    /// handler (a child task, a read, a deadline timer) waits its turn in the loop's queue behind
    /// the loop's I/O.
    public static func eventLoopWhenAlone(budget: Duration) -> Self {
      Self(place: .eventLoopWhenAlone(budget: max(budget, .zero)))
    }

    /// How long a handler may run on the loop in one stretch; `nil`: handlers run on the pool.
    var eventLoopBudget: Duration? {
      switch self.place {
      case .pool: nil
      case .eventLoopWhenAlone(let budget): budget
      }
    }

    public var description: String {
      switch self.place {
      case .pool: "concurrencyPool"
      case .eventLoopWhenAlone(let budget): "eventLoopWhenAlone(budget: \(budget))"
      }
    }
  }

  /// TLS for an ``HTTP2Server``: the certificate it presents and, for mutual TLS, the CAs that
  /// must have signed the clients' certificates.
  public struct TLS: Sendable, Hashable {
    /// The server's certificate chain (PEM, leaf first).
    public var certificateChain: HTTP2Connection.PEMSource
    /// The private key of the leaf certificate (PEM).
    public var privateKey: HTTP2Connection.PEMSource
    /// The CA certificates that client certificates must chain to; when set, every client must
    /// present a certificate signed by one of them (mutual TLS) or its connection is refused.
    /// `nil` asks for no client certificate.
    public var clientTrustRoots: HTTP2Connection.PEMSource?

    /// Creates TLS settings; `clientTrustRoots` non-`nil` requires client certificates.
    public init(
      certificateChain: HTTP2Connection.PEMSource,
      privateKey: HTTP2Connection.PEMSource,
      clientTrustRoots: HTTP2Connection.PEMSource? = nil
    ) {
      self.certificateChain = certificateChain
      self.privateKey = privateKey
      self.clientTrustRoots = clientTrustRoots
    }

    /// TLS with the server's certificate; clients are not asked for one.
    public static func tls(
      certificateChain: HTTP2Connection.PEMSource,
      privateKey: HTTP2Connection.PEMSource
    ) -> Self {
      Self(certificateChain: certificateChain, privateKey: privateKey)
    }

    /// Mutual TLS: the server's certificate, and every client must present a certificate signed
    /// by a CA in `clientTrustRoots`.
    public static func mutualTLS(
      certificateChain: HTTP2Connection.PEMSource,
      privateKey: HTTP2Connection.PEMSource,
      clientTrustRoots: HTTP2Connection.PEMSource
    ) -> Self {
      Self(
        certificateChain: certificateChain,
        privateKey: privateKey,
        clientTrustRoots: clientTrustRoots
      )
    }

    func makeSSLContext() throws -> NIOSSLContext {
      let chain = try HTTP2Connection.TLS.certificates(
        from: self.certificateChain,
        what: "server certificate chain"
      )
      let key = try HTTP2Connection.TLS.privateKey(from: self.privateKey)
      var configuration = TLSConfiguration.makeServerConfiguration(
        certificateChain: chain.map { .certificate($0) },
        privateKey: .privateKey(key)
      )
      configuration.applicationProtocols = ["h2"]
      configuration.minimumTLSVersion = .tlsv12
      if let roots = self.clientTrustRoots {
        configuration.trustRoots = .certificates(
          try HTTP2Connection.TLS.certificates(from: roots, what: "client trust roots")
        )
        // Client certificates name the client, not the address it connects from.
        configuration.certificateVerification = .noHostnameVerification
      } else {
        configuration.certificateVerification = .none
      }
      do {
        return try NIOSSLContext(configuration: configuration)
      } catch {
        throw HTTP2ConnectionError(
          code: .invalidConfiguration,
          message: "Could not create the server's TLS context: \(error).",
          cause: error
        )
      }
    }
  }
}

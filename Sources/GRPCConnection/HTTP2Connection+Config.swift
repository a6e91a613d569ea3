public import GRPCCore
internal import NIOCore
internal import NIOHTTP2

extension HTTP2Connection {
  /// Configuration of an ``HTTP2Connection``.
  ///
  /// Start from ``defaults`` and change what you need:
  ///
  /// ```swift
  /// let config = HTTP2Connection.Config.defaults {
  ///   $0.keepalive = .init(interval: .seconds(30), timeout: .seconds(10))
  ///   $0.tls = .defaults { $0.trustRoots = .certificates(.file(path: "ca.pem")) }
  /// }
  /// ```
  public struct Config: Sendable {
    /// How long establishing a connection (TCP, TLS and the HTTP/2 preface) may take before the
    /// attempt fails and is retried after a backoff.
    public var connectTimeout: Duration

    /// The delays between failed connection attempts.
    public var backoff: Backoff

    /// Client keep-alive pings; `nil` (the default, like grpc) sends none.
    public var keepalive: Keepalive?

    /// HTTP/2 settings and DoS limits.
    public var http2: HTTP2

    /// Per-RPC limits and headers.
    public var rpc: RPC

    /// TLS; `nil` means plaintext HTTP/2 ("h2c").
    public var tls: TLS?

    /// The service config whose method configs (timeouts, retry and hedging policies) and retry
    /// throttling the `GRPCClient` applies to calls on this connection.
    public var serviceConfig: ServiceConfig

    /// Detection of a server that stopped answering (hung, or stopped with SIGSTOP) while calls
    /// wait for it; `nil` (the default) disables it. See ``StallDetection``.
    public var stallDetection: StallDetection?

    /// Creates a configuration.
    public init(
      connectTimeout: Duration,
      backoff: Backoff,
      keepalive: Keepalive?,
      http2: HTTP2,
      rpc: RPC,
      tls: TLS?,
      serviceConfig: ServiceConfig,
      stallDetection: StallDetection? = nil
    ) {
      self.connectTimeout = connectTimeout
      self.backoff = backoff
      self.keepalive = keepalive
      self.http2 = http2
      self.rpc = rpc
      self.tls = tls
      self.serviceConfig = serviceConfig
      self.stallDetection = stallDetection
    }

    /// Plaintext, 20 s connect timeout, grpc's backoff, no keep-alive, large flow-control windows
    /// and a control-frame limit that tolerates grpc-go's BDP pings.
    public static var defaults: Self {
      Self(
        connectTimeout: .seconds(20),
        backoff: .defaults,
        keepalive: nil,
        http2: .defaults,
        rpc: .defaults,
        tls: nil,
        serviceConfig: ServiceConfig()
      )
    }

    /// The defaults, modified by `configure`.
    public static func defaults(_ configure: (inout Self) -> Void) -> Self {
      var config = Self.defaults
      configure(&config)
      return config
    }
  }

  /// Exponential backoff with jitter between connection attempts (grpc's connection-backoff).
  public struct Backoff: Sendable, Hashable {
    /// The delay after the first failed attempt.
    public var initial: Duration
    /// The largest delay.
    public var maximum: Duration
    /// The factor applied to the delay after each failed attempt.
    public var multiplier: Double
    /// The random spread applied to each delay, as a fraction of it (0.2 means ±20 %).
    public var jitter: Double

    /// Creates a backoff policy.
    public init(initial: Duration, maximum: Duration, multiplier: Double, jitter: Double) {
      self.initial = initial
      self.maximum = maximum
      self.multiplier = multiplier
      self.jitter = jitter
    }

    /// 1 s initial, 120 s max, ×1.6, ±20 % (grpc's defaults).
    public static var defaults: Self {
      Self(initial: .seconds(1), maximum: .seconds(120), multiplier: 1.6, jitter: 0.2)
    }

    /// The delay before retry `attempt` (0-based): `initial × multiplier^attempt`, at most
    /// `maximum`, spread by `jitter`.
    public func delay(attempt: Int) -> Duration {
      var base = self.initial
      for _ in 0 ..< max(0, attempt) {
        if base >= self.maximum { break }
        base = base * self.multiplier
      }
      let jitter = min(max(self.jitter, 0), 1)
      return min(base, self.maximum) * Double.random(in: (1 - jitter) ... (1 + jitter))
    }
  }

  /// Client keep-alive: a PING after `interval` without any frame from the server; the
  /// connection is closed (and re-established) when its ACK does not arrive within `timeout`.
  ///
  /// grpc-go servers reject pings more frequent than their enforcement policy allows (5 min by
  /// default, `--grpc-keepalive-min-time` 5 s for etcd) with GOAWAY `too_many_pings`.
  public struct Keepalive: Sendable, Hashable {
    /// The idle time after which a PING is sent.
    public var interval: Duration
    /// How long to wait for the PING's ACK.
    public var timeout: Duration
    /// Whether to ping when no RPC is open.
    public var permitWithoutCalls: Bool

    /// Creates a keep-alive policy.
    public init(
      interval: Duration,
      timeout: Duration = .seconds(20),
      permitWithoutCalls: Bool = false
    ) {
      self.interval = interval
      self.timeout = timeout
      self.permitWithoutCalls = permitWithoutCalls
    }
  }

  /// Detection of a server that stopped answering while calls wait for it.
  ///
  /// When a call has been waiting for the server's response headers and nothing at all has
  /// arrived on the connection for ``silence``, the connection sends one PING. A live server
  /// acknowledges it at once, however slow its handlers are; a hung one (deadlocked, or stopped
  /// with SIGSTOP) does not. Without an ACK within ``pingTimeout`` the connection stops taking
  /// new calls and drains: the calls already sent keep waiting (they finish if the server
  /// resumes, or fail by their deadline), its ``HTTP2Connection/connectivityState`` leaves
  /// `ready`, and a load balancer routes elsewhere. A new connection is made when one is asked
  /// for.
  ///
  /// After an acknowledged PING the next one waits until the server has sent headers or data
  /// again, so a slow but live server gets at most one PING per silent period: grpc-go servers
  /// count PINGs between their own writes against their keep-alive policy (GOAWAY
  /// `too_many_pings` after three), and this never reaches that.
  public struct StallDetection: Sendable, Hashable {
    /// How long the connection must be silent, with a call waiting for headers, before a PING.
    public var silence: Duration
    /// How long the PING's ACK may take before the server counts as unresponsive.
    public var pingTimeout: Duration
    /// Whether an unanswered PING closes the connection at once, failing every call on it with
    /// `unavailable`, instead of draining it (the default). For a client that retries such
    /// calls on another server and should not wait for their deadlines: the etcd client fails
    /// over to the next member this way.
    public var closesConnection: Bool

    /// Creates a stall detection policy.
    public init(
      silence: Duration = .milliseconds(100),
      pingTimeout: Duration = .milliseconds(300),
      closesConnection: Bool = false
    ) {
      self.silence = silence
      self.pingTimeout = pingTimeout
      self.closesConnection = closesConnection
    }
  }

  /// A limit of `maximumCount` events per sliding `window`.
  public struct RateLimit: Sendable, Hashable {
    /// The number of events permitted within `window`.
    public var maximumCount: Int
    /// The sliding window.
    public var window: Duration

    /// Creates a rate limit.
    public init(maximumCount: Int, window: Duration) {
      self.maximumCount = maximumCount
      self.window = window
    }
  }

  /// HTTP/2 settings and the denial-of-service limits applied to the server's frames.
  public struct HTTP2: Sendable, Hashable {
    /// The per-stream receive window (SETTINGS_INITIAL_WINDOW_SIZE); also the amount of
    /// unread response data buffered per stream before the server is made to wait.
    public var streamWindowSize: Int

    /// The connection-level receive window.
    public var connectionWindowSize: Int

    /// The largest frame the server may send (SETTINGS_MAX_FRAME_SIZE).
    public var maxFrameSize: Int

    /// The largest header block the server may send (SETTINGS_MAX_HEADER_LIST_SIZE).
    public var maxHeaderListSize: Int

    /// Inbound PING, SETTINGS and PRIORITY frames permitted per window before the connection is
    /// closed with ENHANCE_YOUR_CALM.
    ///
    /// swift-nio-http2 defaults to 200 per 30 s, which grpc-go servers (etcd) exceed after ~200
    /// calls: their BDP estimator sends a PING with nearly every response. A BDP estimator keeps
    /// at most one PING outstanding, so its rate is bounded by the call rate; the default here
    /// (2,000 per 100 ms, i.e. 20,000/s sustained) is above any realistic call rate on one
    /// connection yet stops a flood (a peer can send millions of PINGs per second) within
    /// 100 ms. A short window also keeps the limiter's timestamp buffer small (16 KB).
    public var controlFrameRateLimit: RateLimit

    /// Inbound RST_STREAM frames permitted per window (swift-nio-http2 default: 200 per 30 s).
    /// grpc-go resets streams it finished or timed out, so this is raised like the control
    /// frame limit.
    public var resetFrameRateLimit: RateLimit

    /// Creates HTTP/2 settings.
    public init(
      streamWindowSize: Int,
      connectionWindowSize: Int,
      maxFrameSize: Int,
      maxHeaderListSize: Int,
      controlFrameRateLimit: RateLimit,
      resetFrameRateLimit: RateLimit
    ) {
      self.streamWindowSize = streamWindowSize
      self.connectionWindowSize = connectionWindowSize
      self.maxFrameSize = maxFrameSize
      self.maxHeaderListSize = maxHeaderListSize
      self.controlFrameRateLimit = controlFrameRateLimit
      self.resetFrameRateLimit = resetFrameRateLimit
    }

    /// 4 MiB stream window, 8 MiB connection window, 16 KiB frames, 64 KiB header lists,
    /// 2,000 control frames and 2,000 resets per 100 ms.
    public static var defaults: Self {
      Self(
        streamWindowSize: 4 * 1024 * 1024,
        connectionWindowSize: 8 * 1024 * 1024,
        maxFrameSize: 1 << 14,
        maxHeaderListSize: 64 * 1024,
        controlFrameRateLimit: RateLimit(maximumCount: 2000, window: .milliseconds(100)),
        resetFrameRateLimit: RateLimit(maximumCount: 2000, window: .milliseconds(100))
      )
    }
  }

  /// Per-RPC limits and headers.
  public struct RPC: Sendable, Hashable {
    /// The largest request message; larger ones fail the RPC with `resourceExhausted`.
    /// `CallOptions.maxRequestMessageBytes` overrides it per call.
    public var maxRequestMessageBytes: Int

    /// The largest response message; larger ones fail the RPC with `resourceExhausted`.
    /// `CallOptions.maxResponseMessageBytes` overrides it per call.
    public var maxResponseMessageBytes: Int

    /// The `:authority` of requests; `nil` uses the TLS server hostname if set, else the
    /// target's `host:port`.
    public var authority: String?

    /// Creates RPC settings.
    public init(maxRequestMessageBytes: Int, maxResponseMessageBytes: Int, authority: String?) {
      self.maxRequestMessageBytes = maxRequestMessageBytes
      self.maxResponseMessageBytes = maxResponseMessageBytes
      self.authority = authority
    }

    /// 2 GiB - 1 requests, 4 MiB responses (grpc's defaults), authority from the target.
    public static var defaults: Self {
      Self(
        maxRequestMessageBytes: Int(Int32.max),
        maxResponseMessageBytes: 4 * 1024 * 1024,
        authority: nil
      )
    }
  }
}

extension HTTP2Connection.Config {
  /// swift-nio-http2's connection settings for this configuration.
  var nioConnectionConfiguration: NIOHTTP2Handler.ConnectionConfiguration {
    var configuration = NIOHTTP2Handler.ConnectionConfiguration()
    configuration.initialSettings = [
      HTTP2Setting(parameter: .enablePush, value: 0),
      HTTP2Setting(
        parameter: .initialWindowSize,
        value: min(self.http2.streamWindowSize, Int(Int32.max))
      ),
      HTTP2Setting(parameter: .maxFrameSize, value: self.http2.maxFrameSize),
      HTTP2Setting(parameter: .maxHeaderListSize, value: self.http2.maxHeaderListSize),
    ]
    configuration.targetWindowSize = self.http2.connectionWindowSize
    // The client checks header blocks itself, what it sends as it builds them
    // (GRPCWire.makeRequestHeaders) and what servers send once per block
    // (`HeaderBlock`, the same rules). NIOHTTP2Handler's validation of both directions cost
    // about 12 % of a call's CPU at 64 in flight (BENCHMARKS.md).
    configuration.headerBlockValidation = .disabled
    // Frames for streams this client reset recently are dropped silently; beyond this many they
    // count as stream errors. Cancellation-heavy loads reset many streams, so keep more (4 B each).
    configuration.maximumRecentlyResetStreams = 1024
    // Glitches (stream errors) are counted over the connection's whole life; a long-lived
    // connection to a server would eventually hit swift-nio-http2's default of 200.
    configuration.maximumConnectionGlitches = 10_000
    var controlFrames = NIOHTTP2Handler.ControlFrameRateLimitConfiguration()
    controlFrames.maximumCount = self.http2.controlFrameRateLimit.maximumCount
    controlFrames.windowLength = TimeAmount(self.http2.controlFrameRateLimit.window)
    configuration.controlFrameRateLimit = controlFrames
    return configuration
  }

  /// swift-nio-http2's per-stream settings for this configuration.
  var nioStreamConfiguration: NIOHTTP2Handler.StreamConfiguration {
    var configuration = NIOHTTP2Handler.StreamConfiguration()
    configuration.targetWindowSize = self.http2.streamWindowSize
    var resets = NIOHTTP2Handler.StreamResetFrameRateLimitConfiguration()
    resets.maximumCount = self.http2.resetFrameRateLimit.maximumCount
    resets.windowLength = TimeAmount(self.http2.resetFrameRateLimit.window)
    configuration.streamResetFrameRateLimit = resets
    var streamErrors = NIOHTTP2Handler.StreamErrorRateLimitConfiguration()
    streamErrors.maximumCount = resets.maximumCount
    streamErrors.windowLength = resets.windowLength
    configuration.streamErrorRateLimit = streamErrors
    return configuration
  }
}

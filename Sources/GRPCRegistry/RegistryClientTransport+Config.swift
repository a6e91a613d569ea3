public import CoreMetrics
public import GRPCConnection
public import GRPCCore

extension RegistryClientTransport {
  /// Configuration of a ``RegistryClientTransport``.
  ///
  /// ```swift
  /// let config = RegistryClientTransport.Config.defaults {
  ///   $0.loadBalancing = .powerOfTwoChoices
  ///   $0.outlierDetection.consecutiveFailures = 3
  /// }
  /// ```
  public struct Config: Sendable {
    /// How an instance is picked among the eligible ones.
    public var loadBalancing: LoadBalancingPolicy
    /// The connection opened to each instance.
    public var connection: InstanceConnectionKind
    /// Watching each instance's `grpc.health.v1.Health` service; `nil` disables it.
    public var healthChecking: HealthChecking?
    /// Ejecting instances whose calls keep failing.
    public var outlierDetection: OutlierDetection
    /// How many instances one call may try when its stream cannot start (at least 1).
    public var maxStreamStartAttempts: Int
    /// How long a call waits for the registry's first answer before failing with `unavailable`
    /// (a call's own deadline, if shorter, wins).
    public var resolutionTimeout: Duration
    /// The delays between attempts to re-subscribe to the registry after its watch failed.
    public var registryBackoff: HTTP2Connection.Backoff
    /// The service config whose method configs (timeouts, retries) apply to calls.
    public var serviceConfig: ServiceConfig
    /// Where the transport's metrics go: calls per instance, fail-overs, ejections and
    /// re-admissions (names in ``RegistryClientTransport``'s documentation). By default the
    /// global `MetricsSystem.factory`, read when the configuration is made.
    public var metricsFactory: any MetricsFactory
    /// TLS towards every instance, whichever ``connection`` kind is used: the CAs that signed
    /// the servers' certificates and, for mutual TLS, the client's certificate. `nil` (the
    /// default) connects in plaintext, unless an ``InstanceConnectionKind/http2Connection(_:)``
    /// configuration carries TLS of its own; when both are set, this one is used.
    ///
    /// Servers' certificates are verified against the address each instance registered (an IP
    /// address SAN for an IP address); `HTTP2Connection.TLS.serverHostname`
    /// overrides that name for the project's own connections, not for ``InstanceConnectionKind/posix``.
    ///
    /// ```swift
    /// let config = RegistryClientTransport.Config.defaults {
    ///   $0.tls = .defaults {
    ///     $0.trustRoots = .certificates(.file(path: "ca.pem"))
    ///     $0.certificateChain = .file(path: "client.pem")  // mutual TLS only
    ///     $0.privateKey = .file(path: "client.key")
    ///   }
    /// }
    /// ```
    public var tls: HTTP2Connection.TLS?
    /// Deterministic subsetting: with many instances, connect to a subset of them. On by
    /// default for scopes of more than 100 instances (subsets of 25); `nil` connects to every
    /// instance however many there are.
    public var subsetting: Subsetting?
    /// Slow start of instances that join while the transport runs; `nil` (the default) gives
    /// them their full weight at once.
    public var slowStart: SlowStart?
    /// The metadata (such as the caller's `zone`) whose instances calls prefer, unless a call
    /// sets its own with ``withRegistryMetadataPreference(_:isolation:_:)``; `nil` (the default)
    /// for no preference.
    public var metadataPreference: MetadataPreference?

    /// Creates a configuration.
    public init(
      loadBalancing: LoadBalancingPolicy,
      connection: InstanceConnectionKind,
      healthChecking: HealthChecking?,
      outlierDetection: OutlierDetection,
      maxStreamStartAttempts: Int,
      resolutionTimeout: Duration,
      registryBackoff: HTTP2Connection.Backoff,
      serviceConfig: ServiceConfig,
      metricsFactory: any MetricsFactory = MetricsSystem.factory,
      tls: HTTP2Connection.TLS? = nil,
      subsetting: Subsetting? = Subsetting(),
      slowStart: SlowStart? = nil,
      metadataPreference: MetadataPreference? = nil
    ) {
      self.loadBalancing = loadBalancing
      self.connection = connection
      self.healthChecking = healthChecking
      self.outlierDetection = outlierDetection
      self.maxStreamStartAttempts = maxStreamStartAttempts
      self.resolutionTimeout = resolutionTimeout
      self.registryBackoff = registryBackoff
      self.serviceConfig = serviceConfig
      self.metricsFactory = metricsFactory
      self.tls = tls
      self.subsetting = subsetting
      self.slowStart = slowStart
      self.metadataPreference = metadataPreference
    }

    /// Smooth weighted round robin over the project's own connections in plaintext, health
    /// checking on, outlier detection after 5 consecutive failures, up to 3 instances tried per
    /// call.
    public static var defaults: Self {
      Self(
        loadBalancing: .weightedRoundRobin,
        connection: .http2Connection(),
        healthChecking: HealthChecking(),
        outlierDetection: OutlierDetection(),
        maxStreamStartAttempts: 3,
        resolutionTimeout: .seconds(10),
        registryBackoff: HTTP2Connection.Backoff(
          initial: .milliseconds(100),
          maximum: .seconds(5),
          multiplier: 1.6,
          jitter: 0.2
        ),
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

  /// How the transport picks an instance for a call.
  public struct LoadBalancingPolicy: Hashable, Sendable, CustomStringConvertible {
    enum Value: Hashable { case weightedRoundRobin, powerOfTwoChoices }
    let value: Value

    /// Smooth weighted round robin by the instances' weights (0 counts as 1): over any window
    /// each instance gets its share, interleaved rather than in bursts.
    public static var weightedRoundRobin: Self { Self(value: .weightedRoundRobin) }

    /// Two instances drawn at random, the one with fewer outstanding calls per unit of weight
    /// wins: it steers away from slow instances.
    public static var powerOfTwoChoices: Self { Self(value: .powerOfTwoChoices) }

    public var description: String {
      switch self.value {
      case .weightedRoundRobin: return "weightedRoundRobin"
      case .powerOfTwoChoices: return "powerOfTwoChoices"
      }
    }
  }

  /// The kind of connection opened to each instance.
  public struct InstanceConnectionKind: Sendable {
    enum Value: Sendable {
      case http2Connection(HTTP2Connection.Config)
      case posix
    }
    let value: Value

    /// The project's own `HTTP2Connection` (lean per call, tolerates grpc-go's
    /// BDP pings), with `config`. The default.
    public static func http2Connection(
      _ config: HTTP2Connection.Config = Self.defaultConnectionConfig
    ) -> Self {
      Self(value: .http2Connection(config))
    }

    /// grpc-swift's stock `HTTP2ClientTransport.Posix` with its defaults; plaintext unless
    /// ``Config/tls`` is set.
    public static var posix: Self { Self(value: .posix) }

    /// A 5 s connect timeout and fast reconnection (100 ms to 5 s): an instance that went away
    /// is noticed and left quickly, one that came back is used again soon. Stall detection is
    /// on (``GRPCConnection/HTTP2Connection/StallDetection``, 100 ms of silence then a PING
    /// answered within 300 ms): a hung instance (deadlocked, or stopped with SIGSTOP) stops
    /// getting new calls within about a second.
    public static var defaultConnectionConfig: HTTP2Connection.Config {
      .defaults {
        $0.connectTimeout = .seconds(5)
        $0.stallDetection = HTTP2Connection.StallDetection()
        $0.backoff = HTTP2Connection.Backoff(
          initial: .milliseconds(100),
          maximum: .seconds(5),
          multiplier: 1.6,
          jitter: 0.2
        )
      }
    }
  }

  /// Client-side health checking over `grpc.health.v1.Health/Watch`.
  ///
  /// An instance that reports `NOT_SERVING`, or whose health stream breaks, gets no new calls
  /// until it reports `SERVING` again; one that does not implement the service is routed by its
  /// connection state alone. A new instance gets calls once it reports `SERVING` (or turns out
  /// not to serve the health service), unless no other instance is available.
  public struct HealthChecking: Hashable, Sendable {
    /// The service name sent in the health request; `""` asks about the server as a whole.
    public var serviceName: String
    /// The delay before watching again after the stream broke; doubled up to ``maxRetryDelay``.
    public var retryDelay: Duration
    /// The longest delay between attempts to watch again.
    public var maxRetryDelay: Duration

    /// Creates a health checking policy.
    public init(
      serviceName: String = "",
      retryDelay: Duration = .milliseconds(50),
      maxRetryDelay: Duration = .seconds(2)
    ) {
      self.serviceName = serviceName
      self.retryDelay = retryDelay
      self.maxRetryDelay = maxRetryDelay
    }
  }

  /// Ejection of instances whose calls keep failing with `unavailable` (they cannot be reached,
  /// or their streams cannot start).
  ///
  /// After ``consecutiveFailures`` failures in a row an instance gets no calls for
  /// ``baseEjectionTime`` times the number of times it was ejected (up to ``maxEjectionTime``);
  /// then it is on probation: one success re-admits it for good, one failure ejects it again.
  /// At most ``maxEjectionPercent`` of the instances are ejected at once, and when every eligible
  /// instance is ejected they are used anyway.
  public struct OutlierDetection: Hashable, Sendable {
    /// Failures in a row that eject an instance; 0 disables ejection.
    public var consecutiveFailures: Int
    /// The ejection time of a first ejection.
    public var baseEjectionTime: Duration
    /// The longest ejection time.
    public var maxEjectionTime: Duration
    /// The largest share of instances ejected at once, in percent (at least one may be).
    public var maxEjectionPercent: Int

    /// Creates an outlier detection policy.
    public init(
      consecutiveFailures: Int = 5,
      baseEjectionTime: Duration = .seconds(1),
      maxEjectionTime: Duration = .seconds(30),
      maxEjectionPercent: Int = 50
    ) {
      self.consecutiveFailures = consecutiveFailures
      self.baseEjectionTime = baseEjectionTime
      self.maxEjectionTime = maxEjectionTime
      self.maxEjectionPercent = maxEjectionPercent
    }
  }
}

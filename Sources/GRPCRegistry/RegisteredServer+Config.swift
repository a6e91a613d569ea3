public import GRPCConnection

extension RegisteredServer {
  /// Configuration of a ``RegisteredServer``: where it listens, what it registers, and how it
  /// shuts down.
  ///
  /// ```swift
  /// let config = RegisteredServer.Config(name: "user-server") {
  ///   $0.host = "0.0.0.0"
  ///   $0.port = 8082
  ///   $0.advertisedAddress = "10.0.0.7:8082"
  ///   $0.weight = 3
  ///   $0.group = "A"
  /// }
  /// ```
  public struct Config: Sendable {
    /// The service name to register, such as `user-server`.
    public var name: String
    /// The host to listen on: an IP address, `localhost`, `0.0.0.0` or `::`.
    public var host: String
    /// The port to listen on; 0 lets the system pick one (the real port is registered).
    public var port: Int
    /// The `host:port` clients should dial; `nil` derives it from the bound address (and, for
    /// `0.0.0.0` / `::`, from the machine's first routable address).
    public var advertisedAddress: String?
    /// The instance's weight (0 counts as 1).
    public var weight: Int
    /// The instance's group; empty for none.
    public var group: String
    /// Metadata carried to clients.
    public var metadata: [String: String]
    /// The software version, if any.
    public var version: String
    /// How long registration may take before ``RegisteredServer/run()`` fails.
    public var registerTimeout: Duration
    /// How long deregistration may take at shutdown before the server goes on without it.
    public var deregisterTimeout: Duration
    /// The time between deregistering (and reporting NOT_SERVING) and stopping the server, for
    /// clients to stop sending new calls.
    public var drainDelay: Duration
    /// Whether the server serves `grpc.health.v1.Health` (SERVING once registered, NOT_SERVING
    /// while draining).
    public var servesHealth: Bool
    /// TLS (the server's certificate and, for mutual TLS, the CAs clients' certificates must
    /// chain to); `nil`, the default, serves plaintext HTTP/2.
    public var tls: TLS?
    /// Whether PINGs a client sends after real traffic are answered in front of swift-nio-http2,
    /// so that grpc-go clients (which ping with nearly every response) are not disconnected every
    /// ~200 calls by its control-frame limit (`TrafficPingResponder`). On by default. Only the
    /// stock transport needs it (``ServerTransportKind/stock``); ``HTTP2Server`` allows those
    /// PINGs by its own policy.
    public var answersTrafficPings: Bool
    /// The server transport: the project's own ``HTTP2Server`` (the default), or grpc-swift's
    /// stock `HTTP2ServerTransport.Posix`.
    public var transport: ServerTransportKind

    /// A configuration for `name` on 127.0.0.1 with a port the system picks, weight 1, no group,
    /// a 5 s register timeout, a 1 s drain delay, the health service on, no TLS, the project's
    /// own server transport; then `configure`.
    public init(name: String, _ configure: (inout Self) -> Void = { _ in }) {
      self.name = name
      self.host = "127.0.0.1"
      self.port = 0
      self.advertisedAddress = nil
      self.weight = 1
      self.group = ""
      self.metadata = [:]
      self.version = ""
      self.registerTimeout = .seconds(5)
      self.deregisterTimeout = .seconds(5)
      self.drainDelay = .seconds(1)
      self.servesHealth = true
      self.tls = nil
      self.answersTrafficPings = true
      self.transport = .own(.defaults)
      configure(&self)
    }
  }
}

extension RegisteredServer {
  /// Which server transport a ``RegisteredServer`` serves on.
  public enum ServerTransportKind: Sendable {
    /// The project's ``HTTP2Server`` with this configuration (its `tls` is replaced by
    /// ``Config/tls``).
    case own(HTTP2Server.Config)
    /// grpc-swift-nio-transport's `HTTP2ServerTransport.Posix` with its defaults.
    case stock
  }
}

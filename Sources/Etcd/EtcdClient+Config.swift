public import GRPCConnection

extension EtcdClient {
  /// How an ``EtcdClient`` connects: endpoints, timeouts, TLS and credentials.
  ///
  /// ```swift
  /// let configuration = EtcdClient.Config.defaults {
  ///   $0.endpoints = ["10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379"]
  ///   $0.credentials = .init(username: "registry", password: secret)
  /// }
  /// ```
  public struct Config: Sendable {
    /// The members to talk to, `host:port` each. The client uses one at a time and fails over to
    /// the next when it is down or has no leader.
    public var endpoints: [String]
    /// How long establishing a connection to one endpoint may take.
    public var connectTimeout: Duration
    /// The deadline of each unary request, failovers included.
    public var requestTimeout: Duration
    /// The longest one member may take over one attempt of a request before the request moves
    /// to the next endpoint (within ``requestTimeout``). A member cut off from its peers still
    /// answers PINGs but holds a write it cannot forward to the leader until it notices (after
    /// an election timeout); this bounds what such a member costs a request.
    public var attemptTimeout: Duration
    /// HTTP/2 keep-alive pings on connections whose streams (watches) have been quiet this long,
    /// so a member that stopped answering is noticed; `nil` for none. etcd refuses pings more
    /// frequent than its `--grpc-keepalive-min-time` (5 s by default) with GOAWAY.
    public var keepaliveInterval: Duration?
    /// How long a keep-alive ping may go unanswered before the connection is closed and its
    /// streams move to the next endpoint.
    public var keepaliveTimeout: Duration
    /// How long a member may leave a request unanswered, with no other sign of life on its
    /// connection, before the client treats it as down.
    ///
    /// After a third of it the connection sends a PING; a member that is alive answers at once
    /// however busy it is, while one that hangs (stopped, partitioned, stalled on its disk)
    /// does not, and at the end of it the connection is closed: its requests fail over to the
    /// next endpoint well before their deadlines. Lease renewals use the shorter of this and a
    /// sixth of the lease's TTL, so a lease moves to a healthy member with half its TTL left.
    public var silenceTimeout: Duration
    /// TLS towards etcd; `nil` for plain TCP.
    public var tls: TLS?
    /// User name and password, when etcd has auth enabled.
    public var credentials: Credentials?
    /// Backoff between retries of requests, reconnections of the watch and keep-alive streams,
    /// and connection attempts to an endpoint. Kept short by default: etcd is the cluster's
    /// address book, and registrations should be back within a second or two of its return.
    public var retryBackoff: Backoff

    /// A local etcd at `127.0.0.1:2379`, 5 s request timeout, 2 s connect timeout, a silent
    /// member given up after 1.5 s, no TLS, no auth.
    public static var defaults: Self {
      Self(
        endpoints: ["127.0.0.1:2379"],
        connectTimeout: .seconds(2),
        requestTimeout: .seconds(5),
        attemptTimeout: .seconds(2),
        keepaliveInterval: .seconds(5),
        keepaliveTimeout: .seconds(2),
        silenceTimeout: .milliseconds(1500),
        tls: nil,
        credentials: nil,
        retryBackoff: .init(
          initial: .milliseconds(50),
          maximum: .seconds(1),
          multiplier: 2,
          jitter: 0.2
        )
      )
    }

    /// The defaults, changed by `configure`.
    public static func defaults(_ configure: (inout Self) -> Void) -> Self {
      var configuration = Self.defaults
      configure(&configuration)
      return configuration
    }

    /// Creates a configuration.
    public init(
      endpoints: [String],
      connectTimeout: Duration,
      requestTimeout: Duration,
      attemptTimeout: Duration = .seconds(2),
      keepaliveInterval: Duration?,
      keepaliveTimeout: Duration,
      silenceTimeout: Duration = .milliseconds(1500),
      tls: TLS?,
      credentials: Credentials?,
      retryBackoff: Backoff
    ) {
      self.endpoints = endpoints
      self.connectTimeout = connectTimeout
      self.requestTimeout = requestTimeout
      self.attemptTimeout = attemptTimeout
      self.keepaliveInterval = keepaliveInterval
      self.keepaliveTimeout = keepaliveTimeout
      self.silenceTimeout = silenceTimeout
      self.tls = tls
      self.credentials = credentials
      self.retryBackoff = retryBackoff
    }
  }

  /// TLS towards etcd: the CAs to trust, a client certificate for mutual TLS, the name to
  /// verify. The same type as every other client connection of the project
  /// (`HTTP2Connection.TLS`): certificates and keys as files or bytes.
  ///
  /// ```swift
  /// $0.tls = .defaults {
  ///   $0.trustRoots = .certificates(.file(path: "/etc/etcd/ca.pem"))
  ///   $0.certificateChain = .file(path: "/etc/etcd/client.pem")
  ///   $0.privateKey = .file(path: "/etc/etcd/client-key.pem")
  /// }
  /// ```
  public typealias TLS = HTTP2Connection.TLS

  /// A user name and password for etcd's auth.
  public struct Credentials: Sendable, Hashable {
    /// The etcd user.
    public var username: String
    /// The user's password.
    public var password: String

    /// Creates credentials.
    public init(username: String, password: String) {
      self.username = username
      self.password = password
    }
  }

  /// Exponential backoff with jitter: the one backoff type of the package
  /// (`HTTP2Connection.Backoff`). Its `defaults` are grpc's connection backoff; etcd's retries
  /// use ``Config/retryBackoff``'s shorter defaults.
  public typealias Backoff = HTTP2Connection.Backoff
}

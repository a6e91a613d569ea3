import GRPCCore

/// An error from the etcd client: one type with a ``Code`` to switch on, and a message that says
/// what happened and what to do.
///
/// ```swift
/// do {
///   try await client.put("/micro/user-server/10.0.0.7:8082", value: value, lease: lease.id)
/// } catch let error as EtcdError where error.code == .leaseNotFound {
///   // the lease expired: grant a new one and write the keys again
/// }
/// ```
public struct EtcdError: Error, Hashable, Sendable {
  /// What kind of failure this is.
  public var code: Code
  /// What happened and what to do.
  public var message: String
  /// For ``Code/compacted``: the oldest revision etcd still has (start a watch there or re-list).
  public var compactRevision: Int64?
  /// The underlying error, if any; not part of equality.
  public var cause: (any Error)?

  /// Creates an error.
  public init(code: Code, message: String, compactRevision: Int64? = nil, cause: (any Error)? = nil)
  {
    self.code = code
    self.message = message
    self.compactRevision = compactRevision
    self.cause = cause
  }

  public func hash(into hasher: inout Hasher) {
    hasher.combine(self.code)
    hasher.combine(self.message)
    hasher.combine(self.compactRevision)
  }

  public static func == (lhs: Self, rhs: Self) -> Bool {
    lhs.code == rhs.code && lhs.message == rhs.message && lhs.compactRevision == rhs.compactRevision
  }

  /// The kind of an ``EtcdError``. More codes may be added; keep a `default` when switching.
  public struct Code: Hashable, Sendable, CustomStringConvertible {
    private enum Value: String, Hashable, Sendable {
      case unavailable, timeout, compacted, leaseNotFound, permissionDenied, authFailed
      case invalidArgument, shutdown, canceled, storeReplaced, internalError, responseTooLarge
    }

    private let value: Value
    private init(_ value: Value) { self.value = value }

    /// No endpoint could serve the request (down, unreachable, no leader). Retry later.
    public static var unavailable: Self { Self(.unavailable) }
    /// The request did not complete within its deadline.
    public static var timeout: Self { Self(.timeout) }
    /// The requested revision has been compacted; see ``EtcdError/compactRevision``.
    public static var compacted: Self { Self(.compacted) }
    /// The lease does not exist (expired or revoked).
    public static var leaseNotFound: Self { Self(.leaseNotFound) }
    /// The authenticated user lacks permission for the key or operation.
    public static var permissionDenied: Self { Self(.permissionDenied) }
    /// Authentication failed: wrong user name or password, or auth is not enabled.
    public static var authFailed: Self { Self(.authFailed) }
    /// etcd refused the request's content (empty key, bad range, value too large, ...).
    public static var invalidArgument: Self { Self(.invalidArgument) }
    /// The client has been shut down.
    public static var shutdown: Self { Self(.shutdown) }
    /// The server canceled a watch or stream for another reason.
    public static var canceled: Self { Self(.canceled) }
    /// etcd's store was replaced (wiped, or restored from a backup): its revision went backwards.
    public static var storeReplaced: Self { Self(.storeReplaced) }
    /// A response was larger than the client accepts in one message (4 MiB by default): read
    /// big ranges in pages with ``EtcdClient/getAll(_:pageSize:)``.
    public static var responseTooLarge: Self { Self(.responseTooLarge) }
    /// An unexpected answer or state; a bug here or in the server.
    public static var internalError: Self { Self(.internalError) }

    public var description: String { self.value.rawValue }
  }
}

extension EtcdError: CustomStringConvertible {
  public var description: String {
    var text = "etcd \(self.code): \(self.message)"
    if let revision = self.compactRevision { text += " (compact revision \(revision))" }
    if let cause = self.cause { text += " (cause: \(cause))" }
    return text
  }
}

extension EtcdError {
  static func shutDown() -> EtcdError {
    EtcdError(code: .shutdown, message: "the etcd client has been shut down; create a new client")
  }

  /// Maps a gRPC error from etcd to an ``EtcdError``, using etcd's error texts where the gRPC
  /// code alone is ambiguous.
  init(rpc error: RPCError, operation: String, endpoint: String) {
    let text = error.message
    let at = "\(operation) at \(endpoint)"
    switch error.code {
    case .unavailable:
      self.init(
        code: .unavailable,
        message:
          "\(at) failed: \(text); check that etcd is running and reachable (the client retries other endpoints until the deadline)",
        cause: error
      )
    case .deadlineExceeded:
      self.init(
        code: .timeout,
        message:
          "\(at) did not complete in time (\(text)); etcd may be overloaded or without a leader, or raise the request timeout",
        cause: error
      )
    case .notFound where text.contains("lease"):
      self.init(code: .leaseNotFound, message: "\(at): \(text); grant a new lease", cause: error)
    case .permissionDenied:
      self.init(
        code: .permissionDenied,
        message: "\(at): \(text); grant the user a role with permission on this key range",
        cause: error
      )
    case .unauthenticated:
      self.init(
        code: .authFailed,
        message: "\(at): \(text); check the user name and password",
        cause: error
      )
    case .invalidArgument where text.contains("authentication failed"):
      self.init(
        code: .authFailed,
        message: "\(at): \(text); check the user name and password",
        cause: error
      )
    case .invalidArgument where text.contains("user name is empty"):
      // etcd has auth enabled and the request carried no token.
      self.init(
        code: .permissionDenied,
        message: "\(at): \(text); etcd requires authentication, configure a user and password",
        cause: error
      )
    case .failedPrecondition where text.contains("authentication is not enabled"):
      self.init(
        code: .authFailed,
        message: "\(at): \(text); remove the credentials from the configuration or enable auth",
        cause: error
      )
    case .outOfRange where text.contains("compacted"):
      self.init(
        code: .compacted,
        message: "\(at): \(text); re-read the current state and continue from its revision",
        cause: error
      )
    case .resourceExhausted where text.contains("The server sent a message of"):
      self.init(
        code: .responseTooLarge,
        message: "\(at): \(text); read the range in pages (getAll, or a smaller limit)",
        cause: error
      )
    case .invalidArgument, .outOfRange, .failedPrecondition, .resourceExhausted:
      self.init(code: .invalidArgument, message: "\(at) was refused: \(text)", cause: error)
    case .cancelled:
      self.init(code: .canceled, message: "\(at) was canceled: \(text)", cause: error)
    default:
      self.init(
        code: .internalError,
        message: "\(at) failed with \(error.code): \(text)",
        cause: error
      )
    }
  }
}

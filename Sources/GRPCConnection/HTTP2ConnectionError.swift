/// An error from an ``HTTP2Connection`` outside a single RPC (RPCs fail with `RPCError`).
public struct HTTP2ConnectionError: Error, Hashable, Sendable, CustomStringConvertible {
  /// What kind of error this is.
  public struct Code: Hashable, Sendable, CustomStringConvertible {
    private enum Wrapped: Hashable {
      case invalidConfiguration
      case alreadyRunning
      case connectFailed
      case connectionClosed
    }

    private let wrapped: Wrapped

    private init(_ wrapped: Wrapped) {
      self.wrapped = wrapped
    }

    /// The configuration cannot be used (e.g. a TLS file is missing or not PEM).
    public static let invalidConfiguration = Self(.invalidConfiguration)
    /// ``HTTP2Connection/connect()`` was called more than once.
    public static let alreadyRunning = Self(.alreadyRunning)
    /// A connection attempt failed (refused, timed out, TLS or HTTP/2 handshake failed).
    public static let connectFailed = Self(.connectFailed)
    /// An established connection was lost.
    public static let connectionClosed = Self(.connectionClosed)

    /// The code's name.
    public var description: String {
      String(describing: self.wrapped)
    }
  }

  /// What kind of error this is.
  public var code: Code
  /// What went wrong and what to do about it.
  public var message: String
  /// The underlying error, if any.
  public var cause: (any Error)?

  /// Creates an error.
  public init(code: Code, message: String, cause: (any Error)? = nil) {
    self.code = code
    self.message = message
    self.cause = cause
  }

  /// `code: message (cause)`.
  public var description: String {
    if let cause = self.cause {
      return "\(self.code): \(self.message) (\(cause))"
    }
    return "\(self.code): \(self.message)"
  }

  /// Compares code and message.
  public static func == (lhs: Self, rhs: Self) -> Bool {
    lhs.code == rhs.code && lhs.message == rhs.message
  }

  /// Hashes code and message.
  public func hash(into hasher: inout Hasher) {
    hasher.combine(self.code)
    hasher.combine(self.message)
  }
}

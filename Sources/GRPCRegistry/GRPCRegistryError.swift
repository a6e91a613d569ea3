/// An error from the gRPC glue of the registry: a malformed `registry://` target, a server that
/// could not bind or register, or a component used the wrong way.
///
/// Calls routed by ``RegistryClientTransport`` fail with grpc-swift's `RPCError` instead, as every
/// gRPC call does.
///
/// ```swift
/// do {
///   let target = try RegistryTarget(parsing: "registry://user-server?group=A")
/// } catch let error as GRPCRegistryError where error.code == .invalidTarget {
///   print(error.message)
/// }
/// ```
public struct GRPCRegistryError: Error, Hashable, Sendable {
  /// What kind of failure this is.
  public var code: Code
  /// What went wrong and what to do about it.
  public var message: String
  /// The underlying error, if any. Not part of equality.
  public var cause: (any Error)?

  /// Creates an error.
  public init(code: Code, message: String, cause: (any Error)? = nil) {
    self.code = code
    self.message = message
    self.cause = cause
  }

  public func hash(into hasher: inout Hasher) {
    hasher.combine(self.code)
    hasher.combine(self.message)
  }

  public static func == (lhs: Self, rhs: Self) -> Bool {
    lhs.code == rhs.code && lhs.message == rhs.message
  }
}

extension GRPCRegistryError: CustomStringConvertible {
  public var description: String {
    var text = "\(self.code): \(self.message)"
    if let cause = self.cause { text += " (cause: \(cause))" }
    return text
  }
}

extension GRPCRegistryError {
  /// The kind of a ``GRPCRegistryError``. New codes may be added; match with `==` and keep a
  /// default.
  public struct Code: Hashable, Sendable, CustomStringConvertible {
    private enum Value: String, Hashable, Sendable {
      case invalidTarget
      case invalidConfiguration
      case bindFailed
      case registrationFailed
      case registrationTimedOut
      case alreadyRunning
    }

    private var value: Value
    private init(_ value: Value) { self.value = value }

    /// A `registry://` target string is malformed.
    public static var invalidTarget: Self { Self(.invalidTarget) }
    /// A configuration value cannot be used (such as an unspecified advertised address).
    public static var invalidConfiguration: Self { Self(.invalidConfiguration) }
    /// The server could not bind its listening address.
    public static var bindFailed: Self { Self(.bindFailed) }
    /// The registry refused or failed the registration.
    public static var registrationFailed: Self { Self(.registrationFailed) }
    /// The registration did not complete within the register timeout.
    public static var registrationTimedOut: Self { Self(.registrationTimedOut) }
    /// A component that runs once was run twice.
    public static var alreadyRunning: Self { Self(.alreadyRunning) }

    public var description: String { self.value.rawValue }
  }
}

/// An error thrown by a service registry, its codec or its validation.
///
/// Every error carries a ``Code`` you can switch on and a message written for the person reading
/// the log: it says what was wrong and what to do about it.
///
/// ```swift
/// do {
///   try await registry.register(instance)
/// } catch let error as RegistryError where error.code == .invalidArgument {
///   print("fix the configuration: \(error.message)")
/// }
/// ```
public struct RegistryError: Error, Hashable, Sendable {
  /// What kind of failure this is.
  public var code: Code

  /// A human-readable description of what went wrong and what to do.
  public var message: String

  /// The field of the input that was rejected, such as `"address"`, when the error is about input.
  public var field: String?

  /// The underlying error, if any. Not part of equality.
  public var cause: (any Error)?

  /// Creates an error.
  public init(code: Code, message: String, field: String? = nil, cause: (any Error)? = nil) {
    self.code = code
    self.message = message
    self.field = field
    self.cause = cause
  }

  public func hash(into hasher: inout Hasher) {
    hasher.combine(self.code)
    hasher.combine(self.message)
    hasher.combine(self.field)
  }

  public static func == (lhs: Self, rhs: Self) -> Bool {
    lhs.code == rhs.code && lhs.message == rhs.message && lhs.field == rhs.field
  }
}

extension RegistryError: CustomStringConvertible {
  public var description: String {
    var text = "\(self.code): \(self.message)"
    if let cause = self.cause {
      text += " (cause: \(cause))"
    }
    return text
  }
}

extension RegistryError {
  /// The kind of a ``RegistryError``. New codes may be added; match with `==` and keep a default.
  public struct Code: Hashable, Sendable, CustomStringConvertible {
    private enum Value: String, Hashable, Sendable {
      case invalidArgument
      case malformedValue
      case notFound
      case unavailable
      case timeout
      case permissionDenied
      case shutdown
      case internalError
    }

    private var value: Value
    private init(_ value: Value) { self.value = value }

    /// The caller passed input that breaks a rule (bad service name, address, weight, ...).
    public static var invalidArgument: Self { Self(.invalidArgument) }
    /// A stored value could not be decoded (written by another tool, truncated, not JSON).
    public static var malformedValue: Self { Self(.malformedValue) }
    /// The thing asked for does not exist (for example a registration whose TTL expired).
    public static var notFound: Self { Self(.notFound) }
    /// The registry's backend cannot be reached right now; retrying later may succeed.
    public static var unavailable: Self { Self(.unavailable) }
    /// The operation did not finish within its time limit.
    public static var timeout: Self { Self(.timeout) }
    /// The backend refused the operation for lack of permission.
    public static var permissionDenied: Self { Self(.permissionDenied) }
    /// The registry has been shut down and accepts no more work.
    public static var shutdown: Self { Self(.shutdown) }
    /// A bug or an unexpected state inside the library.
    public static var internalError: Self { Self(.internalError) }

    public var description: String { self.value.rawValue }
  }
}

extension RegistryError {
  static func invalid(_ field: String, _ message: String) -> Self {
    RegistryError(code: .invalidArgument, message: message, field: field)
  }

  package static func shutDown(_ operation: String) -> Self {
    RegistryError(
      code: .shutdown,
      message: "cannot \(operation): the registry has been shut down; create a new registry"
    )
  }
}

/// The connectivity state of an ``HTTP2Connection``, as in grpc's connectivity-semantics.
///
/// A load balancer reads ``HTTP2Connection/connectivityState`` or iterates
/// ``HTTP2Connection/connectivityStates()``:
///
/// ```swift
/// for await state in connection.connectivityStates() where state == .ready { … }
/// ```
public enum ConnectivityState: Sendable, Hashable, CustomStringConvertible {
  /// ``HTTP2Connection/connect()`` has not been called yet.
  case idle
  /// A connection attempt is under way (also right after a connection was lost or drained).
  case connecting
  /// An HTTP/2 connection is established; RPCs start immediately.
  case ready
  /// The last attempt failed; the next one starts after a backoff. RPCs without wait-for-ready
  /// fail with `unavailable`.
  case transientFailure
  /// The connection was shut down; RPCs fail with `failedPrecondition`.
  case shutdown

  /// The state's name.
  public var description: String {
    switch self {
    case .idle: return "idle"
    case .connecting: return "connecting"
    case .ready: return "ready"
    case .transientFailure: return "transientFailure"
    case .shutdown: return "shutdown"
    }
  }
}

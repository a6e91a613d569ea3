public import RegistryCore

extension RegistryClientTransport {
  /// How one registered instance is doing, as seen by a ``RegistryClientTransport``.
  public struct InstanceStatus: Hashable, Sendable {
    /// The instance as registered.
    public var instance: ServiceInstance
    /// Whether its connection is established.
    public var isConnected: Bool
    /// What its health service last said.
    public var health: HealthStatus
    /// Whether outlier detection has ejected it.
    public var isEjected: Bool
    /// Calls in flight on it.
    public var outstandingCalls: Int

    /// Whether it is in the first tier of the picker: connected, confirmed healthy (or not
    /// serving the health service) and not ejected.
    public var isPreferred: Bool {
      self.isConnected && !self.isEjected
        && (self.health == .serving || self.health == .notChecked)
    }

    init(_ entry: Balancer.Entry) {
      self.instance = entry.instance
      self.isConnected = entry.connectivity == .ready
      self.isEjected = entry.isEjected
      self.outstandingCalls = entry.outstanding
      switch entry.health {
      case .unknown: self.health = .unknown
      case .serving: self.health = .serving
      case .notWatched: self.health = .notChecked
      case .notServing: self.health = .notServing
      case .broken: self.health = .broken
      }
    }
  }

  /// The health of an instance, from its `grpc.health.v1.Health/Watch` stream.
  public struct HealthStatus: Hashable, Sendable, CustomStringConvertible {
    private enum Value: String, Hashable, Sendable {
      case unknown, serving, notServing, broken, notChecked
    }
    private let value: Value
    private init(_ value: Value) { self.value = value }

    /// No answer yet.
    public static var unknown: Self { Self(.unknown) }
    /// It reported SERVING.
    public static var serving: Self { Self(.serving) }
    /// It reported NOT_SERVING (or SERVICE_UNKNOWN): it gets no calls.
    public static var notServing: Self { Self(.notServing) }
    /// Its health stream failed or ended: it gets no calls until the stream is back.
    public static var broken: Self { Self(.broken) }
    /// It does not serve the health service, or health checking is off.
    public static var notChecked: Self { Self(.notChecked) }

    public var description: String { self.value.rawValue }
  }
}

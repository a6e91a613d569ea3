/// A registry of service instances: the address book of a cluster.
///
/// Servers ``register(_:)`` themselves once they listen and ``deregister(service:address:)`` on
/// the way down; clients read ``instances(of:)`` and follow ``watch(_:)``. Implementations:
/// ``InMemoryRegistry`` (embedded, one process) and `EtcdServiceRegistry` (module `EtcdRegistry`).
/// Every implementation passes the conformance suite in `RegistryTesting`.
///
/// The Go design's interface maps onto it as `Register` → ``register(_:)``, `UnRegister` →
/// ``deregister(service:address:)``, `ListServices` → ``instances(of:)``, `Subscribe` →
/// ``watch(_:)``, `Close` → ``shutdown()``.
public protocol ServiceRegistry: Sendable {
  /// Registers `instance`, or replaces the value registered at its address.
  ///
  /// Returns once the registry's store has acknowledged the write. The registration lasts until
  /// ``deregister(service:address:)`` or ``shutdown()``; implementations with leases keep it
  /// alive and restore it after backend failures.
  ///
  /// - Throws: ``RegistryError`` — `invalidArgument` for an instance that breaks a rule (nothing
  ///   is written), `unavailable`/`timeout` when the store cannot be reached, `shutdown` after
  ///   ``shutdown()``.
  func register(_ instance: ServiceInstance) async throws

  /// Removes the registration of `address` in `service`. Removing one that does not exist is not
  /// an error.
  func deregister(service: String, address: String) async throws

  /// The current instances of `service`, sorted by address.
  func instances(of service: String) async throws -> [ServiceInstance]

  /// Follows `service`: the current set first, then every change. See ``ServiceWatch``.
  func watch(_ service: String) -> ServiceWatch

  /// Removes every registration made through this registry, ends its watches, and refuses
  /// further work. Returns within a bounded time even when the store is unreachable.
  func shutdown() async
}

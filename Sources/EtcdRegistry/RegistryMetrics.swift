import CoreMetrics

/// The registry's metrics, built from an injectable factory.
///
/// | name | kind | dimensions | counts |
/// |---|---|---|---|
/// | `registry_registrations_total` | counter | | `register` calls etcd acknowledged |
/// | `registry_deregistrations_total` | counter | | `deregister` calls etcd acknowledged |
/// | `registry_lease_grants_total` | counter | | leases granted (the first and every replacement) |
/// | `registry_lease_losses_total` | counter | | leases found expired, revoked or gone |
/// | `registry_reregistrations_total` | counter | | recoveries that wrote every registration again |
/// | `registry_recovery_attempts_total` | counter | | attempts of those recoveries, failed ones included |
/// | `registry_key_repairs_total` | counter | | registered keys deleted by someone else and restored |
/// | `registry_malformed_values_total` | counter | | registry values that did not decode, skipped |
/// | `registry_watch_restarts_total` | counter | `service` | service watches listed again after a failure, compaction or replaced store |
/// | `registry_watch_compactions_total` | counter | `service` | those restarts because etcd compacted the revision (or the store was replaced) |
/// | `registry_watched_instances` | gauge | `service` | instances of a watched service, as the watch last saw them |
///
/// The `service` series are destroyed when the service's last watcher ends.
///
/// The etcd client adds `etcd_lease_keepalive_duration_seconds` (a timer, see `EtcdClient`).
struct RegistryMetrics: Sendable {
  let factory: any MetricsFactory
  let registrations: Counter
  let deregistrations: Counter
  let leaseGrants: Counter
  let leaseLosses: Counter
  let reRegistrations: Counter
  let recoveryAttempts: Counter
  let keyRepairs: Counter
  let malformedValues: Counter

  init(factory: any MetricsFactory) {
    func counter(_ name: String) -> Counter {
      Counter(label: "registry_\(name)", dimensions: [], factory: factory)
    }
    self.factory = factory
    self.registrations = counter("registrations_total")
    self.deregistrations = counter("deregistrations_total")
    self.leaseGrants = counter("lease_grants_total")
    self.leaseLosses = counter("lease_losses_total")
    self.reRegistrations = counter("reregistrations_total")
    self.recoveryAttempts = counter("recovery_attempts_total")
    self.keyRepairs = counter("key_repairs_total")
    self.malformedValues = counter("malformed_values_total")
  }

  /// The metrics of one watched service.
  func watch(service: String) -> WatchMetrics {
    WatchMetrics(service: service, factory: self.factory)
  }
}

/// The metrics of one service watch (``ServiceFeed``).
struct WatchMetrics: Sendable {
  let restarts: Counter
  let compactions: Counter
  let instances: Gauge

  init(service: String, factory: any MetricsFactory) {
    let dimensions = [("service", service)]
    self.restarts = Counter(
      label: "registry_watch_restarts_total",
      dimensions: dimensions,
      factory: factory
    )
    self.compactions = Counter(
      label: "registry_watch_compactions_total",
      dimensions: dimensions,
      factory: factory
    )
    self.instances = Gauge(
      label: "registry_watched_instances",
      dimensions: dimensions,
      factory: factory
    )
  }

  /// The service is no longer watched: its series go (see ``EtcdServiceRegistry``'s metrics).
  func destroy() {
    self.restarts.destroy()
    self.compactions.destroy()
    self.instances.destroy()
  }
}

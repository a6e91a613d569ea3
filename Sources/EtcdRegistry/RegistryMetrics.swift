import CoreMetrics

/// The registry's metrics, built from an injectable factory.
struct RegistryMetrics: Sendable {
  let registrations: Counter
  let deregistrations: Counter
  let leaseGrants: Counter
  let leaseLosses: Counter
  let reRegistrations: Counter
  let recoveryAttempts: Counter
  let keyRepairs: Counter
  let malformedValues: Counter
  let watchRelists: Counter

  init(factory: any MetricsFactory) {
    func counter(_ name: String) -> Counter {
      Counter(label: "registry_\(name)", dimensions: [], factory: factory)
    }
    self.registrations = counter("registrations_total")
    self.deregistrations = counter("deregistrations_total")
    self.leaseGrants = counter("lease_grants_total")
    self.leaseLosses = counter("lease_losses_total")
    self.reRegistrations = counter("reregistrations_total")
    self.recoveryAttempts = counter("recovery_attempts_total")
    self.keyRepairs = counter("key_repairs_total")
    self.malformedValues = counter("malformed_values_total")
    self.watchRelists = counter("watch_relists_total")
  }
}

import CoreMetrics

/// The metrics of a ``RegistryClientTransport``, built from ``RegistryClientTransport/Config/metricsFactory``.
///
/// | name | kind | dimensions | counts |
/// |---|---|---|---|
/// | `registry_client_calls_total` | counter | `service`, `instance` | streams opened on an instance (a call that fails over counts once per instance tried) |
/// | `registry_client_failovers_total` | counter | `service` | calls tried on another instance after their stream could not start |
/// | `registry_client_ejections_total` | counter | `service`, `instance` | instances ejected by outlier detection |
/// | `registry_client_readmissions_total` | counter | `service`, `instance` | ejected instances re-admitted by a success on probation |
struct TransportMetrics: Sendable {
  let service: String
  let factory: any MetricsFactory
  let failovers: Counter

  init(service: String, factory: any MetricsFactory) {
    self.service = service
    self.factory = factory
    self.failovers = Counter(
      label: "registry_client_failovers_total",
      dimensions: [("service", service)],
      factory: factory
    )
  }

  /// The calls picked on the instance at `address`.
  func calls(instance address: String) -> Counter {
    self.counter("registry_client_calls_total", address)
  }

  func ejections(instance address: String) -> Counter {
    self.counter("registry_client_ejections_total", address)
  }

  func readmissions(instance address: String) -> Counter {
    self.counter("registry_client_readmissions_total", address)
  }

  private func counter(_ label: String, _ address: String) -> Counter {
    Counter(
      label: label,
      dimensions: [("service", self.service), ("instance", address)],
      factory: self.factory
    )
  }
}

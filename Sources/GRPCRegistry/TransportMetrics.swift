import CoreMetrics
import RegistryPrimitives
import Synchronization

/// The metrics of a ``RegistryClientTransport``, built from ``RegistryClientTransport/Config/metricsFactory``.
///
/// | name | kind | dimensions | counts |
/// |---|---|---|---|
/// | `registry_client_calls_total` | counter | `service`, `instance` | streams opened on an instance (a call that fails over counts once per instance tried) |
/// | `registry_client_failovers_total` | counter | `service` | calls tried on another instance after their stream could not start |
/// | `registry_client_ejections_total` | counter | `service`, `instance` | instances ejected by outlier detection |
/// | `registry_client_readmissions_total` | counter | `service`, `instance` | ejected instances re-admitted by a success on probation |
///
/// The per-instance counters live as long as the transport has a connection to that address:
/// when the last one ends (the instance left the registry, or the transport shut down) they are
/// destroyed, so a fleet whose addresses change (pod IPs) does not leave one series per address
/// it ever saw in the metrics backend. An address that comes back starts again from zero.
final class TransportMetrics: Sendable {
  let service: String
  let factory: any MetricsFactory
  let failovers: Counter
  private let instances = Locked<[String: InstanceCounters]>([:])

  /// The counters of one instance address and how many subchannels use them.
  private struct InstanceCounters {
    let counters: Instance
    var users: Int
  }

  /// The counters of one instance address.
  struct Instance: Sendable {
    let calls: Counter
    let ejections: Counter
    let readmissions: Counter

    fileprivate func destroy() {
      self.calls.destroy()
      self.ejections.destroy()
      self.readmissions.destroy()
    }
  }

  init(service: String, factory: any MetricsFactory) {
    self.service = service
    self.factory = factory
    self.failovers = Counter(
      label: "registry_client_failovers_total",
      dimensions: [("service", service)],
      factory: factory
    )
  }

  /// The counters of the instance at `address`, for a new subchannel to it; balanced by
  /// ``release(instance:)`` when the subchannel ends.
  func retain(instance address: String) -> Instance {
    self.instances.withLock { instances in
      if var entry = instances[address] {
        entry.users += 1
        instances[address] = entry
        return entry.counters
      }
      let counters = Instance(
        calls: self.counter("registry_client_calls_total", address),
        ejections: self.counter("registry_client_ejections_total", address),
        readmissions: self.counter("registry_client_readmissions_total", address)
      )
      instances[address] = InstanceCounters(counters: counters, users: 1)
      return counters
    }
  }

  /// A subchannel to `address` ended; the last one destroys the address's counters.
  func release(instance address: String) {
    self.instances.withLock { instances in
      guard var entry = instances[address] else { return }
      entry.users -= 1
      if entry.users > 0 {
        instances[address] = entry
        return
      }
      instances[address] = nil
      // Under the lock: a subchannel to the same address created meanwhile must get fresh
      // counters, not handles a backend (Prometheus) shares with the ones destroyed here.
      entry.counters.destroy()
    }
  }

  /// The counters of `address` while a subchannel holds them; `nil` after the last let go.
  func instance(_ address: String) -> Instance? {
    self.instances.withLock { $0[address]?.counters }
  }

  private func counter(_ label: String, _ address: String) -> Counter {
    Counter(
      label: label,
      dimensions: [("service", self.service), ("instance", address)],
      factory: self.factory
    )
  }
}

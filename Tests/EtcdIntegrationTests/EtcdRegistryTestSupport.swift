import Etcd
import EtcdHarness
import EtcdRegistry
import Foundation
import Logging
import Metrics
import RegistryCore
import RegistryPrimitives
import Synchronization

/// One etcd shared by the tests that do not stop or restart it; the harness's watchdog removes
/// it when the test process exits.
enum SharedEtcd {
  private static let cluster = Locked<Task<EtcdCluster, any Error>?>(nil)

  static func get() async throws -> EtcdCluster {
    let task = self.cluster.withLock { cluster in
      if let cluster { return cluster }
      let task = Task { try await EtcdCluster.start() }
      cluster = task
      return task
    }
    return try await task.value
  }
}

/// A registry running in the background until it is shut down.
final class RunningRegistry: Sendable {
  let registry: EtcdServiceRegistry
  private let task: Task<Void, any Error>

  init(
    _ cluster: EtcdCluster,
    prefix: String,
    metricsFactory: any MetricsFactory = MetricsSystem.factory,
    logger: Logger = testLogger("registry"),
    configure: (inout EtcdServiceRegistry.Config) -> Void = { _ in }
  ) throws {
    let registry = try EtcdServiceRegistry(
      config: .defaults {
        $0.etcd = .testing(cluster)
        $0.keyPrefix = prefix
        $0.leaseTTL = .seconds(2)
        configure(&$0)
      },
      logger: logger,
      metricsFactory: metricsFactory
    )
    self.registry = registry
    self.task = Task { try await registry.run() }
  }

  /// Shuts the registry down and waits for its run loop to end.
  func stop() async {
    await self.registry.shutdown()
    _ = try? await self.task.value
  }

  deinit { self.task.cancel() }
}

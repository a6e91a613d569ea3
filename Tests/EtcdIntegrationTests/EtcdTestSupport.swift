import Etcd
import EtcdHarness
import Foundation
import Logging

/// A logger for tests: quiet unless `TEST_LOG_LEVEL` is set (trace, debug, info, ...).
func testLogger(_ label: String) -> Logger {
  var logger = Logger(label: label)
  let level = ProcessInfo.processInfo.environment["TEST_LOG_LEVEL"].flatMap(
    Logger.Level.init(rawValue:)
  )
  logger.logLevel = level ?? .critical
  return logger
}

/// A unique key prefix for one test, so tests can share an etcd.
func uniquePrefix(_ name: String = "test") -> String {
  "/\(name)-\(UUID().uuidString.prefix(8))/"
}

extension EtcdClient.Config {
  /// A configuration for the cluster's endpoints (TLS filled in when the cluster uses it).
  static func testing(
    _ cluster: EtcdCluster,
    _ configure: (inout EtcdClient.Config) -> Void = { _ in }
  ) -> EtcdClient.Config {
    .defaults {
      $0.endpoints = cluster.endpoints
      if let certificates = cluster.certificates {
        $0.tls = .defaults { tls in
          tls.trustRoots = .certificates(.file(path: certificates.caCertificate))
          if cluster.config.clientCertificateAuth {
            tls.certificateChain = .file(path: certificates.clientCertificate)
            tls.privateKey = .file(path: certificates.clientKey)
          }
        }
      }
      configure(&$0)
    }
  }
}

/// Starts etcd and a client on it for the duration of `body`.
func withEtcdClient<T: Sendable>(
  cluster options: EtcdCluster.Config = .defaults,
  configure: (inout EtcdClient.Config) -> Void = { _ in },
  _ body: (EtcdClient, EtcdCluster) async throws -> T
) async throws -> T {
  try await withEtcdCluster(options) { cluster in
    try await withEtcdClient(
      config: .testing(cluster, configure),
      logger: testLogger("etcd-client")
    ) { client in
      try await body(client, cluster)
    }
  }
}

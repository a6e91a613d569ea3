import EtcdHarness
import Foundation
import RegistryTesting
import Testing

@Suite("registryctl with TLS and auth", .timeLimit(.minutes(3)))
struct RegistryCtlSecurityTests {
  static let value = #"{"Name":"svc","Address":"10.0.0.1:80","Weight":1,"Group":""}"#

  @Test(
    "mutual TLS from flags and from REGISTRY_ETCD_* variables; an untrusted CA exits 3 and says what to do"
  )
  func tls() async throws {
    try await withEtcdCluster(
      .defaults {
        $0.tls = true
        $0.clientCertificateAuth = true
      }
    ) { cluster in
      let certificates = try #require(cluster.certificates)
      let prefix = uniquePrefix("ctl-tls")
      let ctl = RegistryCtl(cluster: cluster, prefix: prefix)
      try await cluster.etcdctl(["put", "\(prefix)svc/10.0.0.1:80", Self.value])
      let flags = [
        "--cacert", certificates.caCertificate, "--cert", certificates.clientCertificate,
        "--key", certificates.clientKey,
      ]

      let list = try await ctl.run(["list", "svc"] + flags)
      #expect(list.status == 0, "\(list)")
      #expect(list.stdout.contains("10.0.0.1:80"), "\(list)")

      let environment = [
        "REGISTRY_ETCD_CACERT": certificates.caCertificate,
        "REGISTRY_ETCD_CERT": certificates.clientCertificate,
        "REGISTRY_ETCD_KEY": certificates.clientKey,
      ]
      let status = try await ctl.run(["status"], environment: environment)
      #expect(status.status == 0, "\(status)")
      #expect(status.stdout.contains("tls: on (mutual)"), "\(status)")
      #expect(status.stdout.contains("auth: off"), "\(status)")
      let listFromEnvironment = try await ctl.run(["list", "svc"], environment: environment)
      #expect(listFromEnvironment.status == 0, "\(listFromEnvironment)")
      #expect(listFromEnvironment.stdout.contains("10.0.0.1:80"), "\(listFromEnvironment)")

      let rogue = try await TestCertificates.generate(in: cluster.root + "/rogue", name: "rogue")
      let untrusted = try await ctl.run(
        [
          "list", "svc", "--cacert", rogue.caCertificate, "--cert", certificates.clientCertificate,
          "--key", certificates.clientKey, "--timeout", "2",
        ]
      )
      #expect(untrusted.status == 3, "\(untrusted)")
      #expect(untrusted.stderr.contains("--cacert"), "\(untrusted)")
      #expect(untrusted.stderr.contains("hint:"), "\(untrusted)")

      let plain = try await ctl.run(["list", "svc", "--timeout", "2"])
      #expect(plain.status == 3, "a plain-text client cannot reach a TLS etcd: \(plain)")
      #expect(plain.stderr.contains("--cacert"), "\(plain)")
    }
  }

  @Test(
    "auth from --user and REGISTRY_ETCD_USER; a wrong password or no user exits 3 and says what to do"
  )
  func auth() async throws {
    try await withEtcdCluster { cluster in
      let prefix = uniquePrefix("ctl-auth")
      let ctl = RegistryCtl(cluster: cluster, prefix: prefix)
      try await cluster.etcdctl(["put", "\(prefix)svc/10.0.0.1:80", Self.value])
      try await cluster.enableAuth(rootPassword: "root-pw")

      let list = try await ctl.run(["list", "svc", "--user", "root:root-pw"])
      #expect(list.status == 0, "\(list)")
      #expect(list.stdout.contains("10.0.0.1:80"), "\(list)")

      let environment = ["REGISTRY_ETCD_USER": "root:root-pw"]
      let status = try await ctl.run(["status"], environment: environment)
      #expect(status.status == 0, "\(status)")
      #expect(status.stdout.contains("auth: on (user root)"), "\(status)")
      #expect(status.stdout.contains("tls: off"), "\(status)")
      #expect(!status.stdout.contains("root-pw"), "the password is never printed")

      let wrong = try await ctl.run(["list", "svc", "--user", "root:wrong"])
      #expect(wrong.status == 3, "\(wrong)")
      #expect(wrong.stderr.contains("password"), "\(wrong)")
      #expect(wrong.stderr.contains("--user"), "\(wrong)")
      #expect(!wrong.stderr.contains("root:wrong"), "the password is never printed")

      let anonymous = try await ctl.run(["list", "svc"])
      #expect(anonymous.status == 3, "\(anonymous)")
      #expect(anonymous.stderr.contains("--user"), "\(anonymous)")
    }
  }
}

import Etcd
import EtcdHarness
import Foundation
import RegistryPrimitives
import RegistryTesting
import Synchronization
import Testing

@Suite("EtcdClient TLS and auth", .timeLimit(.minutes(2)))
struct EtcdSecurityTests {
  @Test("TLS with server authentication")
  func tls() async throws {
    try await withEtcdClient(cluster: .defaults { $0.tls = true }) { etcd, _ in
      try await etcd.put("/tls/k", value: "v")
      #expect(try await etcd.get("/tls/k")?.valueString == "v")
    }
  }

  @Test("mutual TLS")
  func mutualTLS() async throws {
    try await withEtcdClient(
      cluster: .defaults {
        $0.tls = true
        $0.clientCertificateAuth = true
      }
    ) { etcd, _ in
      try await etcd.put("/mtls/k", value: "v")
      #expect(try await etcd.get("/mtls/k")?.valueString == "v")
    }
  }

  @Test("a CA that did not sign etcd's certificate fails with a clear error")
  func wrongCA() async throws {
    try await withEtcdCluster(.defaults { $0.tls = true }) { cluster in
      let rogue = try await TestCertificates.generate(in: cluster.root + "/rogue", name: "rogue")
      try await withEtcdClient(
        config: .testing(cluster) {
          $0.tls = .defaults { $0.trustRoots = .certificates(.file(path: rogue.caCertificate)) }
          $0.requestTimeout = .seconds(2)
        },
        logger: testLogger("wrong-ca")
      ) { etcd in
        do {
          _ = try await etcd.get("/k")
          Issue.record("a client trusting the wrong CA must not get through")
        } catch let error as EtcdError {
          #expect([.unavailable, .timeout].contains(error.code), "\(error)")
          #expect(
            "\(error)".lowercased().contains("certificate")
              || "\(error)".lowercased().contains("tls"),
            "\(error)"
          )
        }
      }
    }
  }

  @Test("a plain-text client against a TLS etcd fails within its deadline")
  func plainAgainstTLS() async throws {
    try await withEtcdCluster(.defaults { $0.tls = true }) { cluster in
      try await withEtcdClient(
        config: .defaults {
          $0.endpoints = cluster.endpoints
          $0.requestTimeout = .seconds(2)
        },
        logger: testLogger("plain")
      ) { etcd in
        let start = ContinuousClock.now
        await expectEtcdError([.unavailable, .timeout]) { try await etcd.get("/k") }
        #expect(ContinuousClock.now - start < .seconds(10))
      }
    }
  }

  @Test(
    "auth: a user with a role on /micro/ works there, is denied elsewhere; wrong password is clear"
  )
  func auth() async throws {
    try await withEtcdCluster { cluster in
      try await withEtcdClient(config: .testing(cluster), logger: testLogger("admin")) {
        admin in
        try await admin.authAdmin.addUser("root", password: "root-pw")
        try await admin.authAdmin.addRole("root")
        try await admin.authAdmin.grantRole("root", to: "root")
        try await admin.authAdmin.addUser("registry", password: "registry-pw")
        try await admin.authAdmin.addRole("registry")
        try await admin.authAdmin.grantReadWrite(role: "registry", on: .prefix("/micro/"))
        try await admin.authAdmin.grantRole("registry", to: "registry")
        try await admin.authAdmin.enable()
      }
      try await withEtcdClient(
        config: .testing(cluster) {
          $0.credentials = .init(username: "registry", password: "registry-pw")
        },
        logger: testLogger("registry-user")
      ) { etcd in
        try await etcd.put("/micro/svc/1.2.3.4:80", value: "v")
        #expect(try await etcd.get(.prefix("/micro/")).kvs.count == 1)
        let recorder = BatchRecorder(etcd.watch(.prefix("/micro/svc/")))
        try await waitUntil("the watch sees a put", within: .seconds(5)) {
          try await etcd.put("/micro/svc/1.2.3.4:80", value: "again")
          return !recorder.events.isEmpty
        }
        await expectEtcdError(.permissionDenied) { try await etcd.put("/elsewhere", value: "v") }
        await expectEtcdError(.permissionDenied) { try await etcd.get("/elsewhere") }
      }
      try await withEtcdClient(
        config: .testing(cluster) {
          $0.credentials = .init(username: "registry", password: "wrong")
        },
        logger: testLogger("wrong-password")
      ) { etcd in
        await expectEtcdError(.authFailed) { try await etcd.get("/micro/x") }
      }
    }
  }

  // Catches a client that never re-authenticates (the second put would fail), that
  // authenticates per request instead of once per token, and streams (a watch, a lease
  // keep-alive, a watch opened after the expiry) that die with the token.
  @Test("an expired auth token is renewed once; watch and keep-alive streams outlive it")
  func tokenExpiry() async throws {
    try await withEtcdCluster(.defaults { $0.authTokenTTL = 1 }) { cluster in
      try await cluster.enableAuth(rootPassword: "pw")
      let logs = LogCapture()
      try await withEtcdClient(
        config: .testing(cluster) {
          $0.credentials = .init(username: "root", password: "pw")
        },
        logger: logs.logger(label: "token-expiry", level: .debug)
      ) { etcd in
        try await etcd.put("/token/k", value: "1")
        #expect(logs.entries(containing: "etcd authenticated").count == 1)
        let watch = BatchRecorder(etcd.watch(.prefix("/token/w/")))
        defer { watch.cancel() }
        try await waitUntil("the watch is live", within: .seconds(5)) {
          try await etcd.put("/token/w/sentinel", value: "x")
          return !watch.events.isEmpty
        }
        let lease = try await etcd.grantLease(ttl: .seconds(2))
        let renewals = Locked(0)
        let keeper = Task {
          for await event in etcd.keepAlive(lease) {
            if case .renewed = event { renewals.withLock { $0 += 1 } }
          }
        }
        defer { keeper.cancel() }
        try await etcd.put("/token/leased", value: "1", lease: lease.id)
        let authentications = logs.entries(containing: "etcd authenticated").count

        // Simple tokens expire after --auth-token-ttl of disuse; wait past it.
        let idle = ContinuousClock.now + .seconds(3)
        try await waitUntil("the token has had time to expire", within: .seconds(5)) {
          ContinuousClock.now >= idle
        }
        try await etcd.put("/token/k", value: "2")
        #expect(try await etcd.get("/token/k")?.valueString == "2")
        #expect(
          logs.entries(containing: "etcd authenticated").count == authentications + 1,
          "one re-authentication after the expiry: \(logs.entries(containing: "authenticated"))"
        )
        // The watch opened before the expiry still delivers; one opened after it works too.
        let before = watch.events.count
        try await cluster.etcdctl(["--user", "root:pw", "put", "/token/w/after", "1"])
        try await watch.waitForEvents(before + 1)
        let late = BatchRecorder(etcd.watch(.prefix("/token/late/")))
        defer { late.cancel() }
        try await waitUntil(
          "a watch opened after the expiry is live (log: \(logs.entries.suffix(8)))",
          within: .seconds(5)
        ) {
          try await etcd.put("/token/late/sentinel", value: "x")
          return !late.events.isEmpty
        }
        // The keep-alive stream kept renewing through the expiry: the 2 s lease outlived 3 s.
        #expect(try await etcd.get("/token/leased") != nil)
        #expect(renewals.withLock { $0 } >= 4)
      }
    }
  }
}

import EtcdHarness
import Foundation
import RegistryTesting
import Testing

@Suite("etcd harness", .timeLimit(.minutes(2)))
struct HarnessSmokeTests {
  @Test(
    "Command.run feeds its input, collects both outputs and the status, and kills at its timeout"
  )
  func command() async throws {
    let echo = try await Command.run(
      "sh",
      ["-c", "read line; echo \"got $line\"; echo oops >&2; exit 7"],
      input: "hello\n"
    )
    #expect(echo.status == 7 && !echo.timedOut)
    #expect(echo.stdout == "got hello\n" && echo.stderr == "oops\n")
    let started = ContinuousClock.now
    let hung = try await Command.run("sleep", ["30"], timeout: .milliseconds(200))
    #expect(hung.timedOut)
    #expect(hung.status == SIGKILL, "the status is the signal that ended it")
    #expect(ContinuousClock.now - started < .seconds(20), "killed, not waited for")
    await #expect(throws: HarnessError.self) {
      try await Command.run("no-such-command-\(UUID().uuidString)", [])
    }
  }

  @Test("a single node starts, stores a key, and is cleaned up")
  func singleNode() async throws {
    let root = try await withEtcdCluster { etcd in
      try await etcd.etcdctl(["put", "/smoke/key", "value"])
      let got = try await etcd.etcdctl(["get", "/smoke/key", "--print-value-only"])
      #expect(got.trimmingCharacters(in: .whitespacesAndNewlines) == "value")
      #expect(etcd.members[0].isRunning)
      return etcd.root
    }
    #expect(!FileManager.default.fileExists(atPath: root), "the data directory is removed")
  }

  @Test("a restarted node keeps its data; a wiped one comes back empty")
  func restart() async throws {
    try await withEtcdCluster { etcd in
      try await etcd.etcdctl(["put", "/smoke/kept", "1"])
      try await etcd.members[0].restart()
      try await etcd.waitUntilHealthy(etcd.members[0])
      #expect(try await etcd.etcdctl(["get", "/smoke/kept", "--print-value-only"]).contains("1"))
      try await etcd.members[0].restart(wipeData: true)
      try await etcd.waitUntilHealthy(etcd.members[0])
      #expect(try await etcd.etcdctl(["get", "/smoke/kept", "--print-value-only"]).isEmpty)
    }
  }

  @Test("a 3-member cluster keeps serving after its leader is killed")
  func clusterLeaderKill() async throws {
    try await withEtcdCluster(.defaults { $0.members = 3 }) { etcd in
      try await etcd.etcdctl(["put", "/smoke/before", "1"])
      let leader = try await etcd.leader()
      await leader.kill()
      #expect(!leader.isRunning)
      let survivors = etcd.members.filter { $0 !== leader }.map(\.endpoint)
      try await waitUntil(
        "the surviving members elect a leader and accept a write",
        within: .seconds(15)
      ) {
        (try? await etcd.etcdctl(
          ["put", "/smoke/after", "2", "--command-timeout=1s"],
          endpoints: survivors
        )) != nil
      }
      let newLeader = try await etcd.leader()
      #expect(newLeader !== leader)
      let value = try await etcd.etcdctl(
        ["get", "/smoke/before", "--print-value-only"],
        endpoints: survivors
      )
      #expect(value.contains("1"))
    }
  }

  @Test("TLS with mutual authentication serves etcdctl with the generated certificates")
  func tls() async throws {
    try await withEtcdCluster(
      .defaults {
        $0.tls = true
        $0.clientCertificateAuth = true
      }
    ) { etcd in
      let certificates = try #require(etcd.certificates)
      try await etcd.etcdctl(["put", "/smoke/tls", "yes"])
      #expect(try await etcd.etcdctl(["get", "/smoke/tls", "--print-value-only"]).contains("yes"))
      #expect(FileManager.default.fileExists(atPath: certificates.caCertificate))
      #expect(etcd.members[0].clientURL.hasPrefix("https://"))
    }
  }

  @Test("auth can be enabled and etcdctl then uses the root user")
  func auth() async throws {
    try await withEtcdCluster { etcd in
      try await etcd.enableAuth()
      try await etcd.etcdctl(["put", "/smoke/auth", "ok"])
      #expect(try await etcd.etcdctl(["get", "/smoke/auth", "--print-value-only"]).contains("ok"))
    }
  }
}

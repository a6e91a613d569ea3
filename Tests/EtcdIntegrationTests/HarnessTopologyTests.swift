import EtcdHarness
import Foundation
import RegistryTesting
import Testing

@Suite("etcd harness topology: grpc-proxy and peer partitions")
struct HarnessTopologyTests {
  @Test(
    "a grpc-proxy serves the cluster's keys and comes back on the same port",
    .timeLimit(.minutes(1)),
    arguments: ["plain", "tls", "mutual tls"]
  )
  func proxy(security: String) async throws {
    let tls = security != "plain"
    let options = EtcdCluster.Config.defaults {
      $0.tls = tls
      $0.clientCertificateAuth = security == "mutual tls"
    }
    let proxy = try await withEtcdCluster(options) { etcd in
      let proxy = try await etcd.startProxy()
      let member = etcd.members[0].endpoint
      #expect(proxy.clientURL.hasPrefix(tls ? "https://" : "http://"))

      try await etcd.etcdctl(["put", "/topology/via-proxy", "p"], endpoints: [proxy.endpoint])
      #expect(try await value("/topology/via-proxy", etcd, member) == "p")
      try await etcd.etcdctl(["put", "/topology/direct", "d"], endpoints: [member])
      #expect(try await value("/topology/direct", etcd, proxy.endpoint) == "d")

      let pid = try #require(proxy.pid)
      try await proxy.restart()
      #expect(proxy.pid != pid)
      #expect(proxy.endpoint == "127.0.0.1:\(proxy.port)")
      #expect(try await value("/topology/direct", etcd, proxy.endpoint) == "d")
      try await etcd.etcdctl(["put", "/topology/after", "a"], endpoints: [proxy.endpoint])
      #expect(try await value("/topology/after", etcd, member) == "a")
      return proxy
    }
    #expect(!proxy.isRunning, "the cluster's shutdown stops its proxies")
  }

  @Test(
    "a member cut off from its peers loses its leader, still answers its clients, and rejoins",
    .timeLimit(.minutes(1))
  )
  func partition() async throws {
    try await withEtcdCluster(.defaults { $0.members = 3 }) { etcd in
      try await etcd.etcdctl(["put", "/topology/before", "1"])
      let leader = try await etcd.leader()
      let isolated = try #require(etcd.members.first { $0 !== leader })
      let other = try #require(etcd.members.first { $0 !== leader && $0 !== isolated })

      try await isolated.isolateFromPeers()
      #expect(isolated.isIsolatedFromPeers)
      try await waitUntil("\(isolated.name) reports no leader", within: .seconds(10)) {
        try await reportedLeader(etcd, isolated) == 0
      }
      #expect(
        await linearizableValue("/topology/before", etcd, isolated) == nil,
        "a linearizable read needs the leader"
      )
      // The majority keeps serving (polled: on a loaded machine a heartbeat may come late and
      // the two hold an election).
      try await waitUntil("the majority serves linearizable reads", within: .seconds(10)) {
        let values = [
          await linearizableValue("/topology/before", etcd, other),
          await linearizableValue("/topology/before", etcd, leader),
        ]
        return values == ["1", "1"]
      }
      #expect(
        try await value("/topology/before", etcd, isolated.endpoint, serializable: true) == "1",
        "clients still reach the isolated member"
      )

      try await put("/topology/during", "2", etcd, [other, leader])
      #expect(
        try await value("/topology/during", etcd, isolated.endpoint, serializable: true) == "",
        "the isolated member does not receive the cluster's writes"
      )

      isolated.rejoinPeers()
      #expect(!isolated.isIsolatedFromPeers)
      try await waitUntil(
        "\(isolated.name) serves linearizable reads again",
        within: .seconds(20),
        pollEvery: .milliseconds(100)
      ) {
        await linearizableValue("/topology/during", etcd, isolated) == "2"
      }
    }
  }

  @Test(
    "a member restarts behind its peer relay, also while it is isolated",
    .timeLimit(.minutes(1))
  )
  func restartBehindRelay() async throws {
    try await withEtcdCluster(.defaults { $0.members = 3 }) { etcd in
      let leader = try await etcd.leader()
      let follower = try #require(etcd.members.first { $0 !== leader })
      try await follower.restart()
      try await etcd.waitUntilHealthy(follower)
      try await etcd.etcdctl(["put", "/topology/restarted", "r"])
      #expect(await linearizableValue("/topology/restarted", etcd, follower) == "r")

      try await follower.isolateFromPeers()
      try await follower.restart()
      #expect(follower.isIsolatedFromPeers, "the cut outlives a restart")
      try await put("/topology/restarted", "s", etcd, etcd.members.filter { $0 !== follower })
      follower.rejoinPeers()
      try await etcd.waitUntilHealthy(follower)
      try await waitUntil(
        "\(follower.name) catches up after rejoining",
        within: .seconds(20),
        pollEvery: .milliseconds(100)
      ) {
        await linearizableValue("/topology/restarted", etcd, follower) == "s"
      }
    }
  }
}

/// Drives ``PeerLinkTable`` event by event, without sockets.
@Suite("peer link table")
struct PeerLinkTableTests {
  @Test("links between members that are not isolated are allowed", .timeLimit(.minutes(1)))
  func allowed() {
    var table = PeerLinkTable<Int>()
    let known = table.open(sender: "m0", receiver: "m1", connection: 1)
    let unknown = table.open(sender: nil, receiver: "m1", connection: 2)
    #expect(known != nil)
    #expect(unknown != nil)
    #expect(table.linkCount == 2)
    #expect(!table.refusesEveryone(to: "m1"))
  }

  @Test(
    "isolating a member cuts the links it sent and received, not the others",
    .timeLimit(.minutes(1))
  )
  func isolateCuts() throws {
    var table = PeerLinkTable<Int>()
    let opened = table.open(sender: "m0", receiver: "m1", connection: 1)
    let sent = try #require(opened)
    let attached = table.attach(11, to: sent)
    #expect(attached)
    _ = table.open(sender: "m1", receiver: "m0", connection: 2)
    _ = table.open(sender: "m1", receiver: "m2", connection: 3)
    _ = table.open(sender: "m2", receiver: "m1", connection: 4)
    let cut = table.isolate("m0")
    #expect(cut.sorted() == [1, 2, 11])
    #expect(table.linkCount == 2)
    #expect(table.isIsolated("m0"))
    #expect(table.refusesEveryone(to: "m0"))
    let fromIsolated = table.open(sender: "m0", receiver: "m1", connection: 5)
    let toIsolated = table.open(sender: "m1", receiver: "m0", connection: 6)
    let elsewhere = table.open(sender: "m1", receiver: "m2", connection: 7)
    #expect(fromIsolated == nil)
    #expect(toIsolated == nil)
    #expect(elsewhere != nil)
  }

  @Test(
    "a link from an unknown sender is refused and cut while any member is isolated",
    .timeLimit(.minutes(1))
  )
  func unknownSender() {
    var table = PeerLinkTable<Int>()
    _ = table.open(sender: nil, receiver: "m2", connection: 1)
    let cut = table.isolate("m0")
    #expect(cut == [1])
    let during = table.open(sender: nil, receiver: "m2", connection: 2)
    #expect(during == nil)
    table.rejoin("m0")
    let after = table.open(sender: nil, receiver: "m2", connection: 3)
    #expect(after != nil)
  }

  @Test("a link cut while the relay dials etcd cannot be completed", .timeLimit(.minutes(1)))
  func attachAfterCut() {
    var table = PeerLinkTable<Int>()
    let id = table.open(sender: "m0", receiver: "m1", connection: 1)
    let cut = table.isolate("m1")
    #expect(cut == [1])
    let attached = id.map { table.attach(2, to: $0) }
    #expect(attached == false, "the caller closes the connection to etcd")
    if let id { table.remove(id) }
    #expect(table.linkCount == 0)
  }

  @Test(
    "rejoining allows new links; closing returns every connection and refuses all",
    .timeLimit(.minutes(1))
  )
  func rejoinAndClose() {
    var table = PeerLinkTable<Int>()
    _ = table.isolate("m0")
    table.rejoin("m0")
    #expect(!table.isIsolated("m0"))
    let id = table.open(sender: "m0", receiver: "m1", connection: 1)
    let attached = id.map { table.attach(2, to: $0) }
    #expect(attached == true)
    let closed = table.close()
    #expect(closed.sorted() == [1, 2])
    #expect(table.refusesEveryone(to: "m1"))
    let afterClose = table.open(sender: "m0", receiver: "m1", connection: 3)
    #expect(afterClose == nil)
    let again = table.close()
    #expect(again.isEmpty)
  }
}

/// The value of `key` read through `endpoint` (empty when the key does not exist).
private func value(
  _ key: String,
  _ etcd: EtcdCluster,
  _ endpoint: String,
  serializable: Bool = false
) async throws -> String {
  let output = try await etcd.etcdctl(
    ["get", key, "--print-value-only", "--command-timeout=1s"]
      + (serializable ? ["--consistency=s"] : []),
    endpoints: [endpoint]
  )
  return output.trimmingCharacters(in: .whitespacesAndNewlines)
}

/// Writes `key` through `members`, polling while the majority may be electing a leader.
private func put(
  _ key: String,
  _ value: String,
  _ etcd: EtcdCluster,
  _ members: [EtcdNode]
) async throws {
  try await waitUntil("\(key) is written", within: .seconds(10), pollEvery: .milliseconds(100)) {
    (try? await etcd.etcdctl(
      ["put", key, value, "--command-timeout=2s"],
      endpoints: members.map(\.endpoint)
    )) != nil
  }
}

/// A linearizable read of `key` on `member`'s client endpoint, or `nil` when it fails.
private func linearizableValue(
  _ key: String,
  _ etcd: EtcdCluster,
  _ member: EtcdNode
) async -> String? {
  try? await value(key, etcd, member.endpoint)
}

/// The leader id `member` reports in `endpoint status` (0 when it has none).
private func reportedLeader(_ etcd: EtcdCluster, _ member: EtcdNode) async throws -> UInt64 {
  let output = try await etcd.etcdctl(
    ["endpoint", "status", "-w", "json", "--command-timeout=1s"],
    endpoints: [member.adminEndpoint]
  )
  let statuses = try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [[String: Any]]
  let status = try #require(statuses?.first?["Status"] as? [String: Any])
  return (status["leader"] as? NSNumber)?.uint64Value ?? 0
}

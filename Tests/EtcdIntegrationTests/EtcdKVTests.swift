import Etcd
import EtcdHarness
import Foundation
import RegistryTesting
import Testing

@Suite("EtcdClient KV", .timeLimit(.minutes(2)))
struct EtcdKVTests {
  @Test("put, get, prefix, range, limit, revision, keys-only, count-only, delete")
  func kv() async throws {
    try await withEtcdClient { etcd, cluster in
      let p = uniquePrefix()
      let first = try await etcd.put(p + "a", value: "1")
      try await etcd.put(p + "b", value: "2")
      try await etcd.put(p + "c", value: "3")
      try await etcd.put(p.dropLast() + "-other/x", value: "outside")
      let updated = try await etcd.put(p + "a", value: "1b", previous: true)
      #expect(updated.previous?.valueString == "1")
      #expect(updated.header.revision > first.header.revision)

      #expect(try await etcd.get(p + "a")?.valueString == "1b")
      #expect(try await etcd.get(p + "missing") == nil)

      let all = try await etcd.get(.prefix(p))
      #expect(all.kvs.map(\.keyString) == [p + "a", p + "b", p + "c"])
      #expect(all.count == 3)

      let range = try await etcd.get(.range(from: p + "b", to: p + "d"))
      #expect(range.kvs.map(\.valueString) == ["2", "3"])

      var limited = EtcdGetOptions()
      limited.limit = 2
      let page = try await etcd.get(.prefix(p), options: limited)
      #expect(page.kvs.count == 2)
      #expect(page.more)
      #expect(page.count == 3)

      var old = EtcdGetOptions()
      old.revision = first.header.revision
      #expect(try await etcd.get(.key(p + "a"), options: old).kvs.first?.valueString == "1")

      var keysOnly = EtcdGetOptions()
      keysOnly.keysOnly = true
      keysOnly.serializable = true
      let keys = try await etcd.get(.prefix(p), options: keysOnly)
      #expect(keys.kvs.allSatisfy { $0.value.isEmpty })
      #expect(keys.kvs.count == 3)

      var countOnly = EtcdGetOptions()
      countOnly.countOnly = true
      let counted = try await etcd.get(.prefix(p), options: countOnly)
      #expect(counted.count == 3)
      #expect(counted.kvs.isEmpty)

      var descending = EtcdGetOptions()
      descending.sortOrder = .descending
      #expect(
        try await etcd.get(.prefix(p), options: descending).kvs.map(\.valueString) == [
          "3", "2", "1b",
        ]
      )

      let deleted = try await etcd.delete(.prefix(p), previous: true)
      #expect(deleted.deleted == 3)
      #expect(deleted.previous.count == 3)
      #expect(try await etcd.get(.prefix(p)).kvs.isEmpty)
      #expect(try await etcd.get(p.dropLast() + "-other/x")?.valueString == "outside")
      _ = cluster
    }
  }

  @Test("transactions: compare on version, create and mod revision, value, lease; then and else")
  func transactions() async throws {
    try await withEtcdClient { etcd, _ in
      let key = uniquePrefix() + "lock"
      let create = try await etcd.transaction(
        if: [.version(of: key, .equal, 0)],
        then: [.put(key, value: Array("owner-1".utf8))],
        else: [.get(.key(key))]
      )
      #expect(create.succeeded)
      let again = try await etcd.transaction(
        if: [.version(of: key, .equal, 0)],
        then: [.put(key, value: Array("owner-2".utf8))],
        else: [.get(.key(key))]
      )
      #expect(!again.succeeded)
      guard case .get(let current) = again.responses.first else {
        Issue.record("expected the else branch's get: \(again.responses)")
        return
      }
      #expect(current.kvs.first?.valueString == "owner-1")
      let kv = try #require(current.kvs.first)
      #expect(
        try await etcd.transaction(
          if: [
            .modRevision(of: key, .equal, kv.modRevision),
            .createRevision(of: key, .equal, kv.createRevision),
          ],
          then: [.delete(.key(key))]
        ).succeeded
      )
      #expect(try await etcd.get(key) == nil)
      try await etcd.put(key, value: "v")
      #expect(
        try await etcd.transaction(if: [.value(of: key, .equal, Array("v".utf8))], then: [])
          .succeeded
      )
      #expect(
        try await !etcd.transaction(if: [.value(of: key, .greater, Array("w".utf8))], then: [])
          .succeeded
      )
      #expect(try await etcd.transaction(if: [.lease(of: key, .equal, 0)], then: []).succeeded)
    }
  }

  @Test("bad input is a typed error and the client keeps working")
  func badInput() async throws {
    try await withEtcdClient { etcd, _ in
      await expectEtcdError(.invalidArgument) { try await etcd.put("", value: "x") }
      await expectEtcdError(.invalidArgument) { try await etcd.get(.range(from: "/b", to: "/a")) }
      await expectEtcdError(.invalidArgument) { try await etcd.delete(.key("")) }
      // etcd refuses requests over 1.5 MiB by default.
      await expectEtcdError(.invalidArgument) {
        try await etcd.put(
          uniquePrefix() + "big",
          value: [UInt8](repeating: 7, count: 2 * 1024 * 1024)
        )
      }
      await expectEtcdError(.leaseNotFound) {
        try await etcd.put(uniquePrefix() + "k", value: "v", lease: 12345)
      }
      let key = uniquePrefix() + "after"
      try await etcd.put(key, value: "still works")
      #expect(try await etcd.get(key)?.valueString == "still works")
    }
  }

  @Test("a client with no reachable endpoint fails within its deadline with a clear error")
  func unreachable() async throws {
    let port = try await withEtcdCluster { cluster in cluster.members[0].clientPort }
    try await withEtcdClient(
      config: .defaults {
        $0.endpoints = ["127.0.0.1:\(port)"]
        $0.requestTimeout = .milliseconds(800)
      },
      logger: testLogger("unreachable")
    ) { etcd in
      let start = ContinuousClock.now
      await expectEtcdError([.unavailable, .timeout]) { try await etcd.get("/anything") }
      #expect(ContinuousClock.now - start < .seconds(5))
    }
  }

  @Test("invalid endpoints are refused when the client is made")
  func invalidEndpoints() {
    for endpoints in [[], ["http://127.0.0.1:2379"], ["127.0.0.1"], ["127.0.0.1:0"]] {
      #expect(throws: EtcdError.self) {
        _ = try EtcdClient(
          config: .defaults { $0.endpoints = endpoints },
          logger: testLogger("x")
        )
      }
    }
  }

  @Test("status and member list")
  func status() async throws {
    try await withEtcdClient { etcd, cluster in
      let status = try await etcd.status()
      #expect(status.version.hasPrefix("3."))
      #expect(status.leader != 0)
      #expect(status.dbSize > 0)
      let members = try await etcd.members()
      #expect(members.count == 1)
      #expect(members.first?.clientURLs.first == cluster.members[0].clientURL)
    }
  }
}

func expectEtcdError(
  _ codes: [EtcdError.Code],
  sourceLocation: SourceLocation = #_sourceLocation,
  _ body: () async throws -> some Any
) async {
  do {
    _ = try await body()
    Issue.record("expected an EtcdError \(codes)", sourceLocation: sourceLocation)
  } catch let error as EtcdError {
    #expect(codes.contains(error.code), "got \(error)", sourceLocation: sourceLocation)
    #expect(!error.message.isEmpty, sourceLocation: sourceLocation)
  } catch {
    Issue.record(
      "expected an EtcdError \(codes), got \(type(of: error)): \(error)",
      sourceLocation: sourceLocation
    )
  }
}

func expectEtcdError(
  _ code: EtcdError.Code,
  sourceLocation: SourceLocation = #_sourceLocation,
  _ body: () async throws -> some Any
) async {
  await expectEtcdError([code], sourceLocation: sourceLocation, body)
}

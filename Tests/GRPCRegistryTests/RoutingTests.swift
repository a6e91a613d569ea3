import GRPCCore
import RegistryCore
import Testing

@testable import GRPCRegistry

/// Subsetting and metadata preference through the transport, with real servers: the balancer's
/// decisions (unit-tested in `BalancerTests`) reach the calls.
@Suite("Routing through the transport")
struct RoutingTests {
  // Catches: a preference set on the transport or on the task that never reaches the picker,
  // or a fallback that never happens.
  @Test("calls prefer the caller's zone, per transport and per task, and fall back when it is down")
  func zonePreference() async throws {
    let registry = InMemoryRegistry()
    let a = [
      try await TestServer.start(metadata: ["zone": "a"], registry: registry),
      try await TestServer.start(metadata: ["zone": "a"], registry: registry),
    ]
    let b = try await TestServer.start(metadata: ["zone": "b"], registry: registry)
    let zoneA = Set(a.map(\.address))
    let config = RegistryClientTransport.Config.defaults {
      $0.metadataPreference = .init(["zone": "a"])
    }
    try await withBalancedClient(registry: registry, config: config) { transport, users in
      try await waitUntilPreferred(transport, a.map(\.address) + [b.address])
      var seen = Set<String>()
      for id in 0 ..< 60 { seen.insert(try await getName(users, id: Int64(id))) }
      #expect(seen == zoneA)
      // The task's preference overrides the transport's.
      let inB = try await withRegistryMetadataPreference(.init(["zone": "b"])) {
        try await getName(users)
      }
      #expect(inB == b.address)
      // Zone a gone: its calls go to zone b.
      for server in a { try await server.stopGracefully() }
      try await waitUntilPreferred(transport, [b.address])
      #expect(try await getName(users) == b.address)
    }
    try await b.stopGracefully()
  }

  // Catches: a subsetting configuration that the transport ignores (connecting to everyone), or
  // a group call that fails because none of its instances were in the subset.
  @Test("with subsetting the transport connects to its subset; a group outside it is still reached")
  func subsetting() async throws {
    let registry = InMemoryRegistry()
    var servers: [TestServer] = []
    for _ in 0 ..< 4 { servers.append(try await TestServer.start(registry: registry)) }
    let grouped = try await TestServer.start(group: "G", registry: registry)
    // Client i of 5 over 5 instances starts at the i-th address: start two after the grouped
    // one, so that the subset of 2 leaves it out.
    let sorted = (servers + [grouped]).map(\.address).sorted()
    let first = (sorted.firstIndex(of: grouped.address)! + 2) % 5
    let config = RegistryClientTransport.Config.defaults {
      $0.subsetting = .init(subsetSize: 2, threshold: 2, position: .index(first, of: 5))
    }
    let expected = [sorted[first], sorted[(first + 1) % 5]]
    try await withBalancedClient(registry: registry, config: config) { transport, users in
      try await waitUntilPreferred(transport, expected)
      var seen = Set<String>()
      for id in 0 ..< 40 { seen.insert(try await getName(users, id: Int64(id))) }
      #expect(seen == Set(expected))
      #expect(transport.instanceStatuses.count == 2)
      #expect(!expected.contains(grouped.address))
      let name = try await withRegistryGroup("G") { try await getName(users) }
      #expect(name == grouped.address)
      #expect(transport.instanceStatuses.count == 3)
    }
    for server in servers + [grouped] { try await server.stopGracefully() }
  }
}

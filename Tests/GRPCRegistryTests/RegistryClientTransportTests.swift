import GRPCConnection
import GRPCCore
import GRPCNIOTransportHTTP2
import RegistryCore
import RegistryTesting
import ServiceContextModule
import Synchronization
import Testing
import UserService

@testable import GRPCRegistry

// Serialized: these tests drive thousands of calls each, and two cores shared by parallel
// tests would make their deadlines about CPU starvation rather than behaviour.
@Suite("balanced transport", .serialized, .timeLimit(.minutes(5)))
struct RegistryClientTransportTests {
  @Test("6,000 calls follow weights 1:2:3 within 3 %", arguments: [false, true])
  func weightedDistribution(stockConnections: Bool) async throws {
    let registry = InMemoryRegistry()
    var servers: [TestServer] = []
    for weight in 1 ... 3 {
      servers.append(try await TestServer.start(weight: weight, registry: registry))
    }
    let config = RegistryClientTransport.Config.defaults {
      if stockConnections { $0.connection = .posix }
    }
    let tally = CallTally()
    try await withBalancedClient(registry: registry, config: config) { transport, users in
      try await waitUntilPreferred(transport, servers.map(\.address))
      await withDiscardingTaskGroup { group in
        for caller in 0 ..< 8 {
          group.addTask {
            for call in 0 ..< 750 {
              do {
                tally.success(try await getName(users, id: Int64(caller * 1000 + call)))
              } catch {
                tally.failure(error)
              }
            }
          }
        }
      }
    }
    #expect(tally.failed == 0, "\(tally.errors)")
    let total = Double(tally.total)
    #expect(total == 6000)
    for (index, server) in servers.enumerated() {
      let expected = total * Double(index + 1) / 6
      let actual = Double(tally.perServer[server.address] ?? 0)
      #expect(
        abs(actual - expected) <= expected * 0.03,
        "weight \(index + 1): \(actual) of \(total)"
      )
    }
    for server in servers { try await server.stopGracefully() }
  }

  @Test("calls in a group land only in that group; the call's group overrides the target's")
  func groupRouting() async throws {
    let registry = InMemoryRegistry()
    let a1 = try await TestServer.start(group: "A", registry: registry)
    let a2 = try await TestServer.start(weight: 3, group: "A", registry: registry)
    let b = try await TestServer.start(group: "B", registry: registry)
    let groupA = Set([a1.address, a2.address])

    try await withBalancedClient(.registry(service: "user-server", group: "B"), registry: registry)
    {
      transport,
      users in
      try await waitUntilPreferred(transport, [a1.address, a2.address, b.address])
      var seenA = Set<String>()
      for id in 0 ..< 300 {
        let name = try await withRegistryGroup("A") { try await getName(users, id: Int64(id)) }
        #expect(groupA.contains(name))
        seenA.insert(name)
      }
      #expect(seenA == groupA)
      // Without a group of its own, a call goes to the target's group.
      for id in 0 ..< 50 {
        #expect(try await getName(users, id: Int64(id)) == b.address)
      }
      // Nested: the innermost group wins.
      let nested = try await withRegistryGroup("A") {
        try await withRegistryGroup("B") { try await getName(users) }
      }
      #expect(nested == b.address)
    }
    for server in [a1, a2, b] { try await server.stopGracefully() }
  }

  @Test("a ServiceContext's registry group routes calls; withRegistryGroup overrides it")
  func serviceContextGroup() async throws {
    let registry = InMemoryRegistry()
    let a = try await TestServer.start(group: "A", registry: registry)
    let b = try await TestServer.start(group: "B", registry: registry)
    try await withBalancedClient(registry: registry) { transport, users in
      try await waitUntilPreferred(transport, [a.address, b.address])
      var context = ServiceContext.topLevel
      context.registryGroup = "A"
      try await ServiceContext.withValue(context) {
        #expect(currentRegistryGroup == "A")
        for id in 0 ..< 20 {
          #expect(try await getName(users, id: Int64(id)) == a.address)
        }
        let overridden = try await withRegistryGroup("B") { try await getName(users) }
        #expect(overridden == b.address)
      }
      // An empty group in the context means no group: both instances get calls.
      context.registryGroup = ""
      let names = try await ServiceContext.withValue(context) {
        var names = Set<String>()
        for id in 0 ..< 20 { names.insert(try await getName(users, id: Int64(id))) }
        return names
      }
      #expect(names == [a.address, b.address])
    }
    for server in [a, b] { try await server.stopGracefully() }
  }

  @Test("a group with no instances fails with unavailable naming the service and group")
  func unknownGroup() async throws {
    let registry = InMemoryRegistry()
    let server = try await TestServer.start(group: "A", registry: registry)
    try await withBalancedClient(registry: registry) { transport, users in
      try await waitUntilPreferred(transport, [server.address])
      await #expect {
        try await withRegistryGroup("C") { try await getName(users) }
      } throws: { error in
        guard let error = error as? RPCError else { return false }
        return error.code == .unavailable && error.message.contains("'user-server'")
          && error.message.contains("group 'C'") && error.message.contains("A")
      }
    }
    try await server.stopGracefully()
  }

  @Test("rolling restart of 4 servers under 8 callers: no call fails")
  func rollingRestart() async throws {
    let registry = InMemoryRegistry()
    var servers: [TestServer] = []
    for _ in 0 ..< 4 { servers.append(try await TestServer.start(registry: registry)) }
    let tally = CallTally()
    let stop = Flag()
    try await withBalancedClient(registry: registry) { transport, users in
      try await waitUntilPreferred(transport, servers.map(\.address))
      try await withThrowingDiscardingTaskGroup { group in
        group.addTask { await runCallers(8, users: users, tally: tally, until: stop) }
        defer { stop.set() }
        for index in servers.indices {
          let before = tally.total
          try await servers[index].stopGracefully()
          servers[index] = try await TestServer.start(registry: registry)
          try await waitUntilPreferred(transport, servers.map(\.address))
          // Let calls flow over the new set before the next restart.
          try await waitUntil("calls continue", within: .seconds(30)) { tally.total > before + 100 }
        }
      }
      try await waitUntil("the transport holds only the final servers", within: .seconds(5)) {
        transport.instanceStatuses.map(\.instance.address).sorted()
          == servers.map(\.address).sorted()
      }
    }
    #expect(tally.failed == 0, "\(tally.failed) of \(tally.total) failed: \(tally.errors)")
    #expect(tally.total > 400)
    for server in servers { try await server.stopGracefully() }
  }

  // Catches a transport that ignores removals (the removed server keeps running, so calls to it
  // would succeed) or never takes a re-added instance back: each cycle checks where calls go.
  @Test(
    "100 remove/re-add cycles of one instance under 4 callers: no call fails, none reaches it while removed"
  )
  func removeReAddCycles() async throws {
    let registry = InMemoryRegistry()
    let servers = [
      try await TestServer.start(registry: registry),
      try await TestServer.start(registry: registry),
    ]
    let cycled = try await TestServer.start(registry: registry)
    let instance = try #require(
      try await registry.instances(of: "user-server").first { $0.address == cycled.address }
    )
    let tally = CallTally()
    let stop = Flag()
    try await withBalancedClient(registry: registry) { transport, users in
      try await waitUntilPreferred(transport, (servers + [cycled]).map(\.address))
      try await withThrowingDiscardingTaskGroup { group in
        group.addTask { await runCallers(4, users: users, tally: tally, until: stop) }
        defer { stop.set() }
        for cycle in 0 ..< 100 {
          try await cycled.registry.deregister(service: "user-server", address: cycled.address)
          try await waitUntil("cycle \(cycle): the transport drops it", within: .seconds(30)) {
            !transport.instanceStatuses.contains { $0.instance.address == cycled.address }
          }
          // Calls that were already on it may still end there; none may start there now.
          let reachedWhileOut = tally.perServer[cycled.address, default: 0]
          let before = tally.total
          try await waitUntil(
            "cycle \(cycle): calls continue while it is out",
            within: .seconds(30)
          ) {
            tally.total > before + 8
          }
          #expect(
            tally.perServer[cycled.address, default: 0] <= reachedWhileOut + 4,
            "cycle \(cycle): calls reached a removed instance"
          )
          try await cycled.registry.register(instance)
          let reached = tally.perServer[cycled.address, default: 0]
          try await waitUntil(
            "cycle \(cycle): calls reach it once it is back",
            within: .seconds(30)
          ) {
            tally.perServer[cycled.address, default: 0] > reached + 4
          }
        }
      }
      // It is still in use after the last cycle.
      try await waitUntilPreferred(transport, (servers + [cycled]).map(\.address))
    }
    #expect(tally.failed == 0, "\(tally.failed) of \(tally.total) failed: \(tally.errors)")
    for server in servers + [cycled] { try await server.stopGracefully() }
  }

  @Test("an abruptly stopped server stops getting calls at once and leaves discovery with its TTL")
  func abruptStop() async throws {
    let registry = InMemoryRegistry()
    let ttl = Duration.milliseconds(500)
    let survivors = [
      try await TestServer.start(registry: registry, ttl: ttl),
      try await TestServer.start(registry: registry, ttl: ttl),
    ]
    let victim = try await TestServer.start(registry: registry, ttl: ttl)
    let victimAddress = victim.address
    let tally = CallTally()
    let stop = Flag()
    try await withBalancedClient(registry: registry) { transport, users in
      try await waitUntilPreferred(transport, (survivors + [victim]).map(\.address))
      try await withThrowingDiscardingTaskGroup { group in
        group.addTask { await runCallers(4, users: users, tally: tally, until: stop) }
        defer { stop.set() }
        try await waitUntil(
          "calls flow (\(tally.total) calls, \(tally.failed) failed: \(tally.errors))",
          within: .seconds(30)
        ) { tally.total > 100 }
        await victim.kill()
        // Health stream broken and connection lost: out of the preferred set long before the TTL.
        try await waitUntilPreferred(transport, survivors.map(\.address), within: .seconds(2))
        // Calls picked before routing stopped may still finish there; then nothing more may.
        try await waitUntil("the killed server's last calls ended") {
          (transport.instanceStatuses.first { $0.instance.address == victimAddress }?
            .outstandingCalls ?? 0)
            == 0
        }
        let failedAtKill = tally.failed
        let servedBefore = tally.perServer[victimAddress] ?? 0
        let before = tally.total
        try await waitUntil("calls continue", within: .seconds(30)) { tally.total > before + 300 }
        #expect(tally.failed == failedAtKill, "calls failed after routing stopped: \(tally.errors)")
        // A caller tallies just after its call released the instance: one per caller may lag.
        #expect(tally.perServer[victimAddress] ?? 0 <= servedBefore + 4)
        // Failed calls are only those in flight on the dead connection.
        #expect(failedAtKill <= 4 * 2, "\(tally.errors)")
        try await waitUntil("the killed instance left discovery", within: ttl + .seconds(2)) {
          !transport.instanceStatuses.contains { $0.instance.address == victimAddress }
        }
      }
    }
    for server in survivors { try await server.stopGracefully() }
  }

  @Test("an instance reporting NOT_SERVING gets no calls until it serves again")
  func healthNotServing() async throws {
    let registry = InMemoryRegistry()
    let healthy = try await TestServer.start(registry: registry)
    // A plain server with a health service the test controls.
    let health = HealthService()
    let transport = HTTP2ServerTransport.Posix(
      address: .ipv4(host: "127.0.0.1", port: 0),
      transportSecurity: .plaintext
    )
    let server = GRPCServer(
      transport: transport,
      services: [UserDirectory(name: "controlled"), health]
    )
    try await withThrowingDiscardingTaskGroup { group in
      group.addTask { try await server.serve() }
      let port = try #require(try await transport.listeningAddress.ipv4).port
      health.setStatus(.serving)
      try await registry.register(
        ServiceInstance(name: "user-server", address: "127.0.0.1:\(port)")
      )
      try await withBalancedClient(registry: registry) { balanced, users in
        try await waitUntilPreferred(balanced, [healthy.address, "127.0.0.1:\(port)"])
        health.setStatus(.notServing)
        try await waitUntilPreferred(balanced, [healthy.address])
        #expect(
          balanced.instanceStatuses.first { $0.instance.address == "127.0.0.1:\(port)" }?.health
            == .notServing
        )
        for id in 0 ..< 200 {
          #expect(try await getName(users, id: Int64(id)) == healthy.address)
        }
        health.setStatus(.serving)
        try await waitUntilPreferred(balanced, [healthy.address, "127.0.0.1:\(port)"])
        var names = Set<String>()
        for id in 0 ..< 20 { names.insert(try await getName(users, id: Int64(id))) }
        #expect(names == [healthy.address, "controlled"])
      }
      health.shutdown()
      server.beginGracefulShutdown()
    }
    try await healthy.stopGracefully()
  }

  @Test("an instance without the health service is routed by its connection alone")
  func noHealthService() async throws {
    let registry = InMemoryRegistry()
    let transport = HTTP2ServerTransport.Posix(
      address: .ipv4(host: "127.0.0.1", port: 0),
      transportSecurity: .plaintext
    )
    let server = GRPCServer(transport: transport, services: [UserDirectory(name: "plain")])
    try await withThrowingDiscardingTaskGroup { group in
      group.addTask { try await server.serve() }
      let port = try #require(try await transport.listeningAddress.ipv4).port
      try await registry.register(
        ServiceInstance(name: "user-server", address: "127.0.0.1:\(port)")
      )
      try await withBalancedClient(registry: registry) { balanced, users in
        try await waitUntilPreferred(balanced, ["127.0.0.1:\(port)"])
        #expect(balanced.instanceStatuses.first?.health == .notChecked)
        #expect(try await getName(users) == "plain")
      }
      server.beginGracefulShutdown()
    }
  }

  @Test("power of two choices spreads calls over every instance")
  func powerOfTwoChoices() async throws {
    let registry = InMemoryRegistry()
    var servers: [TestServer] = []
    for _ in 0 ..< 3 { servers.append(try await TestServer.start(registry: registry)) }
    let config = RegistryClientTransport.Config.defaults { $0.loadBalancing = .powerOfTwoChoices }
    let tally = CallTally()
    try await withBalancedClient(registry: registry, config: config) { transport, users in
      try await waitUntilPreferred(transport, servers.map(\.address))
      for id in 0 ..< 300 { tally.success(try await getName(users, id: Int64(id))) }
    }
    #expect(Set(tally.perServer.keys) == Set(servers.map(\.address)))
    for server in servers { try await server.stopGracefully() }
  }

  // Catches a transport that lets a call fail on an unreachable instance (no retry elsewhere)
  // or keeps it in the first tier of the picker. The ejection itself, which the stock
  // connection needs because it reports every instance as connected, is counted in
  // `TransportMetricsTests.failoverEjectionReadmission`.
  @Test(
    "an unreachable instance takes no call: a stream that cannot start is retried elsewhere, and it leaves the first tier"
  )
  func failoverAndEjection() async throws {
    let registry = InMemoryRegistry()
    let live = try await TestServer.start(registry: registry)
    // Nothing listens on port 1: every stream to it fails before it starts.
    try await registry.register(ServiceInstance(name: "user-server", address: "127.0.0.1:1"))
    let config = RegistryClientTransport.Config.defaults {
      $0.healthChecking = nil
      $0.outlierDetection.consecutiveFailures = 2
    }
    try await withBalancedClient(registry: registry, config: config) { transport, users in
      try await waitUntil("both instances are known", within: .seconds(5)) {
        transport.instanceStatuses.count == 2
      }
      for id in 0 ..< 50 {
        #expect(try await getName(users, id: Int64(id)) == live.address)
      }
      let dead = try #require(
        transport.instanceStatuses.first { $0.instance.address.hasSuffix(":1") }
      )
      #expect(!dead.isPreferred, "\(dead)")
      #expect(!dead.isConnected || dead.isEjected, "\(dead)")
    }
    try await live.stopGracefully()
  }

  // Catches a transport that empties its instances (or stops retrying) when the registry's
  // watch throws, and a failure that is not logged with the service and the error.
  @Test("a registry watch that throws keeps the last instances in use, is retried, and is logged")
  func watchFailureKeepsInstances() async throws {
    let base = InMemoryRegistry()
    let server = try await TestServer.start(registry: base)
    let registry = FailingWatchRegistry(base: base)
    let logs = LogCapture()
    let config = RegistryClientTransport.Config.defaults {
      $0.registryBackoff = HTTP2Connection.Backoff(
        initial: .milliseconds(10),
        maximum: .milliseconds(40),
        multiplier: 2,
        jitter: 0
      )
    }
    try await withBalancedClient(registry: registry, config: config, logger: logs.logger()) {
      transport,
      users in
      try await waitUntil("the watch failed and was retried three times", within: .seconds(10)) {
        registry.subscriptions >= 4
      }
      for id in 0 ..< 20 { #expect(try await getName(users, id: Int64(id)) == server.address) }
      #expect(transport.instanceStatuses.map(\.instance.address) == [server.address])
    }
    let warnings = logs.entries(containing: "Registry watch failed")
    #expect(warnings.count >= 3, "\(logs.entries)")
    let warning = try #require(warnings.first)
    #expect(warning.level == .warning)
    #expect(warning.metadata["registry.service"] == "user-server")
    #expect(warning.metadata["registry.error"] == "the watch broke (test)")
    #expect(warning.metadata["registry.retry_in"] != nil)
    try await server.stopGracefully()
  }

  @Test("calls made before the registry answers wait for it")
  func waitsForFirstAnswer() async throws {
    let registry = InMemoryRegistry()
    let server = try await TestServer.start(registry: registry)
    let transport = RegistryClientTransport(
      target: .registry(service: "user-server"),
      registry: registry,
      logger: testLogger()
    )
    let client = GRPCClient(transport: transport)
    let users = User_UserMesService.Client(wrapping: client)
    try await withThrowingDiscardingTaskGroup { group in
      group.addTask {
        // The first call starts before the client runs; it must wait, not fail.
        let name = try await getName(users)
        #expect(name == server.address)
        client.beginGracefulShutdown()
      }
      group.addTask { try await client.runConnections() }
    }
    try await server.stopGracefully()
  }
}

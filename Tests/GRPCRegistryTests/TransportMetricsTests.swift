import GRPCCore
import MetricsTestKit
import RegistryCore
import RegistryPrimitives
import RegistryTesting
import Testing
import UserService

@testable import GRPCRegistry

@Suite("balanced transport metrics", .serialized, .timeLimit(.minutes(2)))
struct TransportMetricsTests {
  @Test("calls are counted per instance, in proportion to the weights")
  func callsPerInstance() async throws {
    let registry = InMemoryRegistry()
    let light = try await TestServer.start(weight: 1, registry: registry)
    let heavy = try await TestServer.start(weight: 3, registry: registry)
    let metrics = TestMetrics()
    let config = RegistryClientTransport.Config.defaults { $0.metricsFactory = metrics }
    try await withBalancedClient(registry: registry, config: config) { transport, users in
      try await waitUntilPreferred(transport, [light.address, heavy.address])
      for id in 0 ..< 400 { _ = try await getName(users, id: Int64(id)) }
      let lightCalls = try metrics.expectCounter(
        "registry_client_calls_total",
        [("service", "user-server"), ("instance", light.address)]
      ).totalValue
      let heavyCalls = try metrics.expectCounter(
        "registry_client_calls_total",
        [("service", "user-server"), ("instance", heavy.address)]
      ).totalValue
      #expect(lightCalls + heavyCalls == 400)
      #expect((90 ... 110).contains(lightCalls), "weight 1 of 4: \(lightCalls) of 400")
      #expect(metrics.counterTotal(label: "registry_client_failovers_total") == 0)
      #expect(metrics.counterTotal(label: "registry_client_ejections_total") == 0)
    }
    // The transport has shut down: no per-instance series outlive it.
    #expect(metrics.counters(label: "registry_client_calls_total", dimensions: []).isEmpty)
    for server in [light, heavy] { try await server.stopGracefully() }
  }

  @Test(
    "an instance that leaves the registry takes its series along; one that comes back starts from zero"
  )
  func seriesOfRemovedInstancesAreDestroyed() async throws {
    let registry = InMemoryRegistry()
    let staying = try await TestServer.start(registry: registry)
    let leaving = try await TestServer.start(registry: registry)
    let metrics = TestMetrics()
    let config = RegistryClientTransport.Config.defaults { $0.metricsFactory = metrics }
    func calls(_ address: String) -> Int64? {
      metrics.counters(
        label: "registry_client_calls_total",
        dimensions: [("service", "user-server"), ("instance", address)]
      ).first?.totalValue
    }
    try await withBalancedClient(registry: registry, config: config) { transport, users in
      try await waitUntilPreferred(transport, [staying.address, leaving.address])
      for id in 0 ..< 40 { _ = try await getName(users, id: Int64(id)) }
      #expect((calls(leaving.address) ?? 0) > 0)

      let instance = try await leaving.server.registeredInstance()
      try await leaving.registry.deregister(service: instance.name, address: instance.address)
      try await waitUntil("the left instance's series is destroyed", within: .seconds(10)) {
        calls(leaving.address) == nil
      }
      #expect((calls(staying.address) ?? 0) > 0, "the staying instance keeps its series")

      // Back under the same address: a new series, counting from zero.
      try await leaving.registry.register(instance)
      try await waitUntilPreferred(transport, [staying.address, leaving.address])
      try await waitUntil("the returned instance takes calls again", within: .seconds(10)) {
        _ = try await getName(users)
        return (calls(leaving.address) ?? 0) > 0
      }
      #expect((calls(leaving.address) ?? 0) < 40)
    }
    for server in [staying, leaving] { try await server.stopGracefully() }
  }

  @Test(
    "an unreachable instance: calls fail over and it is ejected; once it serves, it is re-admitted"
  )
  func failoverEjectionReadmission() async throws {
    let registry = InMemoryRegistry()
    let live = try await TestServer.start(registry: registry)
    // A port that was free a moment ago: registered while nothing listens on it, served later.
    let probe = try await TestServer.start(name: "probe", registry: registry)
    let address = probe.address
    let port = try #require(HostPort(address)?.port)
    try await probe.stopGracefully()
    try await registry.register(ServiceInstance(name: "user-server", address: address))

    let metrics = TestMetrics()
    let config = RegistryClientTransport.Config.defaults {
      // The stock transport reports every instance as connected, so the picker does not steer
      // around the unreachable one before outlier detection has seen it fail.
      $0.connection = .posix
      $0.healthChecking = nil
      $0.outlierDetection.consecutiveFailures = 2
      $0.outlierDetection.baseEjectionTime = .milliseconds(200)
      $0.outlierDetection.maxEjectionTime = .seconds(1)
      $0.metricsFactory = metrics
    }
    let dimensions = [("service", "user-server"), ("instance", address)]
    try await withBalancedClient(registry: registry, config: config) { transport, users in
      try await waitUntil("both instances are known", within: .seconds(5)) {
        transport.instanceStatuses.count == 2
      }
      for id in 0 ..< 20 {
        #expect(try await getName(users, id: Int64(id)) == live.address)
      }
      #expect(metrics.counterTotal(label: "registry_client_failovers_total") >= 2)
      #expect(
        try metrics.expectCounter("registry_client_ejections_total", dimensions).totalValue >= 1
      )
      #expect(try metrics.expectCounter("registry_client_calls_total", dimensions).totalValue >= 2)

      let revived = try await TestServer.start(registry: registry, port: port)
      #expect(revived.address == address)
      try await waitUntil("the revived instance is re-admitted", within: .seconds(15)) {
        _ = try? await getName(users)
        let readmissions = metrics.counters(
          label: "registry_client_readmissions_total",
          dimensions: dimensions
        ).first?.totalValue
        return (readmissions ?? 0) >= 1
      }
      try await revived.stopGracefully()
    }
    try await live.stopGracefully()
  }
}

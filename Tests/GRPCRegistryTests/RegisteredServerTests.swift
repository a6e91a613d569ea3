import GRPCConnection
import GRPCCore
import RegistryCore
import RegistryPrimitives
import RegistryTesting
import Synchronization
import Testing
import UserService

@testable import GRPCRegistry

@Suite("registered server", .timeLimit(.minutes(2)))
struct RegisteredServerTests {
  @Test("registers its bound address (port 0) with weight, group and metadata")
  func registers() async throws {
    let registry = InMemoryRegistry()
    let config = RegisteredServer.Config(name: "user-server") {
      $0.weight = 3
      $0.group = "A"
      $0.metadata = ["zone": "z1"]
      $0.drainDelay = .milliseconds(10)
    }
    let server = RegisteredServer(
      config: config,
      services: [UserDirectory(name: "x")],
      registry: registry,
      logger: testLogger()
    )
    try await withThrowingDiscardingTaskGroup { group in
      group.addTask { try await server.run() }
      let instance = try await server.registeredInstance()
      #expect(instance.address.hasPrefix("127.0.0.1:"))
      #expect(!instance.address.hasSuffix(":0"))
      #expect(server.advertisedAddress == instance.address)
      #expect(
        try await registry.instances(of: "user-server") == [
          ServiceInstance(
            name: "user-server",
            address: instance.address,
            weight: 3,
            group: "A",
            metadata: ["zone": "z1"]
          )
        ]
      )
      server.beginGracefulShutdown()
    }
    #expect(try await registry.instances(of: "user-server").isEmpty)
  }

  @Test("a registration that does not complete in time stops the start with a clear error")
  func registerTimeout() async throws {
    let server = RegisteredServer(
      config: .init(name: "user-server") { $0.registerTimeout = .milliseconds(200) },
      services: [],
      registry: BrokenRegistry(.hang),
      logger: testLogger()
    )
    await #expect {
      try await server.run()
    } throws: { error in
      guard let error = error as? GRPCRegistryError else { return false }
      return error.code == .registrationTimedOut && error.message.contains("reachable")
    }
    await #expect(throws: GRPCRegistryError.self) { try await server.registeredInstance() }
  }

  @Test("a registry failure stops the start with a clear error naming the cause")
  func registryFailure() async throws {
    let server = RegisteredServer(
      config: .init(name: "user-server"),
      services: [],
      registry: BrokenRegistry(.fail),
      logger: testLogger()
    )
    await #expect {
      try await server.run()
    } throws: { error in
      guard let error = error as? GRPCRegistryError else { return false }
      return error.code == .registrationFailed && error.message.contains("unreachable")
    }
  }

  @Test("a port in use fails with bindFailed")
  func bindFailure() async throws {
    let registry = InMemoryRegistry()
    let first = try await TestServer.start(registry: registry)
    let port = try #require(HostPort(first.address)?.port)
    let second = RegisteredServer(
      config: .init(name: "user-server") { $0.port = port },
      services: [],
      registry: registry,
      logger: testLogger()
    )
    await #expect {
      try await second.run()
    } throws: { error in
      (error as? GRPCRegistryError)?.code == .bindFailed
    }
    try await first.stopGracefully()
  }

  // Catches a server that stops before deregistering, stops serving during the drain, keeps
  // reporting SERVING on the health service while it drains, or drains without saying so.
  @Test(
    "graceful shutdown deregisters first, reports NOT_SERVING, keeps serving during the drain delay, then stops"
  )
  func gracefulShutdownOrder() async throws {
    let registry = InMemoryRegistry()
    let logs = LogCapture()
    let server = RegisteredServer(
      config: .init(name: "user-server") { $0.drainDelay = .seconds(1) },
      registry: registry,
      logger: logs.logger()
    ) { server in
      [UserDirectory(name: { server.advertisedAddress ?? "" })]
    }
    let stopped = Flag()
    try await withThrowingDiscardingTaskGroup { group in
      group.addTask {
        try await server.run()
        stopped.set()
      }
      let instance = try await server.registeredInstance()
      let address = try ServiceAddress(parsing: instance.address)
      let connection = HTTP2Connection(
        target: .host(address.host, port: address.port),
        logger: testLogger()
      )
      try await withGRPCClient(transport: connection) { client in
        let users = User_UserMesService.Client(wrapping: client)
        let health = Grpc_Health_V1_Health.Client(wrapping: client)
        #expect(try await users.getById(User_GetByIdReq()).user.name == instance.address)
        #expect(try await health.check(Grpc_Health_V1_HealthCheckRequest()).status == .serving)
        server.beginGracefulShutdown()
        try await waitUntil("the instance is deregistered") {
          try await registry.instances(of: "user-server").isEmpty
        }
        // Deregistered but still serving: the drain delay has not passed.
        #expect(!stopped.isSet)
        #expect(try await users.getById(User_GetByIdReq()).user.name == instance.address)
        #expect(try await health.check(Grpc_Health_V1_HealthCheckRequest()).status == .notServing)
      }
      try await waitUntil("the server stopped") { stopped.isSet }
    }
    let draining = try #require(logs.entries(containing: "Deregistering and draining").first)
    #expect(draining.level == .info)
    #expect(draining.metadata["registry.address"] != nil)
    #expect(draining.metadata["registry.address"] == server.advertisedAddress)
    #expect(draining.metadata["registry.drain"] == "1.0 seconds")
    #expect(!logs.entries(containing: "Server stopped").isEmpty, "\(logs.entries)")
  }

  @Test("listening on 0.0.0.0 never registers 0.0.0.0")
  func unspecifiedHost() async throws {
    let registry = InMemoryRegistry()
    let server = RegisteredServer(
      config: .init(name: "user-server") {
        $0.host = "0.0.0.0"
        $0.drainDelay = .zero
      },
      services: [],
      registry: registry,
      logger: testLogger()
    )
    try await withThrowingDiscardingTaskGroup { group in
      group.addTask {
        do {
          try await server.run()
        } catch let error as GRPCRegistryError {
          // No routable address on this machine: refused clearly.
          #expect(error.code == .invalidConfiguration)
          #expect(error.message.contains("advertised address"))
        }
      }
      do {
        let instance = try await server.registeredInstance()
        #expect(!instance.address.hasPrefix("0.0.0.0"))
        #expect(!instance.address.hasPrefix("127."))
        server.beginGracefulShutdown()
      } catch {
        let registered = try await registry.instances(of: "user-server")
        #expect(registered.isEmpty)
      }
    }
  }

  @Test("an explicit advertised address is registered as given; an unspecified one is refused")
  func advertisedAddress() async throws {
    let registry = InMemoryRegistry()
    let server = RegisteredServer(
      config: .init(name: "user-server") {
        $0.advertisedAddress = "user-1.internal:9000"
        $0.drainDelay = .zero
      },
      services: [],
      registry: registry,
      logger: testLogger()
    )
    try await withThrowingDiscardingTaskGroup { group in
      group.addTask { try await server.run() }
      let instance = try await server.registeredInstance()
      #expect(instance.address == "user-1.internal:9000")
      server.beginGracefulShutdown()
    }
    let refused = RegisteredServer(
      config: .init(name: "user-server") { $0.advertisedAddress = "0.0.0.0:9000" },
      services: [],
      registry: registry,
      logger: testLogger()
    )
    await #expect {
      try await refused.run()
    } throws: { error in
      (error as? GRPCRegistryError)?.code == .invalidConfiguration
    }
  }
}

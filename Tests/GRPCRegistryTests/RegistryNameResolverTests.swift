import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCRegistry
import RegistryCore
import RegistryTesting
import Synchronization
import Testing
import UserService

@Suite("registry:// name resolver", .timeLimit(.minutes(2)))
struct RegistryNameResolverTests {
  @Test("pushes the instances of the target's group with round robin, and every change")
  func pushesUpdates() async throws {
    let registry = InMemoryRegistry()
    try await registry.register(ServiceInstance(name: "svc", address: "127.0.0.1:1001", group: "A"))
    try await registry.register(ServiceInstance(name: "svc", address: "127.0.0.1:1002", group: "B"))
    let factory = RegistryNameResolverFactory(registry: registry)
    let resolver = factory.resolver(for: .registry(service: "svc", group: "A"))
    #expect(resolver.updateMode == .push)

    var iterator = resolver.names.makeAsyncIterator()
    let first = try #require(try await iterator.next())
    #expect(first.endpoints == [Endpoint(addresses: [.ipv4(host: "127.0.0.1", port: 1001)])])
    #expect(try first.serviceConfig?.get().loadBalancingConfig.first?.roundRobin != nil)

    // A change in another group is not pushed; one in the target's group is.
    try await registry.register(ServiceInstance(name: "svc", address: "127.0.0.1:1004", group: "B"))
    try await registry.register(ServiceInstance(name: "svc", address: "127.0.0.1:1003", group: "A"))
    let second = try #require(try await iterator.next())
    #expect(
      second.endpoints == [
        Endpoint(addresses: [.ipv4(host: "127.0.0.1", port: 1001)]),
        Endpoint(addresses: [.ipv4(host: "127.0.0.1", port: 1003)]),
      ]
    )

    try await registry.deregister(service: "svc", address: "127.0.0.1:1001")
    let afterRemoval = try #require(try await iterator.next())
    #expect(afterRemoval.endpoints == [Endpoint(addresses: [.ipv4(host: "127.0.0.1", port: 1003)])])

    // Removing the last instance does not push an empty list; the next real set is pushed.
    try await registry.deregister(service: "svc", address: "127.0.0.1:1003")
    try await registry.register(ServiceInstance(name: "svc", address: "[::1]:1005", group: "A"))
    let third = try #require(try await iterator.next())
    #expect(third.endpoints == [Endpoint(addresses: [.ipv6(host: "::1", port: 1005)])])

    // Every iteration is a new watch starting from the current set.
    var again = resolver.names.makeAsyncIterator()
    #expect(try await again.next()?.endpoints == third.endpoints)
  }

  @Test("a registry that shuts down ends the resolution rather than yielding an empty list")
  func endsCleanly() async throws {
    let registry = InMemoryRegistry()
    try await registry.register(ServiceInstance(name: "svc", address: "127.0.0.1:1001"))
    let resolver = RegistryNameResolverFactory(registry: registry).resolver(
      for: .registry(service: "svc")
    )
    var iterator = resolver.names.makeAsyncIterator()
    _ = try await iterator.next()
    await registry.shutdown()
    #expect(try await iterator.next() == nil)
  }

  @Test("a plain HTTP2ClientTransport.Posix client reaches every instance through the resolver")
  func plainClient() async throws {
    let registry = InMemoryRegistry()
    let servers = [
      try await TestServer.start(registry: registry),
      try await TestServer.start(registry: registry),
    ]
    var resolvers = NameResolverRegistry.defaults
    resolvers.registerFactory(RegistryNameResolverFactory(registry: registry))
    let transport = try HTTP2ClientTransport.Posix(
      target: .registry(service: "user-server"),
      transportSecurity: .plaintext,
      resolverRegistry: resolvers
    )
    let seen = try await withGRPCClient(transport: transport) { client in
      let users = User_UserMesService.Client(wrapping: client)
      var seen = Set<String>()
      try await waitUntil("both servers answered (seen \(seen))", within: .seconds(10)) {
        seen.insert(try await users.getById(User_GetByIdReq()).user.name)
        return seen.count == 2
      }
      return seen
    }
    #expect(seen == Set(servers.map(\.address)))
    for server in servers { try await server.stopGracefully() }
  }
}

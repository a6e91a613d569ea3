import GRPCConnection
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCRegistry
import Logging
import RegistryCore
import RegistryPrimitives
import RegistryTesting
import Synchronization
import UserService

/// A logger that drops everything; set `GRPC_REGISTRY_TEST_LOG=debug` to see the library's logs.
func testLogger(_ label: String = "test") -> Logger {
  var logger = Logger(label: label)
  logger.logLevel = .critical
  return logger
}

/// A server of the test: a `RegisteredServer` running `UserDirectory` in its own task, with an
/// optional time to live on its registration (kept alive while the server task runs).
final class TestServer: Sendable {
  let server: RegisteredServer
  let task: Task<Void, any Error>
  /// The server's own registry handle.
  let registry: LeasedRegistry

  /// Starts a server and waits until it is registered.
  static func start(
    name: String = "user-server",
    weight: Int = 1,
    group: String = "",
    metadata: [String: String] = [:],
    registry: InMemoryRegistry,
    ttl: Duration? = nil,
    drainDelay: Duration = .milliseconds(100),
    port: Int = 0,
    tls: RegisteredServer.TLS? = nil
  ) async throws -> TestServer {
    let handle = InMemoryRegistry(sharing: registry)
    let leased = LeasedRegistry(base: handle, ttl: ttl)
    let config = RegisteredServer.Config(name: name) {
      $0.weight = weight
      $0.group = group
      $0.metadata = metadata
      $0.drainDelay = drainDelay
      $0.port = port
      $0.tls = tls
    }
    let server = RegisteredServer(config: config, registry: leased, logger: testLogger()) {
      server in
      [UserDirectory(name: { server.advertisedAddress ?? "?" })]
    }
    let task = Task {
      try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await server.run() }
        group.addTask { await leased.keepAliveLoop() }
        // The server ends first (graceful shutdown or cancellation); the keep-alive goes with it.
        try await group.next()
        group.cancelAll()
      }
    }
    _ = try await server.registeredInstance()
    return TestServer(server: server, task: task, registry: leased)
  }

  private init(server: RegisteredServer, task: Task<Void, any Error>, registry: LeasedRegistry) {
    self.server = server
    self.task = task
    self.registry = registry
  }

  var address: String { self.server.advertisedAddress ?? "" }

  /// Deregisters, drains and stops; returns when the server has stopped.
  func stopGracefully() async throws {
    self.server.beginGracefulShutdown()
    try await self.task.value
  }

  /// Stops without deregistering, as a process that lost its registry and died would: its
  /// registration stays until the TTL expires.
  ///
  /// (Cancelling the server task would be the more abrupt stop, but cancelling a grpc-swift
  /// server while clients open streams can trap in swift-nio, apple/swift-nio#3481.)
  func kill() async {
    self.registry.sever()
    self.server.beginGracefulShutdown()
    _ = try? await self.task.value
  }
}

/// Registers through an in-memory handle with a time to live, renewed by ``keepAliveLoop()`` as a
/// lease keep-alive would be: when the loop stops (the process "dies"), the registration expires.
final class LeasedRegistry: ServiceRegistry {
  let base: InMemoryRegistry
  let ttl: Duration?
  private let registered = Locked<[String: ServiceInstance]>([:])
  private let severed = Atomic<Bool>(false)

  /// Cuts this handle off as if its process had died: no more keep-alives, and deregistration
  /// does nothing, so the registrations expire after the TTL.
  func sever() {
    self.severed.store(true, ordering: .relaxed)
  }

  init(base: InMemoryRegistry, ttl: Duration?) {
    self.base = base
    self.ttl = ttl
  }

  func register(_ instance: ServiceInstance) async throws {
    try self.base.register(instance, ttl: self.ttl)
    self.registered.withLock { $0[instance.address] = instance }
  }

  func deregister(service: String, address: String) async throws {
    if self.severed.load(ordering: .relaxed) { return }
    self.registered.withLock { $0[address] = nil }
    try await self.base.deregister(service: service, address: address)
  }

  func instances(of service: String) async throws -> [ServiceInstance] {
    try await self.base.instances(of: service)
  }

  func watch(_ service: String) -> ServiceWatch { self.base.watch(service) }

  func shutdown() async { await self.base.shutdown() }

  func keepAliveLoop() async {
    guard let ttl = self.ttl else {
      try? await Task.sleep(for: .seconds(1_000_000))
      return
    }
    while !Task.isCancelled, !self.severed.load(ordering: .relaxed) {
      for instance in self.registered.withLock({ Array($0.values) }) {
        try? self.base.keepAlive(service: instance.name, address: instance.address)
      }
      try? await Task.sleep(for: ttl / 4)
    }
  }
}

/// A registry whose registrations never complete (etcd unreachable) or fail.
final class BrokenRegistry: ServiceRegistry {
  enum Mode: Sendable { case hang, fail }
  let mode: Mode
  let base = InMemoryRegistry()

  init(_ mode: Mode) { self.mode = mode }

  func register(_ instance: ServiceInstance) async throws {
    switch self.mode {
    case .hang:
      try await Task.sleep(for: .seconds(60))
    case .fail:
      throw RegistryError(code: .unavailable, message: "etcd at 127.0.0.1:1 is unreachable")
    }
  }

  func deregister(service: String, address: String) async throws {}
  func instances(of service: String) async throws -> [ServiceInstance] { [] }
  func watch(_ service: String) -> ServiceWatch { self.base.watch(service) }
  func shutdown() async {}
}

/// A registry whose watch delivers the base registry's first event (the snapshot) and then
/// fails; every later subscription fails at once. Counts the subscriptions.
final class FailingWatchRegistry: ServiceRegistry {
  struct WatchBroke: Error, CustomStringConvertible {
    var description: String { "the watch broke (test)" }
  }
  let base: InMemoryRegistry
  private let count = Locked(0)

  init(base: InMemoryRegistry) { self.base = base }

  /// How many times the watch was subscribed to.
  var subscriptions: Int { self.count.withLock { $0 } }

  func register(_ instance: ServiceInstance) async throws { try await self.base.register(instance) }
  func deregister(service: String, address: String) async throws {
    try await self.base.deregister(service: service, address: address)
  }
  func instances(of service: String) async throws -> [ServiceInstance] {
    try await self.base.instances(of: service)
  }
  func watch(_ service: String) -> ServiceWatch {
    let base = self.base.watch(service)
    return ServiceWatch {
      let first = self.count.withLock { count in
        count += 1
        return count == 1
      }
      return AsyncThrowingStream { continuation in
        guard first else {
          continuation.finish(throwing: WatchBroke())
          return
        }
        let forward = Task {
          var iterator = base.makeAsyncIterator()
          do {
            if let event = try await iterator.next() { continuation.yield(event) }
            continuation.finish(throwing: WatchBroke())
          } catch {
            continuation.finish(throwing: error)
          }
        }
        continuation.onTermination = { _ in forward.cancel() }
      }
    }
  }
  func shutdown() async {}
}

/// Counts calls per server name and failures, from several concurrent callers.
final class CallTally: Sendable {
  private struct State {
    var perServer: [String: Int] = [:]
    var failed = 0
    var errors: [String] = []
  }
  private let state = Locked(State())

  func success(_ name: String) { self.state.withLock { $0.perServer[name, default: 0] += 1 } }
  func failure(_ error: any Error) {
    self.state.withLock {
      $0.failed += 1
      if $0.errors.count < 5 { $0.errors.append("\(error)") }
    }
  }
  var perServer: [String: Int] { self.state.withLock { $0.perServer } }
  var failed: Int { self.state.withLock { $0.failed } }
  var errors: [String] { self.state.withLock { $0.errors } }
  var total: Int { self.state.withLock { $0.perServer.values.reduce(0, +) + $0.failed } }
}

/// Runs `body` with a `GRPCClient` over a `RegistryClientTransport`, the transport's connect
/// running for the duration.
func withBalancedClient<Result: Sendable>(
  _ target: RegistryTarget = .registry(service: "user-server"),
  registry: any ServiceRegistry,
  config: RegistryClientTransport.Config = .defaults,
  logger: Logger = testLogger(),
  _ body: (RegistryClientTransport, User_UserMesService.Client<RegistryClientTransport>)
    async throws -> Result
) async throws -> Result {
  let transport = RegistryClientTransport(
    target: target,
    registry: registry,
    config: config,
    logger: logger
  )
  return try await withGRPCClient(transport: transport) { client in
    try await body(transport, User_UserMesService.Client(wrapping: client))
  }
}

func getName(
  _ users: User_UserMesService.Client<RegistryClientTransport>,
  id: Int64 = 1
) async throws
  -> String
{
  var request = User_GetByIdReq()
  request.id = id
  let response = try await users.getById(request)
  return response.user.name
}

/// Waits until the transport prefers exactly `addresses` (connected, healthy, not ejected).
func waitUntilPreferred(
  _ transport: RegistryClientTransport,
  _ addresses: [String],
  within timeout: Duration = .seconds(10)
) async throws {
  let expected = addresses.sorted()
  try await waitUntil(
    "the transport prefers \(expected) (it has \(transport.instanceStatuses.map { "\($0.instance.address):\($0.health)" }))",
    within: timeout
  ) {
    transport.instanceStatuses.filter(\.isPreferred).map(\.instance.address).sorted() == expected
  }
}

/// Runs `callers` concurrent loops of calls until `stop` fires, tallying the results.
func runCallers(
  _ callers: Int,
  users: User_UserMesService.Client<RegistryClientTransport>,
  tally: CallTally,
  group: String? = nil,
  until stop: Flag
) async {
  await withDiscardingTaskGroup { tasks in
    for caller in 0 ..< callers {
      tasks.addTask {
        var id: Int64 = Int64(caller) * 1_000_000
        while !stop.isSet {
          id += 1
          do {
            let name = try await withRegistryGroup(group) { try await getName(users, id: id) }
            tally.success(name)
          } catch {
            tally.failure(error)
          }
        }
      }
    }
  }
}

/// A flag set once.
final class Flag: Sendable {
  private let value = Atomic<Bool>(false)
  var isSet: Bool { self.value.load(ordering: .relaxed) }
  func set() { self.value.store(true, ordering: .relaxed) }
}

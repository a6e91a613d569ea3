import ArgumentParser
import EtcdRegistry
import Foundation
import GRPCCore
import GRPCRegistry
import Logging
import RegistryCore
import Synchronization
import UserService

/// The README's first command: servers register, a client balances calls over them by weight
/// and group, one server drains away gracefully and another dies, all in one process.
@main
struct RegistryDemo: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "registry-demo",
    abstract: "Registered gRPC servers and a balanced client, on the embedded registry (or etcd).",
    discussion: """
      Starts three user-servers with weights 1, 2, 3 in groups A, A, B, calls them through
      registry://user-server, routes a batch to group A, stops one gracefully under load and
      kills another, printing where every call went.
      """
  )

  @Option(help: "Run the story on etcd at host:port[,host:port] instead of the embedded registry.")
  var etcd: String?

  @Option(help: "Calls per batch.")
  var calls = 600

  @Option(help: "The service name.")
  var service = "user-server"

  func run() async throws {
    var logger = Logger(label: "registry-demo")
    logger.logLevel = .warning
    let backend: Backend
    if let etcd = self.etcd {
      let endpoints = etcd.split(separator: ",").map { String($0) }
      backend = .etcd(
        .defaults {
          $0.etcd.endpoints = endpoints
          $0.leaseTTL = .seconds(2)
        }
      )
      print("== on etcd at \(etcd) (lease TTL 2 s)")
    } else {
      backend = .memory(InMemoryRegistry())
      print("== on the embedded in-memory registry (registration TTL 1 s)")
    }
    let story = Story(backend: backend, service: self.service, calls: self.calls, logger: logger)
    try await story.run()
  }
}

/// Where the demo's registrations live.
enum Backend: Sendable {
  case memory(InMemoryRegistry)
  case etcd(EtcdServiceRegistry.Configuration)

  var ttl: Duration {
    switch self {
    case .memory: return .seconds(1)
    case .etcd(let configuration): return configuration.leaseTTL
    }
  }

  /// A registry for one server and the loop that keeps its registrations alive; when the loop
  /// is cancelled (the server "dies") the registrations expire after the TTL.
  func serverRegistry(
    logger: Logger
  ) throws -> (
    registry: any ServiceRegistry,
    keepAlive: @Sendable () async throws -> Void,
    sever: @Sendable () -> Void
  ) {
    switch self {
    case .memory(let shared):
      let leased = LeasedRegistry(base: InMemoryRegistry(sharing: shared), ttl: self.ttl)
      return (leased, { await leased.keepAliveLoop() }, { leased.sever() })
    case .etcd(let configuration):
      let registry = try EtcdServiceRegistry(configuration: configuration, logger: logger)
      // On etcd, cancelling run() (the keep-alive task) is what cuts the server off.
      return (registry, { try await registry.run() }, {})
    }
  }
}

/// An in-memory registry handle whose registrations carry a TTL renewed by a keep-alive loop,
/// as an etcd lease is.
final class LeasedRegistry: ServiceRegistry {
  let base: InMemoryRegistry
  let ttl: Duration
  private let registered = Mutex<[String: ServiceInstance]>([:])
  private let severed = Atomic<Bool>(false)

  /// Cuts this handle off as if its process had died: no more keep-alives, and deregistration
  /// does nothing, so the registrations expire after the TTL.
  func sever() {
    self.severed.store(true, ordering: .relaxed)
  }

  init(base: InMemoryRegistry, ttl: Duration) {
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
    while !Task.isCancelled, !self.severed.load(ordering: .relaxed) {
      for instance in self.registered.withLock({ Array($0.values) }) {
        try? self.base.keepAlive(service: instance.name, address: instance.address)
      }
      try? await Task.sleep(for: self.ttl / 4)
    }
  }
}

/// One server of the demo, running in its own task so that it can be stopped or killed alone.
final class DemoServer: Sendable {
  let server: RegisteredServer
  let task: Task<Void, any Error>
  let keeper: Task<Void, any Error>
  let sever: @Sendable () -> Void
  let instance: ServiceInstance

  static func start(
    backend: Backend,
    service: String,
    weight: Int,
    group: String,
    logger: Logger
  ) async throws -> DemoServer {
    let (registry, keepAlive, sever) = try backend.serverRegistry(logger: logger)
    let config = RegisteredServer.Config(name: service) {
      $0.weight = weight
      $0.group = group
      $0.drainDelay = .milliseconds(300)
    }
    let server = RegisteredServer(config: config, registry: registry, logger: logger) { server in
      [UserDirectory(name: { server.advertisedAddress ?? "" })]
    }
    // The registry's keep-alive and the server run apart so that the demo can cut the first
    // off, as a crash would, without cancelling the server (cancelling a grpc-swift server
    // while clients open streams can trap in swift-nio, apple/swift-nio#3481).
    let keeper = Task { try await keepAlive() }
    let task = Task {
      defer { keeper.cancel() }
      try await server.run()
    }
    let instance = try await server.registeredInstance()
    return DemoServer(server: server, task: task, keeper: keeper, sever: sever, instance: instance)
  }

  private init(
    server: RegisteredServer,
    task: Task<Void, any Error>,
    keeper: Task<Void, any Error>,
    sever: @escaping @Sendable () -> Void,
    instance: ServiceInstance
  ) {
    self.server = server
    self.task = task
    self.keeper = keeper
    self.sever = sever
    self.instance = instance
  }

  /// Dies without deregistering: its registry connection is cut (no more keep-alives, no
  /// deregistration) and the server stops; its registration lingers until the TTL expires.
  func kill() async {
    self.sever()
    self.keeper.cancel()
    _ = try? await self.keeper.value
    self.server.beginGracefulShutdown()
    _ = try? await self.task.value
  }

  var address: String { self.instance.address }
}

/// Where calls went.
final class Tally: Sendable {
  private let state = Mutex<(servers: [String: Int], ok: Int, failed: Int)>(([:], 0, 0))

  func success(_ server: String) {
    self.state.withLock {
      $0.servers[server, default: 0] += 1
      $0.ok += 1
    }
  }

  func failure() { self.state.withLock { $0.failed += 1 } }

  var servers: [String: Int] { self.state.withLock { $0.servers } }
  var ok: Int { self.state.withLock { $0.ok } }
  var failed: Int { self.state.withLock { $0.failed } }
}

struct Story {
  let backend: Backend
  let service: String
  let calls: Int
  let logger: Logger

  func run() async throws {
    let start = ContinuousClock.now
    // The client's own registry handle.
    let (clientRegistry, clientKeeper, _) = try self.backend.serverRegistry(logger: self.logger)
    try await withThrowingDiscardingTaskGroup { group in
      group.addTask { try await clientKeeper() }
      defer { group.cancelAll() }

      print("== three servers start on 127.0.0.1 and register (weights 1, 2, 3; groups A, A, B)")
      var servers: [DemoServer] = []
      for (weight, serverGroup) in [(1, "A"), (2, "A"), (3, "B")] {
        let server = try await DemoServer.start(
          backend: self.backend,
          service: self.service,
          weight: weight,
          group: serverGroup,
          logger: self.logger
        )
        print("   READY \(server.address)  weight \(weight)  group \(serverGroup)")
        servers.append(server)
      }

      let transport = RegistryClientTransport(
        target: .registry(service: self.service),
        registry: clientRegistry,
        logger: self.logger
      )
      try await withGRPCClient(transport: transport) { client in
        let users = User_UserMesService.Client(wrapping: client)
        try await self.waitUntil("the client uses all three servers") {
          transport.instanceStatuses.filter(\.isPreferred).count == 3
        }

        print("\n== \(self.calls) calls to registry://\(self.service), balanced by weight")
        let all = Tally()
        await self.callBatch(users, count: self.calls, tally: all)
        self.printTable(servers.map(\.instance), all)

        print("\n== \(self.calls) calls inside withRegistryGroup(\"A\")")
        let groupA = Tally()
        await self.callBatch(users, count: self.calls, group: "A", tally: groupA)
        self.printTable(servers.map(\.instance), groupA)

        let leaving = servers[2]
        print("\n== \(leaving.address) (weight 3) stops gracefully while 4 callers keep calling")
        let during = Tally()
        let stopped = StopFlag()
        try await withThrowingDiscardingTaskGroup { load in
          load.addTask { await self.callUntil(users, stop: stopped, tally: during) }
          leaving.server.beginGracefulShutdown()
          try await leaving.task.value
          print("   deregistered, drained for 300 ms, stopped")
          let mark = during.ok
          try await self.waitUntil("calls continue") { during.ok >= mark + 200 }
          stopped.set()
        }
        self.printTable(servers.map(\.instance), during)
        print("   \(during.ok) calls ok, \(during.failed) failed")

        let victim = servers[1]
        print(
          "\n== \(victim.address) dies: its registry connection is cut, it stops without deregistering"
        )
        let afterKill = Tally()
        let stop = StopFlag()
        try await withThrowingDiscardingTaskGroup { load in
          load.addTask { await self.callUntil(users, stop: stop, tally: afterKill) }
          try await self.waitUntil("calls flow") { afterKill.ok >= 100 }
          let killedAt = ContinuousClock.now
          load.addTask { await victim.kill() }
          try await self.waitUntil("routing to the killed server stopped") {
            !transport.instanceStatuses.contains {
              $0.instance.address == victim.address && $0.isPreferred
            }
          }
          print(
            "   routing to it stopped after \(Self.milliseconds(ContinuousClock.now - killedAt)) ms (its health stream said NOT_SERVING, then ended)"
          )
          try await self.waitUntil(
            "the killed server left discovery",
            within: self.backend.ttl + .seconds(5)
          ) {
            !transport.instanceStatuses.contains { $0.instance.address == victim.address }
          }
          print(
            "   it left discovery after \(Self.milliseconds(ContinuousClock.now - killedAt)) ms (TTL \(self.backend.ttl))"
          )
          let replacement = try await DemoServer.start(
            backend: self.backend,
            service: self.service,
            weight: 2,
            group: "A",
            logger: self.logger
          )
          print("   a replacement starts: READY \(replacement.address)  weight 2  group A")
          servers.append(replacement)
          try await self.waitUntil("the client uses the replacement") {
            transport.instanceStatuses.contains {
              $0.instance.address == replacement.address && $0.isPreferred
            }
          }
          let mark = afterKill.servers[replacement.address] ?? 0
          try await self.waitUntil("the replacement takes calls") {
            (afterKill.servers[replacement.address] ?? 0) >= mark + 100
          }
          stop.set()
        }
        self.printTable(servers.map(\.instance), afterKill)
        print(
          "   \(afterKill.ok) calls ok, \(afterKill.failed) failed"
        )

        print("\n== shutting down")
        for server in servers
        where server.address != victim.address && server.address != leaving.address {
          server.server.beginGracefulShutdown()
          try await server.task.value
        }
      }
    }
    print("== done in \(Self.milliseconds(ContinuousClock.now - start)) ms")
  }

  private func callBatch(
    _ users: User_UserMesService.Client<RegistryClientTransport>,
    count: Int,
    group: String? = nil,
    tally: Tally
  ) async {
    let next = Counter()
    await withDiscardingTaskGroup { callers in
      for _ in 0 ..< 4 {
        callers.addTask {
          while next.increment() <= count {
            await self.call(users, group: group, tally: tally)
          }
        }
      }
    }
  }

  private func callUntil(
    _ users: User_UserMesService.Client<RegistryClientTransport>,
    stop: StopFlag,
    tally: Tally
  ) async {
    await withDiscardingTaskGroup { callers in
      for _ in 0 ..< 4 {
        callers.addTask {
          while !stop.isSet {
            await self.call(users, group: nil, tally: tally)
          }
        }
      }
    }
  }

  private func call(
    _ users: User_UserMesService.Client<RegistryClientTransport>,
    group: String?,
    tally: Tally
  ) async {
    var request = User_GetByIdReq()
    request.id = 1
    do {
      let name = try await withRegistryGroup(group) { try await users.getById(request).user.name }
      tally.success(name)
    } catch {
      tally.failure()
    }
  }

  private func printTable(_ instances: [ServiceInstance], _ tally: Tally) {
    let servers = tally.servers
    let total = max(1, servers.values.reduce(0, +))
    print("   SERVER            WEIGHT  GROUP  CALLS  SHARE")
    for instance in instances {
      let calls = servers[instance.address] ?? 0
      let share = String(format: "%5.1f%%", Double(calls) * 100 / Double(total))
      print(
        "   \(instance.address.padding(toLength: 17, withPad: " ", startingAt: 0)) "
          + "\(String(instance.weight).padding(toLength: 6, withPad: " ", startingAt: 0))  "
          + "\(instance.group.padding(toLength: 5, withPad: " ", startingAt: 0))  "
          + "\(String(calls).padding(toLength: 5, withPad: " ", startingAt: 0))  \(share)"
      )
    }
  }

  private func waitUntil(
    _ what: String,
    within timeout: Duration = .seconds(10),
    _ condition: () -> Bool
  ) async throws {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
      guard ContinuousClock.now < deadline else {
        throw ValidationError("the demo timed out after \(timeout) waiting until \(what)")
      }
      try await Task.sleep(for: .milliseconds(5))
    }
  }

  static func milliseconds(_ duration: Duration) -> Int64 {
    duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
  }
}

/// Set once to stop the callers.
final class StopFlag: Sendable {
  private let value = Atomic<Bool>(false)
  var isSet: Bool { self.value.load(ordering: .relaxed) }
  func set() { self.value.store(true, ordering: .relaxed) }
}

/// The index of the next call, shared by the callers.
final class Counter: Sendable {
  private let value = Atomic<Int>(0)
  func increment() -> Int { self.value.add(1, ordering: .relaxed).newValue }
}

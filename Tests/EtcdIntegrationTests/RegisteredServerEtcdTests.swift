import EtcdHarness
import EtcdRegistry
import Foundation
import GRPCCore
import GRPCRegistry
import RegistryCore
import RegistryPrimitives
import RegistryTesting
import ServiceLifecycle
import Synchronization
import Testing
import UserService

/// A `RegisteredServer` serving `UserDirectory` on an etcd registry, in this process.
private func makeServer(
  _ registry: EtcdServiceRegistry,
  registerTimeout: Duration = .seconds(5)
) -> RegisteredServer {
  RegisteredServer(
    config: .init(name: "user-server") {
      $0.registerTimeout = registerTimeout
      $0.deregisterTimeout = .seconds(1)
      $0.drainDelay = .milliseconds(100)
    },
    registry: registry,
    logger: testLogger("server")
  ) { server in
    [UserDirectory(name: { server.advertisedAddress ?? "?" })]
  }
}

@Suite("registered server on etcd", .timeLimit(.minutes(3)), .serialized)
struct RegisteredServerEtcdTests {
  @Test("etcd unreachable at start: the start fails within the register timeout, saying why")
  func unreachableAtStart() async throws {
    try await withEtcdCluster { cluster in
      await cluster.members[0].kill()
      let running = try RunningRegistry(cluster, prefix: uniquePrefix("unreachable")) {
        $0.shutdownTimeout = .seconds(1)
      }
      let server = makeServer(running.registry, registerTimeout: .seconds(2))
      let start = ContinuousClock.now
      await #expect {
        try await server.run()
      } throws: { error in
        guard let error = error as? GRPCRegistryError else { return false }
        print("start with etcd unreachable: \(error)")
        return [.registrationTimedOut, .registrationFailed].contains(error.code)
          && (error.message.contains("reachable") || error.message.contains("unavailable"))
      }
      #expect(ContinuousClock.now - start < .seconds(4))
      await running.stop()
    }
  }

  @Test("etcd hung (SIGSTOP) at start: registration times out with a clear error")
  func hungAtStart() async throws {
    try await withEtcdCluster { cluster in
      let running = try RunningRegistry(cluster, prefix: uniquePrefix("hung")) {
        $0.shutdownTimeout = .seconds(1)
      }
      cluster.members[0].pause()
      defer { cluster.members[0].resume() }
      let server = makeServer(running.registry, registerTimeout: .seconds(1))
      let start = ContinuousClock.now
      await #expect {
        try await server.run()
      } throws: { error in
        guard let error = error as? GRPCRegistryError else { return false }
        return error.code == .registrationTimedOut && error.message.contains("reachable")
      }
      #expect(ContinuousClock.now - start < .seconds(3))
      cluster.members[0].resume()
      await running.stop()
    }
  }

  @Test("shutdown with etcd down: deregistration gives up in bounded time and the server stops")
  func shutdownWithEtcdDown() async throws {
    try await withEtcdCluster { cluster in
      let running = try RunningRegistry(cluster, prefix: uniquePrefix("down")) {
        $0.shutdownTimeout = .seconds(1)
      }
      let server = makeServer(running.registry)
      let task = Task { try await server.run() }
      let instance = try await server.registeredInstance()
      #expect(try await running.registry.instances(of: "user-server") == [instance])

      await cluster.members[0].kill()
      let start = ContinuousClock.now
      server.beginGracefulShutdown()
      try await task.value
      let elapsed = ContinuousClock.now - start
      print("shutdown with etcd down took \(elapsed)")
      #expect(elapsed < .seconds(5))
      await running.stop()
    }
  }
}

@Suite("EtcdServiceRegistry cancellation", .timeLimit(.minutes(2)))
struct EtcdRegistryCancellationTests {
  @Test("cancelling run() stops it at once, as a crash would: the lease is left to expire")
  func cancelledRun() async throws {
    let cluster = try await SharedEtcd.get()
    let registry = try EtcdServiceRegistry(
      config: .defaults {
        $0.etcd = .testing(cluster)
        $0.keyPrefix = uniquePrefix("cancel")
        $0.leaseTTL = .seconds(2)
      },
      logger: testLogger("registry")
    )
    let task = Task { try await registry.run() }
    let instance = ServiceInstance(name: "svc", address: "10.0.0.9:80")
    try await registry.register(instance)
    let watcher = try RunningRegistry(cluster, prefix: registry.config.keyPrefix)
    #expect(try await watcher.registry.instances(of: "svc") == [instance])

    let start = ContinuousClock.now
    task.cancel()
    _ = try? await task.value
    #expect(ContinuousClock.now - start < .seconds(2), "run() ends promptly when cancelled")
    // Not revoked: still there right after, gone once the 2 s lease expires.
    #expect(try await watcher.registry.instances(of: "svc") == [instance])
    try await waitUntil("the lease expires", within: .seconds(5)) {
      try await watcher.registry.instances(of: "svc").isEmpty
    }
    await watcher.stop()
  }
}

@Suite("EtcdServiceRegistry in a service group", .timeLimit(.minutes(2)))
struct EtcdRegistryServiceGroupTests {
  @Test("the group's graceful shutdown revokes the lease: the keys vanish at once, not at expiry")
  func gracefulShutdownRevokes() async throws {
    let cluster = try await SharedEtcd.get()
    let prefix = uniquePrefix("group")
    let registry = try EtcdServiceRegistry(
      config: .defaults {
        $0.etcd = .testing(cluster)
        $0.keyPrefix = prefix
        $0.leaseTTL = .seconds(30)
      },
      logger: testLogger("registry")
    )
    let group = ServiceGroup(
      configuration: ServiceGroupConfiguration(
        services: [.init(service: registry)],
        logger: testLogger("group")
      )
    )
    let watcher = try RunningRegistry(cluster, prefix: prefix)
    try await withThrowingDiscardingTaskGroup { tasks in
      tasks.addTask { try await group.run() }
      let instance = ServiceInstance(name: "svc", address: "10.0.0.8:80")
      try await registry.register(instance)
      #expect(try await watcher.registry.instances(of: "svc") == [instance])
      await group.triggerGracefulShutdown()
    }
    // With a 30 s lease only a revocation removes the key this soon.
    try await waitUntil("the lease is revoked", within: .seconds(3)) {
      try await watcher.registry.instances(of: "svc").isEmpty
    }
    await watcher.stop()
  }
}

/// Watches the balanced transport's view of one instance.
private func waitUntilNotPreferred(
  _ transport: RegistryClientTransport,
  _ address: String,
  within limit: Duration
) async throws -> Duration {
  let start = ContinuousClock.now
  while ContinuousClock.now - start < limit {
    let status = transport.instanceStatuses.first { $0.instance.address == address }
    if status.map({ !$0.isPreferred }) ?? true {
      return ContinuousClock.now - start
    }
    try await Task.sleep(for: .milliseconds(2))
  }
  throw WaitTimeoutError(description: "\(address) still preferred after \(limit)")
}

/// Callers that run until cancelled, counting successes per server and failures.
private final class CallerStats: Sendable {
  private let state = Locked<(ok: [String: Int], failed: Int)>(([:], 0))
  func succeeded(_ name: String) { self.state.withLock { $0.ok[name, default: 0] += 1 } }
  func failed() { self.state.withLock { $0.failed += 1 } }
  var ok: [String: Int] { self.state.withLock { $0.ok } }
  var failures: Int { self.state.withLock { $0.failed } }
}

/// Tells loops in other tasks to end.
private final class StopFlag: Sendable {
  private let stopped = Locked(false)
  var isStopped: Bool { self.stopped.withLock { $0 } }
  func stop() { self.stopped.withLock { $0 = true } }
}

@Suite("balanced transport against crashed and hung servers", .timeLimit(.minutes(3)))
struct CrashedAndHungServerTests {
  @Test(
    "SIGKILL: the client stops routing within 100 ms; SIGSTOP: no new calls within a second"
  )
  func killAndStop() async throws {
    let cluster = try await SharedEtcd.get()
    let prefix = uniquePrefix("crash")
    let servers = [
      try await UserServerProcess(etcd: cluster, prefix: prefix),
      try await UserServerProcess(etcd: cluster, prefix: prefix),
      try await UserServerProcess(etcd: cluster, prefix: prefix),
    ]
    let running = try RunningRegistry(cluster, prefix: prefix)
    let transport = RegistryClientTransport(
      target: .registry(service: "user-server"),
      registry: running.registry,
      logger: testLogger("transport")
    )
    let stats = CallerStats()
    let stopCallers = StopFlag()
    // Resumes the stopped server whatever happens, so it can exit.
    defer { servers[1].process.signal(SIGCONT) }
    try await withThrowingDiscardingTaskGroup { group in
      let client = GRPCClient(transport: transport)
      group.addTask { try await client.runConnections() }
      defer {
        stopCallers.stop()
        client.beginGracefulShutdown()
      }
      let users = User_UserMesService.Client(wrapping: client)
      try await waitUntil("all three servers are preferred", within: .seconds(10)) {
        transport.instanceStatuses.filter(\.isPreferred).count == 3
      }
      for _ in 0 ..< 8 {
        group.addTask {
          // A call stuck on the hung server waits at most a second.
          var options = CallOptions.defaults
          options.timeout = .seconds(1)
          while !stopCallers.isStopped {
            do {
              let reply = try await users.getById(.with { $0.id = 1 }, options: options)
              stats.succeeded(reply.user.name)
            } catch {
              stats.failed()
            }
          }
        }
      }
      try await waitUntil("every server answered", within: .seconds(10)) {
        stats.ok.count == 3
      }

      // Crash: the kernel closes the socket; the connection sees it at once.
      servers[0].process.signal(SIGKILL)
      let left = try await waitUntilNotPreferred(
        transport,
        servers[0].address,
        within: .seconds(2)
      )
      print("SIGKILL: stopped routing after \(left)")
      #expect(left < .milliseconds(100))
      let servedAfterKill = stats.ok[servers[2].address] ?? 0
      try await waitUntil("calls go on after the crash", within: .seconds(5)) {
        (stats.ok[servers[2].address] ?? 0) >= servedAfterKill + 200
      }
      let failedAfterKill = stats.failures
      #expect(failedAfterKill <= 8, "only calls in flight on the dead connection may fail")

      // Hang: the socket stays open, nothing is answered.
      servers[1].process.signal(SIGSTOP)
      let stopped = try await waitUntilNotPreferred(
        transport,
        servers[1].address,
        within: .seconds(3)
      )
      print("SIGSTOP: stopped routing after \(stopped)")
      #expect(stopped < .seconds(1))
      // The calls already sent to it wait for their deadline; no new one goes there. No call
      // is picked for it any more, so the calls outstanding now are exactly the stuck ones.
      let stuck =
        transport.instanceStatuses.first { $0.instance.address == servers[1].address }?
        .outstandingCalls ?? 0
      try await waitUntil("the calls stuck on the hung server end", within: .seconds(3)) {
        transport.instanceStatuses.first { $0.instance.address == servers[1].address }?
          .outstandingCalls == 0
      }
      // A caller counts its failure just after the transport has let go of the call.
      try await waitUntil("the callers have counted the stuck calls", within: .seconds(2)) {
        stats.failures - failedAfterKill >= stuck
      }
      let failedByHang = stats.failures - failedAfterKill
      print("SIGSTOP: \(failedByHang) calls in flight on the hung server hit their deadline")
      #expect(failedByHang == stuck, "only the calls in flight on the hung server fail")
      #expect(failedByHang <= 8, "only calls in flight on the hung server may fail")
      let servedBefore = stats.ok[servers[2].address] ?? 0
      var maxOutstanding = 0
      try await waitUntil("calls keep succeeding on the live server", within: .seconds(5)) {
        let outstanding =
          transport.instanceStatuses.first { $0.instance.address == servers[1].address }?
          .outstandingCalls ?? 0
        maxOutstanding = max(maxOutstanding, outstanding)
        return (stats.ok[servers[2].address] ?? 0) >= servedBefore + 500
      }
      #expect(maxOutstanding == 0, "no new call was routed to the hung server")
      let failedBeforeResume = stats.failures
      #expect(failedBeforeResume == failedAfterKill + failedByHang)

      // Resumed: it is used again, and nothing fails.
      servers[1].process.signal(SIGCONT)
      try await waitUntil("the resumed server is preferred again", within: .seconds(15)) {
        transport.instanceStatuses.first { $0.instance.address == servers[1].address }?
          .isPreferred ?? false
      }
      let servedByResumed = stats.ok[servers[1].address] ?? 0
      try await waitUntil("the resumed server answers again", within: .seconds(5)) {
        (stats.ok[servers[1].address] ?? 0) > servedByResumed
      }
      #expect(stats.failures == failedBeforeResume, "no call failed after the resume")
    }
    await running.stop()
    for server in servers { server.process.signal(SIGTERM) }
  }
}

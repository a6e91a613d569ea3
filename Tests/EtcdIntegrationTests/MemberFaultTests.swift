import Etcd
import EtcdHarness
import EtcdRegistry
import Foundation
import GRPCCore
import GRPCRegistry
import RegistryCore
import RegistryPrimitives
import RegistryTesting
import Synchronization
import Testing
import UserService

/// What happens to the member that the registry, the client and the watchers start on.
enum MemberFault: String, CaseIterable, CustomTestStringConvertible, Sendable {
  /// SIGSTOP: its connections stay open and nothing answers (a hung process, a stalled disk).
  case frozen
  /// Cut off from its peers, still reachable by clients: it has no leader and cannot serve
  /// linearizable requests, lease renewals or watches for long.
  case cutOffFromPeers

  var testDescription: String { self.rawValue }

  func apply(to member: EtcdHarness.EtcdNode) async throws {
    switch self {
    case .frozen: member.pause()
    case .cutOffFromPeers: try await member.isolateFromPeers()
    }
  }

  func heal(_ member: EtcdHarness.EtcdNode) {
    switch self {
    case .frozen: member.resume()
    case .cutOffFromPeers: member.rejoinPeers()
    }
  }
}

/// Calls that run until stopped, counting successes and failures.
private final class CallCounter: Sendable {
  private let counts = Locked<(ok: Int, failed: Int, stopped: Bool)>((0, 0, false))
  var ok: Int { self.counts.withLock { $0.ok } }
  var failed: Int { self.counts.withLock { $0.failed } }
  var isStopped: Bool { self.counts.withLock { $0.stopped } }
  func record(_ success: Bool) {
    self.counts.withLock { if success { $0.ok += 1 } else { $0.failed += 1 } }
  }
  func stop() { self.counts.withLock { $0.stopped = true } }
}

@Suite("a member that hangs or loses its peers", .timeLimit(.minutes(3)), .serialized)
struct MemberFaultTests {
  /// The lease TTL of every registry here: the fault lasts four of them.
  static let ttl = Duration.seconds(3)

  @Test(
    "3 members, the first endpoint of every client faulty for 4 TTLs: no registration disappears, calls and watches go on",
    arguments: MemberFault.allCases
  )
  func registrationsSurvive(_ fault: MemberFault) async throws {
    try await withEtcdCluster(.defaults { $0.members = 3 }) { cluster in
      // A follower: a faulty leader would be replaced, and a new leader extends every lease,
      // which would hide a registry that never renewed its lease elsewhere.
      let leader = try await cluster.leader()
      let faulty = try #require(cluster.members.first { $0 !== leader })
      let healthy = try #require(cluster.members.first { $0 !== leader && $0 !== faulty })
      let endpoints =
        [faulty.endpoint] + cluster.members.filter { $0 !== faulty }.map(\.endpoint)
      let prefix = uniquePrefix("member-\(fault.rawValue)")
      func registry(_ endpoints: [String]) throws -> RunningRegistry {
        try RunningRegistry(cluster, prefix: prefix) {
          $0.etcd.endpoints = endpoints
          $0.leaseTTL = Self.ttl
        }
      }
      let serverSide = try registry(endpoints)
      let clientSide = try registry(endpoints)
      // Sees etcd's truth from a member that stays healthy: a lease that expired shows here.
      let observer = try registry([healthy.endpoint])

      let server = RegisteredServer(
        config: .init(name: "user-server") {
          $0.deregisterTimeout = .seconds(1)
          $0.drainDelay = .milliseconds(50)
        },
        registry: serverSide.registry,
        logger: testLogger("server")
      ) { server in
        [UserDirectory(name: { server.advertisedAddress ?? "?" })]
      }
      let serving = Task { try await server.run() }
      defer { serving.cancel() }

      let observed = WatchRecorder(observer.registry.watch("user-server"))
      let observedAux = WatchRecorder(observer.registry.watch("aux"))
      defer {
        observed.cancel()
        observedAux.cancel()
      }
      try await waitUntil("the server is registered", within: .seconds(10)) {
        observed.currentAddresses.count == 1
      }
      let address = try #require(observed.currentAddresses.first)
      // Written and removed while the fault lasts; never dialled (another service).
      let auxAddresses = ["127.0.0.1:1", "127.0.0.1:2"]
      try await serverSide.registry.register(ServiceInstance(name: "aux", address: auxAddresses[0]))
      let clientAux = WatchRecorder(clientSide.registry.watch("aux"))
      defer { clientAux.cancel() }
      try await clientAux.waitForAddresses([auxAddresses[0]], within: .seconds(10))

      let transport = RegistryClientTransport(
        target: .registry(service: "user-server"),
        registry: clientSide.registry,
        logger: testLogger("transport")
      )
      let calls = CallCounter()
      try await withThrowingDiscardingTaskGroup { group in
        let client = GRPCClient(transport: transport)
        group.addTask { try await client.runConnections() }
        defer {
          calls.stop()
          client.beginGracefulShutdown()
        }
        let users = User_UserMesService.Client(wrapping: client)
        for _ in 0 ..< 2 {
          group.addTask {
            while !calls.isStopped {
              do {
                _ = try await users.getById(.with { $0.id = 1 })
                calls.record(true)
              } catch {
                calls.record(false)
              }
            }
          }
        }
        try await waitUntil("calls go through", within: .seconds(10)) { calls.ok >= 20 }

        try await fault.apply(to: faulty)
        let faultStart = ContinuousClock.now
        do {
          // Writes go on: the registry fails over to a healthy member.
          try await serverSide.registry.register(
            ServiceInstance(name: "aux", address: auxAddresses[1])
          )
          try await serverSide.registry.deregister(service: "aux", address: auxAddresses[0])
          // A client started now, with the faulty member first, finds the server.
          let late = try registry(endpoints)
          let found = try await late.registry.instances(of: "user-server")
          #expect(found.map(\.address) == [address], "a client started during the fault")
          await late.stop()
          // The client's watcher, started on the faulty member, misses nothing.
          try await clientAux.waitForAddresses([auxAddresses[1]], within: .seconds(10))

          let okBefore = calls.ok
          try await waitUntil("four lease TTLs have passed", within: Self.ttl * 5) {
            ContinuousClock.now - faultStart >= Self.ttl * 4
          }
          #expect(calls.ok > okBefore, "calls went on during the fault")
        } catch {
          fault.heal(faulty)
          throw error
        }
        fault.heal(faulty)
        #expect(calls.failed == 0, "no call failed")
      }

      // Breaks if the lease expired at any point: etcd deletes the key and the observer sees it.
      let removals = observed.events.filter {
        if case .removed = $0 { return true }
        return false
      }
      #expect(removals.isEmpty, "the server's registration never disappeared")
      #expect(observed.currentAddresses == [address])
      let auxRemovals = observedAux.events.compactMap { event -> String? in
        if case .removed(let instance, _) = event { return instance.address }
        return nil
      }
      #expect(auxRemovals == [auxAddresses[0]], "only the deregistered instance went away")
      // Every change reached the client's watcher once, in order.
      let revisions = clientAux.events.dropFirst().map(\.revision)
      #expect(revisions.count == 2, "one add and one removal: \(clientAux.events)")
      #expect(zip(revisions, revisions.dropFirst()).allSatisfy { $0 < $1 })

      serving.cancel()
      _ = try? await serving.value
      for running in [serverSide, clientSide, observer] { await running.stop() }
    }
  }
}

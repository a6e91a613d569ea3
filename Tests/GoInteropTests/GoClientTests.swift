import Foundation
import GRPCRegistry
import RegistryCore
import Testing
import UserService

/// grpc-go clients (defaults: a BDP PING with nearly every response) calling Swift servers: the
/// stock server transport's control-frame limit drops them every ~200 calls; a server with
/// `TrafficPingResponder` (a `RegisteredServer` by default) keeps the connection.
@Suite("grpc-go clients against Swift servers", .serialized, .timeLimit(.minutes(5)))
struct GoClientTests {
  /// What `go-interop reconnect` reports.
  struct Reconnects: Decodable {
    var calls: Int
    var failures: Int
    var connection_drops: Int
    var errors: [String]?
  }

  /// One grpc-go client makes `calls` sequential GetById calls to `address` on one `grpc.ClientConn`
  /// and counts the times its connection left READY.
  static func goClient(
    _ address: String,
    calls: Int,
    streamed: Int = 0,
    concurrency: Int = 1
  ) async throws -> Reconnects {
    let process = try await GoInteropBinary.start([
      "reconnect", "-target", address, "-calls", "\(calls)", "-stream", "\(streamed)",
      "-concurrency", "\(concurrency)",
    ])
    let line: String
    do {
      line = try await process.line(startingWith: "{", within: .seconds(max(120, calls / 100)))
    } catch {
      await process.stop()
      throw error
    }
    await process.stop()
    return try JSONDecoder().decode(Reconnects.self, from: Data(("{" + line).utf8))
  }

  @Test(
    "1,000 calls from a grpc-go client: dropped every ~200 by the stock server, never with the responder",
    arguments: [false, true]
  )
  func plainServer(answeringTrafficPings: Bool) async throws {
    let report = try await withSwiftServer(answeringTrafficPings: answeringTrafficPings) {
      try await Self.goClient($0, calls: 1_000)
    }
    Self.check(report, answeringTrafficPings: answeringTrafficPings, server: "Swift server")
  }

  @Test(
    "1,000 server-streaming calls of 20 messages each from a grpc-go client: no drop with the responder",
    arguments: [false, true]
  )
  func streamingCalls(answeringTrafficPings: Bool) async throws {
    let report = try await withSwiftServer(answeringTrafficPings: answeringTrafficPings) {
      try await Self.goClient($0, calls: 1_000, streamed: 20)
    }
    // Fewer PINGs per call than unary (about one per stream): the stock server drops the client
    // less often, but it does.
    Self.check(
      report,
      answeringTrafficPings: answeringTrafficPings,
      server: "Swift server, List",
      dropsWithout: 1
    )
  }

  @Test(
    "a RegisteredServer keeps a grpc-go client's connection unless answersTrafficPings is off",
    arguments: [true, false]
  )
  func registeredServer(answersTrafficPings: Bool) async throws {
    let registry = InMemoryRegistry()
    let config = RegisteredServer.Config(name: "go-clients") {
      // The stock transport: the project's own (the default) needs no responder (below).
      $0.transport = .stock
      $0.answersTrafficPings = answersTrafficPings
      $0.drainDelay = .milliseconds(10)
    }
    let server = RegisteredServer(config: config, registry: registry, logger: testLogger()) {
      server in [UserDirectory(name: { server.advertisedAddress ?? "?" })]
    }
    let report = try await withThrowingTaskGroup(of: Reconnects?.self) { group in
      group.addTask {
        try await server.run()
        return nil
      }
      defer { server.beginGracefulShutdown() }
      let instance = try await server.registeredInstance()
      return try await Self.goClient(instance.address, calls: 1_000)
    }
    Self.check(report, answeringTrafficPings: answersTrafficPings, server: "RegisteredServer")
  }

  @Test(
    "HTTP2Server: grpc-go clients at 1 and 64 in flight, unary and streaming, never dropped",
    .timeLimit(.minutes(10)),
    arguments: [(1, 0), (64, 0), (1, 20), (64, 20)]
  )
  func ownServer(concurrency: Int, streamed: Int) async throws {
    // 20,000 unary calls (5,000 streaming calls of 20 messages) on one grpc-go connection, with
    // its BDP PING after nearly every response: a hundred times what the stock transport
    // allows. GO_CLIENT_CALLS sets the unary count (100,000 in BENCHMARKS.md's run).
    let unary = Int(ProcessInfo.processInfo.environment["GO_CLIENT_CALLS"] ?? "") ?? 20_000
    let calls = streamed == 0 ? unary : 5_000
    let report = try await withOwnServer {
      try await Self.goClient($0, calls: calls, streamed: streamed, concurrency: concurrency)
    }
    print("HTTP2Server, concurrency \(concurrency), streamed \(streamed): \(report)")
    #expect(report.calls == calls)
    #expect(report.failures == 0, "\(report.errors ?? [])")
    #expect(report.connection_drops == 0)
  }

  @Test("a RegisteredServer on its default transport keeps a grpc-go client's connection")
  func registeredServerOwnTransport() async throws {
    let registry = InMemoryRegistry()
    let config = RegisteredServer.Config(name: "go-clients") { $0.drainDelay = .milliseconds(10) }
    let server = RegisteredServer(config: config, registry: registry, logger: testLogger()) {
      server in [UserDirectory(name: { server.advertisedAddress ?? "?" })]
    }
    let report = try await withThrowingTaskGroup(of: Reconnects?.self) { group in
      group.addTask {
        try await server.run()
        return nil
      }
      defer { server.beginGracefulShutdown() }
      let instance = try await server.registeredInstance()
      return try await Self.goClient(instance.address, calls: 1_000)
    }
    Self.check(report, answeringTrafficPings: true, server: "RegisteredServer (HTTP2Server)")
  }

  /// No call fails; no drop with the responder, at least `dropsWithout` without it.
  static func check(
    _ report: Reconnects,
    answeringTrafficPings: Bool,
    server: String,
    dropsWithout: Int = 3
  ) {
    print("\(server), traffic PINGs answered: \(answeringTrafficPings): \(report)")
    #expect(report.failures == 0, "\(report.errors ?? [])")
    if answeringTrafficPings {
      #expect(report.connection_drops == 0)
    } else {
      // The stock transport's limit (200 control frames per 30 s) still trips: this is the
      // behaviour the responder exists for, and shows this test sees drops when they happen.
      #expect(report.connection_drops >= dropsWithout)
    }
  }
}

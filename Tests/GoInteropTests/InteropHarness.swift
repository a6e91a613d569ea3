import GRPCConnection
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCRegistry
import Logging
import RegistryCore
import RegistryPrimitives
import Synchronization
import Testing
import UserService

/// A logger that drops everything.
func testLogger() -> Logger {
  var logger = Logger(label: "go-interop-test")
  logger.logLevel = .critical
  return logger
}

/// Which server a test calls.
enum ServerKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
  /// `go-interop serve` (grpc-go 1.33, defaults: BDP pings on).
  case go
  /// grpc-swift-2's `HTTP2ServerTransport.Posix` serving the same services.
  case swift
  /// The project's own `HTTP2Server` serving the same services.
  case own

  var testDescription: String { self.rawValue }
}

/// Which client transport a test calls through.
enum ClientKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
  /// `RegistryClientTransport` (our `HTTP2Connection` per instance) over an `InMemoryRegistry`.
  case balanced
  /// Our `HTTP2Connection` on its own.
  case connection
  /// grpc-swift-nio-transport's `HTTP2ClientTransport.Posix`.
  case stock

  var testDescription: String { self.rawValue }
}

/// Splits `host:port`.
func hostAndPort(_ address: String) throws -> (host: String, port: Int) {
  guard let split = HostPort(address) else { throw GoInteropError("not host:port: \(address)") }
  return (split.host, split.port)
}

/// Runs `body` with a server of `kind` on a free loopback port; passes its `host:port`.
func withServer<R: Sendable>(
  _ kind: ServerKind,
  _ body: (String) async throws -> R
) async throws -> R {
  switch kind {
  case .go:
    return try await withGoServer { try await body($0.address) }
  case .swift:
    return try await withSwiftServer(body)
  case .own:
    return try await withOwnServer(body)
  }
}

/// Runs `body` with the project's `HTTP2Server` serving `UserMesService` and `InteropTest` on a
/// free loopback port; passes its address.
func withOwnServer<R: Sendable>(_ body: (String) async throws -> R) async throws -> R {
  let name = NameBox()
  let transport = HTTP2Server(host: "127.0.0.1", port: 0, logger: testLogger())
  let server = GRPCServer(
    transport: transport,
    services: [
      UserDirectory(name: { name.value }),
      InteropTestService(name: { name.value }),
    ]
  )
  return try await withThrowingDiscardingTaskGroup { group in
    group.addTask { try await server.serve() }
    defer { server.beginGracefulShutdown() }
    let address = try await transport.listeningAddress.description
    name.value = address
    return try await body(address)
  }
}

/// Runs `body` with a Swift server of `UserMesService` and `InteropTest`; passes its address.
/// The server is grpc-swift's stock `HTTP2ServerTransport.Posix`, with `TrafficPingResponder`
/// installed if `answeringTrafficPings`.
func withSwiftServer<R: Sendable>(
  answeringTrafficPings: Bool = false,
  _ body: (String) async throws -> R
) async throws -> R {
  let name = NameBox()
  var config = HTTP2ServerTransport.Posix.Config.defaults()
  if answeringTrafficPings { config.answerTrafficPings() }
  let server = GRPCServer(
    transport: HTTP2ServerTransport.Posix(
      address: .ipv4(host: "127.0.0.1", port: 0),
      transportSecurity: .plaintext,
      config: config
    ),
    services: [
      UserDirectory(name: { name.value }),
      InteropTestService(name: { name.value }),
    ]
  )
  return try await withThrowingDiscardingTaskGroup { group in
    group.addTask { try await server.serve() }
    defer { server.beginGracefulShutdown() }
    guard let listening = try await server.listeningAddress?.ipv4 else {
      throw GoInteropError("the Swift server is not listening on IPv4")
    }
    let address = "\(listening.host):\(listening.port)"
    name.value = address
    return try await body(address)
  }
}

/// Runs `body` with a client of `kind` calling the server at `address`.
func withClient<R: Sendable>(
  _ kind: ClientKind,
  address: String,
  _ body: (InteropClient) async throws -> R
) async throws -> R {
  let (host, port) = try hostAndPort(address)
  switch kind {
  case .balanced:
    let registry = InMemoryRegistry()
    try await registry.register(ServiceInstance(name: "interop", address: address))
    let transport = RegistryClientTransport(
      target: .registry(service: "interop"),
      registry: registry,
      logger: testLogger()
    )
    return try await withGRPCClient(transport: transport) { try await body(InteropClient($0)) }
  case .connection:
    let transport = HTTP2Connection(target: .ipv4(host: host, port: port), logger: testLogger())
    return try await withGRPCClient(transport: transport) { try await body(InteropClient($0)) }
  case .stock:
    let transport = try HTTP2ClientTransport.Posix(
      target: .ipv4(address: host, port: port),
      transportSecurity: .plaintext
    )
    return try await withGRPCClient(transport: transport) { try await body(InteropClient($0)) }
  }
}

/// What a call ended with: `ok` or the status code's name.
func outcome(_ call: () async throws -> Void) async -> String {
  do {
    try await call()
    return "ok"
  } catch let error as RPCError {
    return "\(error.code)"
  } catch {
    return "\(type(of: error)): \(error)"
  }
}

/// Counts successes and failures of concurrent callers.
final class Tally: Sendable {
  private struct State {
    var succeeded = 0
    var failed = 0
    var errors: [String] = []
  }
  private let state = Locked(State())

  func success() { self.state.withLock { $0.succeeded += 1 } }
  func failure(_ error: any Error) {
    self.state.withLock {
      $0.failed += 1
      if $0.errors.count < 5 { $0.errors.append("\(error)") }
    }
  }
  var succeeded: Int { self.state.withLock { $0.succeeded } }
  var failed: Int { self.state.withLock { $0.failed } }
  var errors: [String] { self.state.withLock { $0.errors } }
}

/// Makes `total` GetById calls from `concurrency` callers; every answer must name `expected`.
func callMany(
  _ client: InteropClient,
  total: Int,
  concurrency: Int,
  expected: String
) async -> Tally {
  let tally = Tally()
  let next = Counter()
  await withDiscardingTaskGroup { group in
    for _ in 0 ..< concurrency {
      group.addTask {
        while true {
          let index = next.next()
          if index >= total { return }
          do {
            let name = try await client.getById(Int64(index))
            if name == expected {
              tally.success()
            } else {
              tally.failure(GoInteropError("answer from \(name), expected \(expected)"))
            }
          } catch {
            tally.failure(error)
          }
        }
      }
    }
  }
  return tally
}

/// A shared counter handing out indices from 0.
final class Counter: Sendable {
  private let value = Atomic<Int>(0)
  func next() -> Int { self.value.wrappingAdd(1, ordering: .relaxed).oldValue }
}

/// A server's name, known once it listens.
final class NameBox: Sendable {
  private let state = Locked("")
  var value: String {
    get { self.state.withLock { $0 } }
    set { self.state.withLock { $0 = newValue } }
  }
}

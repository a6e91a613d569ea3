import EtcdHarness
import Foundation
import GRPCConnection
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf
import GRPCRegistry
import Logging
import RegistryPrimitives
import Synchronization
import UserService

#if canImport(Glibc)
import Glibc
#endif

/// `conn`: GetById calls per second, p50/p99 and client CPU-seconds per 10,000 calls at
/// concurrency 1, 16 and 64, for our `HTTP2Connection`, the stock `HTTP2ClientTransport.Posix`
/// and a grpc-go client, against a grpc-swift server and a grpc-go server, both child processes
/// (so this process's `getrusage` delta is the Swift client's CPU alone; the Go client reports
/// its own).
///
/// Clients: `ours` (a `GRPCClient` on `HTTP2Connection`), `direct` (the same connection without
/// `GRPCClient`, see `directGetById`), `stock` and `go`. Servers: `swift` (grpc-swift's stock
/// `HTTP2ServerTransport.Posix`), `swiftpings` (the same with `TrafficPingResponder`, grpc-go
/// client only), `own` (the project's `HTTP2Server`) and `go`.
///
/// The grpc-go side is `GoInterop/` built with Debian's Go packages (see its README); the Swift
/// server is this executable re-run with `REGISTRY_BENCH_SERVE_SWIFT=1`.
enum ConnectionScenario {
  /// `REGISTRY_BENCH_HANDLERS=pool` or `loop`: where the project's servers in conn and f run
  /// call handlers (`HTTP2Server.HandlerExecution`: `.concurrencyPool`, or
  /// `.eventLoopWhenAlone`); the server's default when it is not set. Any other value is an
  /// error, so that a typo cannot measure the default under another name.
  static func handlers() throws -> String? {
    guard let value = ProcessInfo.processInfo.environment["REGISTRY_BENCH_HANDLERS"] else {
      return nil
    }
    guard value == "pool" || value == "loop" else {
      throw BenchError(
        "REGISTRY_BENCH_HANDLERS must be 'pool' or 'loop' (unset for the server's default), not '\(value)'"
      )
    }
    return value
  }

  /// The cells to run (`go_ours_c1,swift_stock_c64`, …) from `REGISTRY_BENCH_CONN_ONLY`, for
  /// profiling one client under `perf`; all of them when it is not set.
  static var onlyCells: Set<String>? {
    ProcessInfo.processInfo.environment["REGISTRY_BENCH_CONN_ONLY"].map {
      Set($0.split(separator: ",").map { String($0) })
    }
  }

  /// Calls per cell (a server, a client, a concurrency); `REGISTRY_BENCH_CONN_CALLS` overrides.
  static var callsPerCell: Int {
    ProcessInfo.processInfo.environment["REGISTRY_BENCH_CONN_CALLS"].flatMap(Int.init) ?? 10_000
  }

  static let concurrencies = [1, 16, 64]

  static let scenario = Scenario(
    name: "conn",
    summary: "GetById calls/s, p50/p99, CPU per 10k calls: HTTP2Connection vs stock vs grpc-go"
  ) { context in
    try await run(context)
  }

  /// When this process was started as the Swift server of `conn`, serves until stdin closes and
  /// returns true.
  static func serveIfAsked() async throws -> Bool {
    guard ProcessInfo.processInfo.environment["REGISTRY_BENCH_SERVE_SWIFT"] == "1" else {
      return false
    }
    let name = NameBox()
    if ProcessInfo.processInfo.environment["REGISTRY_BENCH_SERVER"] == "own" {
      // The project's own server transport.
      let handlers = try Self.handlers()
      let transport = HTTP2Server(
        host: "127.0.0.1",
        port: 0,
        config: .defaults {
          switch handlers {
          case "pool": $0.handlerExecution = .concurrencyPool
          case "loop": $0.handlerExecution = .eventLoopWhenAlone
          default: ()
          }
        },
        logger: Logger(label: "bench")
      )
      let server = GRPCServer(transport: transport, services: [UserDirectory(name: { name.value })])
      try await withThrowingDiscardingTaskGroup { group in
        group.addTask { try await server.serve() }
        name.value = try await transport.listeningAddress.description
        FileHandle.standardOutput.write(Data("LISTENING \(name.value)\n".utf8))
        await Self.standardInputClosed()
        server.beginGracefulShutdown()
      }
      return true
    }
    var config = HTTP2ServerTransport.Posix.Config.defaults()
    if ProcessInfo.processInfo.environment["REGISTRY_BENCH_ANSWER_PINGS"] == "1" {
      config.answerTrafficPings()
    }
    let server = GRPCServer(
      transport: HTTP2ServerTransport.Posix(
        address: .ipv4(host: "127.0.0.1", port: 0),
        transportSecurity: .plaintext,
        config: config
      ),
      services: [UserDirectory(name: { name.value })]
    )
    try await withThrowingDiscardingTaskGroup { group in
      group.addTask { try await server.serve() }
      guard let address = try await server.listeningAddress?.ipv4 else {
        throw BenchError("the Swift server is not listening on IPv4")
      }
      name.value = "\(address.host):\(address.port)"
      FileHandle.standardOutput.write(Data("LISTENING \(name.value)\n".utf8))
      // The parent holds stdin open; its end (even by a crash) ends the server.
      await Self.standardInputClosed()
      server.beginGracefulShutdown()
    }
    return true
  }

  /// Returns once standard input reaches its end. The blocking read runs on a thread of its own,
  /// not in a task: with REGISTRY_BENCH_NIO_EXECUTOR=1 a task runs on an event loop, which a
  /// blocking read would stop.
  private static func standardInputClosed() async {
    await onThread { _ = FileHandle.standardInput.readDataToEndOfFile() }
  }

  private static func run(_ context: BenchContext) async throws -> Metrics {
    // Checked here, where the message reaches the user; the server children read it again.
    _ = try Self.handlers()
    var metrics = Metrics()
    let goBinary = try await buildGo()
    let (swiftServer, swiftAddress) = try await Self.startServer(
      CommandLine.arguments[0],
      [],
      environment: ["REGISTRY_BENCH_SERVE_SWIFT": "1"]
    )
    // The same Swift server with `TrafficPingResponder` (as a RegisteredServer runs by default),
    // called by the grpc-go client only: the stock server drops it every ~200 calls.
    let (answeringServer, answeringAddress) = try await Self.startServer(
      CommandLine.arguments[0],
      [],
      environment: ["REGISTRY_BENCH_SERVE_SWIFT": "1", "REGISTRY_BENCH_ANSWER_PINGS": "1"]
    )
    // The project's own server transport (HTTP2Server).
    let (ownServer, ownAddress) = try await Self.startServer(
      CommandLine.arguments[0],
      [],
      environment: ["REGISTRY_BENCH_SERVE_SWIFT": "1", "REGISTRY_BENCH_SERVER": "own"]
    )
    let (goServer, goAddress) = try await Self.startServer(
      goBinary,
      ["serve", "-addr", "127.0.0.1:0"]
    )
    // Each server exits when its standard input closes (`stop`); one left behind by an error
    // is killed when its `ChildProcess` goes.
    let children = [swiftServer, answeringServer, ownServer, goServer]
    let servers = [
      ("swift", swiftAddress), ("swiftpings", answeringAddress), ("own", ownAddress),
      ("go", goAddress),
    ]
    let serverPIDs = [
      "swift": swiftServer.processIdentifier, "swiftpings": answeringServer.processIdentifier,
      "own": ownServer.processIdentifier, "go": goServer.processIdentifier,
    ]
    let calls = Self.callsPerCell
    for (serverName, address) in servers {
      for concurrency in Self.concurrencies {
        let clients = serverName == "swiftpings" ? ["go"] : ["ours", "direct", "stock", "go"]
        for client in context.ordered(clients) {
          let key = "\(serverName)_\(client)_c\(concurrency)"
          if let only = Self.onlyCells, !only.contains(key) { continue }
          Report.progress(
            "conn: \(calls) calls, \(client) client -> \(serverName) server, c=\(concurrency)"
          )
          let serverCPUBefore = serverPIDs[serverName].flatMap(Self.cpuSeconds(pid:))
          let cell: Cell
          switch client {
          case "go":
            cell = try await goClient(goBinary, address, calls: calls, concurrency: concurrency)
          default:
            cell = try await swiftClient(
              stock: client == "stock",
              direct: client == "direct",
              address,
              calls: calls,
              concurrency: concurrency,
              phase: context.phase()
            )
          }
          metrics.set("\(key)_per_s", cell.callsPerSecond)
          metrics.set("\(key)_p50_ms", cell.p50)
          metrics.set("\(key)_p99_ms", cell.p99)
          metrics.set("\(key)_cpu_s_per_10k", cell.cpuSeconds * 10_000 / Double(max(cell.calls, 1)))
          metrics.set("\(key)_failed", cell.failed)
          if let before = serverCPUBefore,
            let after = serverPIDs[serverName].flatMap(Self.cpuSeconds(pid:))
          {
            // The server process's CPU over the cell, per 10,000 calls.
            metrics.set(
              "\(key)_server_cpu_s_per_10k",
              (after - before) * 10_000 / Double(max(cell.calls, 1))
            )
          }
          if cell.failed > 0 {
            let first = cell.firstFailure.map { "; the first: \($0)" } ?? ""
            metrics.note("\(key): \(cell.failed) of \(cell.calls) calls failed\(first)")
          }
        }
      }
    }
    // How often each Swift server drops one sequential grpc-go client (`go-interop reconnect`).
    for (serverName, address) in servers where serverName != "go" {
      let key = "\(serverName)_go_reconnect"
      if let only = Self.onlyCells, !only.contains(key) { continue }
      Report.progress("conn: 3000 sequential grpc-go calls -> \(serverName) server, counting drops")
      let output = try await Command.output(
        goBinary,
        ["reconnect", "-target", address, "-calls", "3000"]
      )
      struct Reconnects: Decodable {
        var failures: Int
        var connection_drops: Int
      }
      let report = try JSONDecoder().decode(Reconnects.self, from: Data(output.utf8))
      metrics.set("\(key)_drops_per_3000", report.connection_drops)
      metrics.set("\(key)_failed", report.failures)
    }
    for child in children { await child.stop() }
    return metrics
  }

  /// Starts a server child that prints `LISTENING host:port` and serves until its standard
  /// input closes; returns it and that address.
  private static func startServer(
    _ executable: String,
    _ arguments: [String],
    environment: [String: String] = [:]
  ) async throws -> (EtcdHarness.ChildProcess, String) {
    let child = try EtcdHarness.ChildProcess(
      executable,
      arguments,
      environment: environment,
      standardError: .inherit
    )
    let address = try await child.line(startingWith: "LISTENING ", within: .seconds(120))
    return (child, address)
  }

  /// A process's user and system CPU time so far, from `/proc/<pid>/stat`.
  static func cpuSeconds(pid: pid_t) -> Double? {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
      let end = stat.lastIndex(of: ")")
    else { return nil }
    // Fields after the command name: state is field 3; utime and stime are fields 14 and 15.
    let fields = stat[stat.index(after: end)...].split(separator: " ")
    guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else {
      return nil
    }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
  }

  struct Cell {
    var calls: Int
    var failed: Int
    /// What the first failed call threw (the Swift clients only).
    var firstFailure: String? = nil
    var callsPerSecond: Double
    var p50: Double
    var p99: Double
    var cpuSeconds: Double
  }

  private static func swiftClient(
    stock: Bool,
    direct: Bool = false,
    _ address: String,
    calls: Int,
    concurrency: Int,
    phase: Phase
  ) async throws -> Cell {
    guard let colon = address.lastIndex(of: ":"),
      let port = Int(address[address.index(after: colon)...])
    else { throw BenchError("not host:port: \(address)") }
    let host = String(address[..<colon])
    if stock {
      let transport = try HTTP2ClientTransport.Posix(
        target: .ipv4(address: host, port: port),
        transportSecurity: .plaintext
      )
      return try await withGRPCClient(transport: transport) {
        try await measure(User_UserMesService.Client(wrapping: $0), calls, concurrency, phase)
      }
    } else {
      var logger = Logger(label: "registry-bench.conn")
      logger.logLevel = .critical
      let transport = HTTP2Connection(target: .ipv4(host: host, port: port), logger: logger)
      if direct {
        return try await withThrowingTaskGroup(of: Void.self) { group in
          group.addTask { try await transport.connect() }
          defer { transport.beginGracefulShutdown() }
          let request = User_GetByIdReq.with { $0.id = 1 }
          return try await measureCalls(calls, concurrency, phase) {
            _ = try await directGetById(transport, request)
          }
        }
      }
      return try await withGRPCClient(transport: transport) {
        try await measure(User_UserMesService.Client(wrapping: $0), calls, concurrency, phase)
      }
    }
  }

  private static func measure<Transport: ClientTransport>(
    _ users: User_UserMesService.Client<Transport>,
    _ calls: Int,
    _ concurrency: Int,
    _ phase: Phase
  ) async throws -> Cell {
    let request = User_GetByIdReq.with { $0.id = 1 }
    return try await measureCalls(calls, concurrency, phase) {
      _ = try await users.getById(request)
    }
  }

  /// One GetById on `transport` without `GRPCClient`: the request written inline, the response
  /// read by the caller (no interceptors, no task group, no child task writing the request). The
  /// "direct" client of this scenario, to show what GRPCCore's per-call machinery costs on top of
  /// the connection.
  static func directGetById<T: ClientTransport>(
    _ transport: T,
    _ request: User_GetByIdReq
  ) async throws -> User_GetByIDResp {
    try await transport.withStream(
      descriptor: User_UserMesService.Method.GetById.descriptor,
      options: .defaults
    ) { stream, _ in
      try await stream.outbound.write(.metadata([:]))
      try await stream.outbound.write(
        .message(try ProtobufSerializer<User_GetByIdReq>().serialize(request))
      )
      await stream.outbound.finish()
      var message: User_GetByIDResp?
      for try await part in stream.inbound {
        switch part {
        case .metadata:
          continue
        case .message(let bytes):
          message = try ProtobufDeserializer<User_GetByIDResp>().deserialize(bytes)
        case .status(let status, let metadata):
          if let error = RPCError(status: status, metadata: metadata) { throw error }
        }
      }
      guard let message else { throw BenchError("GetById answered OK without a message") }
      return message
    }
  }

  private static func measureCalls(
    _ calls: Int,
    _ concurrency: Int,
    _ phase: Phase,
    _ call: @escaping @Sendable () async throws -> Void
  ) async throws -> Cell {
    try await call()  // connected before measuring
    let next = Counter()
    let cpuStart = processCPUSeconds()
    let start = ContinuousClock.now
    let firstFailure = Locked<String?>(nil)
    let (latencies, failed) = await withTaskGroup(of: ([Duration], Int).self) { group in
      for _ in 0 ..< concurrency {
        group.addTask {
          var samples: [Duration] = []
          var failed = 0
          while next.next() < calls, phase.isOpen {
            let callStart = ContinuousClock.now
            do {
              try await call()
            } catch {
              failed += 1
              if failed == 1 {
                let text = String(describing: error)
                firstFailure.withLock { $0 = $0 ?? text }
              }
            }
            samples.append(ContinuousClock.now - callStart)
          }
          return (samples, failed)
        }
      }
      var all: [Duration] = []
      var failures = 0
      for await (samples, failed) in group {
        all += samples
        failures += failed
      }
      return (all, failures)
    }
    let elapsed = ContinuousClock.now - start
    let cpu = processCPUSeconds() - cpuStart
    let summary = LatencySummary(latencies)
    return Cell(
      calls: latencies.count,
      failed: failed,
      firstFailure: firstFailure.withLock { $0 },
      callsPerSecond: Double(latencies.count) / elapsed.seconds,
      p50: summary.p50,
      p99: summary.p99,
      cpuSeconds: cpu
    )
  }

  private static func goClient(
    _ binary: String,
    _ address: String,
    calls: Int,
    concurrency: Int
  ) async throws -> Cell {
    let output = try await Command.output(
      binary,
      ["bench", "-target", address, "-calls", "\(calls)", "-concurrency", "\(concurrency)"]
    )
    struct Report: Decodable {
      var calls: Int
      var failures: Int
      var calls_per_s: Double
      var p50_ms: Double
      var p99_ms: Double
      var cpu_s: Double
    }
    let report = try JSONDecoder().decode(Report.self, from: Data(output.utf8))
    return Cell(
      calls: report.calls,
      failed: report.failures,
      callsPerSecond: report.calls_per_s,
      p50: report.p50_ms,
      p99: report.p99_ms,
      cpuSeconds: report.cpu_s
    )
  }

  /// CPU seconds (user + system) this process has used so far.
  static func processCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    let user = Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
    let system = Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
    return user + system
  }

  /// Builds `go-interop` from `GoInterop/` (GOPATH mode, Debian's Go packages).
  private static func buildGo() async throws -> String {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
      .deletingLastPathComponent().deletingLastPathComponent()
    Report.progress("conn: building the grpc-go client and server (go build, GOPATH mode)")
    return try await GoInteropBuild.build(repositoryRoot: root.path)
  }
}

/// Runs blocking `body` on a thread of its own (never on an event loop, which may be where tasks
/// run) and returns its result.
func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
  await withCheckedContinuation { continuation in
    Thread.detachNewThread { continuation.resume(returning: body()) }
  }
}

/// A server's name, known once it listens.
final class NameBox: Sendable {
  private let state = Locked("")
  var value: String {
    get { self.state.withLock { $0 } }
    set { self.state.withLock { $0 = newValue } }
  }
}

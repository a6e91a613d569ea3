import GRPCConnection
import GRPCCore
import GRPCNIOTransportHTTP2
import NIOCore
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Compares unary call cost of `HTTP2Connection` and the stock `HTTP2ClientTransport.Posix`
/// against the same in-process grpc-swift-2 server. Prints numbers; asserts nothing about speed.
///
/// Run with: `GRPC_CONNECTION_BENCH=1 swift test --scratch-path .build-conn --skip-build
/// --filter HTTP2ConnectionBenchmarks` (use `-c release` builds for meaningful numbers).
@Suite(
  "HTTP2Connection benchmarks",
  .serialized,
  .enabled(if: ProcessInfoLite.environment("GRPC_CONNECTION_BENCH") != nil)
)
struct HTTP2ConnectionBenchmarks {
  static let calls = Int(ProcessInfoLite.environment("GRPC_CONNECTION_BENCH_CALLS") ?? "") ?? 5000

  @Test("sequential unary: HTTP2Connection vs stock transport")
  func sequentialUnary() async throws {
    let server = TestServer()
    try await withThrowingDiscardingTaskGroup { group in
      group.addTask { try await server.server.serve() }
      let port = try await server.port()

      let ours = HTTP2Connection(target: .ipv4(host: "127.0.0.1", port: port), logger: makeLogger())
      let oursResult = try await Self.measure(transport: ours, group: &group)

      let stock = try HTTP2ClientTransport.Posix(
        target: .ipv4(address: "127.0.0.1", port: port),
        transportSecurity: .plaintext
      )
      let stockResult = try await Self.measure(transport: stock, group: &group)

      print(
        """
        unary echo, \(Self.calls) sequential calls, 16-byte messages, client+server in one process:
          HTTP2Connection:             \(oursResult)
          HTTP2ClientTransport.Posix:  \(stockResult)
        """
      )
      server.server.beginGracefulShutdown()
    }
  }

  @Test("sequential unary against a minimal raw HTTP/2 server (mostly client cost)")
  func sequentialUnaryRawServer() async throws {
    let serverChannel = try await startRawEchoServer(counter: PingCounter(), sendPings: false)
    let port = try #require(serverChannel.localAddress?.port)
    try await withThrowingDiscardingTaskGroup { group in
      let ours = HTTP2Connection(target: .ipv4(host: "127.0.0.1", port: port), logger: makeLogger())
      let oursResult = try await Self.measure(transport: ours, group: &group)
      let stock = try HTTP2ClientTransport.Posix(
        target: .ipv4(address: "127.0.0.1", port: port),
        transportSecurity: .plaintext
      )
      let stockResult = try await Self.measure(transport: stock, group: &group)
      print(
        """
        unary echo, \(Self.calls) sequential calls, raw swift-nio-http2 echo server in one process:
          HTTP2Connection:             \(oursResult)
          HTTP2ClientTransport.Posix:  \(stockResult)
        """
      )
    }
    try await serverChannel.close()
  }

  struct Result: CustomStringConvertible {
    var wallMicrosPerCall: Double
    var cpuMicrosPerCall: Double
    var description: String {
      "wall \(Self.format(self.wallMicrosPerCall)) µs/call, process CPU \(Self.format(self.cpuMicrosPerCall)) µs/call"
    }
    static func format(_ value: Double) -> String {
      String(Int((value * 10).rounded())).dropLast() + "."
        + String(Int((value * 10).rounded())).suffix(1)
    }
  }

  static func measure<Transport: ClientTransport>(
    transport: Transport,
    group: inout ThrowingDiscardingTaskGroup<any Error>
  ) async throws -> Result {
    let client = GRPCClient(transport: transport)
    group.addTask { try await client.runConnections() }
    let message = [UInt8](repeating: 1, count: 16)
    // Warm up.
    for _ in 0 ..< 500 {
      _ = try await client.unary(
        request: ClientRequest(message: message),
        descriptor: EchoMethod.unary,
        serializer: BytesSerializer(),
        deserializer: BytesDeserializer(),
        options: .defaults
      ) { try $0.message }
    }
    let cpuStart = Self.processCPUTime()
    let wallStart = ContinuousClock.now
    for _ in 0 ..< Self.calls {
      _ = try await client.unary(
        request: ClientRequest(message: message),
        descriptor: EchoMethod.unary,
        serializer: BytesSerializer(),
        deserializer: BytesDeserializer(),
        options: .defaults
      ) { try $0.message }
    }
    let wall = ContinuousClock.now - wallStart
    let cpu = Self.processCPUTime() - cpuStart
    client.beginGracefulShutdown()
    let wallMicros =
      Double(wall.components.seconds) * 1e6 + Double(wall.components.attoseconds) / 1e12
    return Result(
      wallMicrosPerCall: wallMicros / Double(Self.calls),
      cpuMicrosPerCall: cpu * 1e6 / Double(Self.calls)
    )
  }

  static func processCPUTime() -> Double {
    var usage = rusage()
    #if canImport(Glibc)
    getrusage(RUSAGE_SELF.rawValue, &usage)
    #else
    getrusage(RUSAGE_SELF, &usage)
    #endif
    let user = Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
    let system = Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
    return user + system
  }
}

enum ProcessInfoLite {
  static func environment(_ name: String) -> String? {
    getenv(name).map { String(cString: $0) }
  }
}

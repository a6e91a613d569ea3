import GRPCConnection
import GRPCCore
import RegistryPrimitives
import Synchronization
import Testing

@Suite("HTTP2Connection lifecycle", .serialized, .timeLimit(.minutes(2)))
struct HTTP2ConnectionLifecycleTests {
  private static let fastBackoff = HTTP2Connection.Config.defaults {
    $0.backoff = .init(
      initial: .milliseconds(50),
      maximum: .milliseconds(200),
      multiplier: 1.6,
      jitter: 0.2
    )
    $0.connectTimeout = .seconds(2)
  }

  @Test("connectivity: idle, connecting, ready, shutdown")
  func connectivityStates() async throws {
    let server = TestServer()
    try await withThrowingDiscardingTaskGroup { group in
      group.addTask { try await server.server.serve() }
      let port = try await server.port()
      let connection = HTTP2Connection(
        target: .ipv4(host: "127.0.0.1", port: port),
        logger: makeLogger()
      )
      #expect(connection.connectivityState == .idle)

      let seen = Locked<[ConnectivityState]>([])
      let states = connection.connectivityStates()
      group.addTask {
        for await state in states {
          seen.withLock { $0.append(state) }
        }
      }
      group.addTask { try await connection.connect() }

      try await poll("ready") { connection.connectivityState == .ready }
      let client = GRPCClient(transport: connection)
      let response = try await client.echo([5])
      #expect(try response.message == [5])

      connection.beginGracefulShutdown()
      try await poll("shutdown") { connection.connectivityState == .shutdown }
      // The watcher sequence finishes once connect() returned.
      try await poll("watcher saw shutdown") { seen.withLock { $0.last == .shutdown } }
      #expect(seen.withLock { $0 } == [.idle, .connecting, .ready, .shutdown])

      // After shutdown, new streams fail with failedPrecondition.
      let error = try await #require(throws: RPCError.self) {
        try await connection.withStream(descriptor: EchoMethod.unary, options: .defaults) { _, _ in
        }
      }
      #expect(error.code == .failedPrecondition)
      server.server.beginGracefulShutdown()
    }
  }

  @Test(
    "nothing listening: transientFailure and unavailable; wait-for-ready waits within the deadline"
  )
  func transientFailure() async throws {
    // A bound socket that does not listen refuses connections, and keeps the port from being
    // reused by another test's server meanwhile.
    let refusing = try RefusingPort()
    defer { refusing.close() }
    let port = refusing.port

    let connection = HTTP2Connection(
      target: .ipv4(host: "127.0.0.1", port: port),
      config: Self.fastBackoff,
      logger: makeLogger()
    )
    try await withThrowingDiscardingTaskGroup { group in
      group.addTask { try await connection.connect() }
      try await poll("transientFailure") { connection.connectivityState == .transientFailure }

      let unavailable = try await #require(throws: RPCError.self) {
        try await connection.withStream(descriptor: EchoMethod.unary, options: .defaults) { _, _ in
        }
      }
      #expect(unavailable.code == .unavailable)

      var options = CallOptions.defaults
      options.waitForReady = true
      options.timeout = .milliseconds(300)
      let start = ContinuousClock.now
      let deadline = try await #require(throws: RPCError.self) {
        try await connection.withStream(descriptor: EchoMethod.unary, options: options) { _, _ in }
      }
      #expect(deadline.code == .deadlineExceeded)
      #expect(ContinuousClock.now - start >= .milliseconds(250))

      connection.beginGracefulShutdown()
    }
    #expect(connection.connectivityState == .shutdown)
  }

  @Test(
    "server restart: in-flight and new calls fail with unavailable, then the connection recovers"
  )
  func serverRestart() async throws {
    let first = TestServer()
    let firstServe = Task { try await first.server.serve() }
    let port = try await first.port()
    try await withThrowingDiscardingTaskGroup { group in
      let connection = HTTP2Connection(
        target: .ipv4(host: "127.0.0.1", port: port),
        config: Self.fastBackoff,
        logger: makeLogger()
      )
      let client = GRPCClient(transport: connection)
      group.addTask { try await client.runConnections() }
      #expect(try await client.echo([1]).message == [1])

      // An RPC in flight when the connection breaks ends with unavailable.
      let inFlight = Task {
        try await client.echo([1], method: EchoMethod.hang).message
      }
      try await poll("the RPC is running on the server") { first.probe.startedHangingRPCs == 1 }
      first.probe.dropConnections()
      let inFlightError = try await #require(throws: RPCError.self) { try await inFlight.value }
      #expect(inFlightError.code == .unavailable)
      // Like grpc, a connection that ended goes idle and reconnects when an RPC needs it.
      try await poll("idle") { connection.connectivityState == .idle }

      // The server goes away.
      firstServe.cancel()
      _ = await firstServe.result

      try await poll("calls fail with unavailable") {
        do {
          _ = try await client.echo([2]).message
          return false
        } catch let error as RPCError {
          return error.code == .unavailable
        }
      }

      // Bring a server back on the same port; the connection reconnects on its own.
      let second = TestServer(port: port)
      group.addTask { try await second.server.serve() }
      try await poll("calls succeed again") {
        (try? await client.echo([3]).message) == [3]
      }
      #expect(connection.connectivityState == .ready)

      client.beginGracefulShutdown()
      second.server.beginGracefulShutdown()
    }
  }

  @Test("graceful shutdown lets in-flight RPCs finish")
  func gracefulShutdownDrains() async throws {
    try await withEchoServerAndClient { client, connection, _ in
      let (gate, open) = AsyncStream.makeStream(of: Void.self)
      let (started, markStarted) = AsyncStream.makeStream(of: Void.self)
      let call = Task {
        try await client.clientStreaming(
          request: StreamingClientRequest(of: [UInt8].self) { writer in
            try await writer.write([1])
            markStarted.yield()
            for await _ in gate { break }
            try await writer.write([2])
          },
          descriptor: EchoMethod.collect,
          serializer: BytesSerializer(),
          deserializer: BytesDeserializer(),
          options: .defaults
        ) { try $0.message }
      }
      for await _ in started { break }
      connection.beginGracefulShutdown()
      let rejected = try await #require(throws: RPCError.self) {
        try await connection.withStream(descriptor: EchoMethod.unary, options: .defaults) { _, _ in
        }
      }
      #expect(rejected.code == .failedPrecondition)
      open.yield()
      open.finish()
      #expect(try await call.value == [1, 2])
    }
  }
}

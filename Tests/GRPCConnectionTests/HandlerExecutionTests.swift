import GRPCCore
import NIOCore
import NIOPosix
import RegistryPrimitives
import Testing

@testable import GRPCConnection

/// Where `HTTP2Server` runs call handlers (`HandlerExecution`): a connection's only call on
/// its event loop, one handler per loop at a time, every other call on the global executor.
@Suite("HTTP2Server: where call handlers run")
struct HandlerExecutionTests {
  /// `Where`: answers [1] when its handler runs on an event loop, [0] otherwise. `Hold`: the
  /// same, once the gate opens.
  struct PlacementService: RegistrableRPCService {
    static let whereMethod = MethodDescriptor(fullyQualifiedService: "test.Place", method: "Where")
    static let holdMethod = MethodDescriptor(fullyQualifiedService: "test.Place", method: "Hold")
    let gate: Gate

    func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
      router.registerHandler(
        forMethod: Self.whereMethod,
        deserializer: BytesDeserializer(),
        serializer: BytesSerializer()
      ) { request, _ in
        _ = try await ServerRequest(stream: request)
        // Across a suspension, so that the whole handler is checked, not only its first part.
        try await Task.sleep(for: .milliseconds(1))
        return StreamingServerResponse(single: ServerResponse(message: [Self.onEventLoop]))
      }
      router.registerHandler(
        forMethod: Self.holdMethod,
        deserializer: BytesDeserializer(),
        serializer: BytesSerializer()
      ) { request, _ in
        _ = try await ServerRequest(stream: request)
        self.gate.arrived()
        await self.gate.waitUntilOpen()
        return StreamingServerResponse(single: ServerResponse(message: [Self.onEventLoop]))
      }
      self.registerBudgetMethods(with: &router)
    }

    static let streamMethod = MethodDescriptor(
      fullyQualifiedService: "test.Place",
      method: "Stream"
    )
    static let spinMethod = MethodDescriptor(fullyQualifiedService: "test.Place", method: "Spin")

    /// `Stream`: writes one-byte messages (where it runs) without ever waiting, until it runs
    /// off the loop or has written `streamLimit`. `Spin`: keeps its thread busy for 20 ms in one
    /// stretch, then suspends and answers where it runs.
    static let streamLimit = 20_000

    func registerBudgetMethods<Transport: ServerTransport>(
      with router: inout RPCRouter<Transport>
    ) {
      router.registerHandler(
        forMethod: Self.streamMethod,
        deserializer: BytesDeserializer(),
        serializer: BytesSerializer()
      ) { request, _ in
        _ = try await ServerRequest(stream: request)
        return StreamingServerResponse { writer in
          for _ in 0 ..< Self.streamLimit {
            let placed = Self.onEventLoop
            try await writer.write([placed])
            if placed == 0 { break }
          }
          return [:]
        }
      }
      router.registerHandler(
        forMethod: Self.spinMethod,
        deserializer: BytesDeserializer(),
        serializer: BytesSerializer()
      ) { request, _ in
        _ = try await ServerRequest(stream: request)
        let start = ContinuousClock.now
        while ContinuousClock.now - start < .milliseconds(20) {}
        try await Task.sleep(for: .milliseconds(1))
        return StreamingServerResponse(single: ServerResponse(message: [Self.onEventLoop]))
      }
    }

    static var onEventLoop: UInt8 {
      MultiThreadedEventLoopGroup.currentEventLoop == nil ? 0 : 1
    }
  }

  /// A handler waits here until the test opens it.
  final class Gate: Sendable {
    private struct State {
      var arrivals = 0
      var open = false
      var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Locked(State())

    var arrivals: Int { self.state.withLock { $0.arrivals } }

    func arrived() {
      self.state.withLock { $0.arrivals += 1 }
    }

    func waitUntilOpen() async {
      await withCheckedContinuation { continuation in
        let open = self.state.withLock { state -> Bool in
          if state.open { return true }
          state.waiters.append(continuation)
          return false
        }
        if open { continuation.resume() }
      }
    }

    func open() {
      let waiters = self.state.withLock { state in
        state.open = true
        defer { state.waiters.removeAll() }
        return state.waiters
      }
      for waiter in waiters { waiter.resume() }
    }
  }

  /// On the loop with a budget no handler here uses up, however slow the machine: these tests
  /// check where handlers start, not when they move (the tests with a 1 ms budget do that).
  static let onTheLoop = HTTP2Server.HandlerExecution.eventLoopWhenAlone(budget: .seconds(60))

  private func withPlacementServer(
    _ execution: HTTP2Server.HandlerExecution,
    gate: Gate = Gate(),
    _ body: (GRPCClient<HTTP2Connection>) async throws -> Void
  ) async throws {
    let transport = HTTP2Server(
      host: "127.0.0.1",
      port: 0,
      config: .defaults { $0.handlerExecution = execution },
      logger: makeLogger()
    )
    let server = GRPCServer(transport: transport, services: [PlacementService(gate: gate)])
    try await withThrowingDiscardingTaskGroup { group in
      group.addTask { try await server.serve() }
      let port = try await transport.listeningAddress.port
      let client = GRPCClient(
        transport: HTTP2Connection(
          target: .ipv4(host: "127.0.0.1", port: port),
          logger: makeLogger()
        )
      )
      group.addTask { try await client.runConnections() }
      try await body(client)
      client.beginGracefulShutdown()
      server.beginGracefulShutdown()
    }
  }

  private func place(
    _ client: GRPCClient<HTTP2Connection>,
    _ method: MethodDescriptor = PlacementService.whereMethod
  ) async throws -> UInt8? {
    try await client.unary(
      request: ClientRequest(message: []),
      descriptor: method,
      serializer: BytesSerializer(),
      deserializer: BytesDeserializer(),
      options: .defaults
    ) { try $0.message.first }
  }

  @Test("With eventLoopWhenAlone a connection's only call runs on its event loop, call after call")
  func aloneOnTheLoop() async throws {
    try await self.withPlacementServer(Self.onTheLoop) { client in
      // Each call gives the loop's place back when its handler returns: the next one takes it.
      for _ in 0 ..< 3 {
        let placed = try await self.place(client)
        #expect(placed == 1)
      }
    }
  }

  @Test("By default a lone call's handler runs on the loop, with a budget of 1 ms")
  func defaultPlacement() {
    #expect(HTTP2Server.Config.defaults.handlerExecution == .eventLoopWhenAlone)
    #expect(HTTP2Server.HandlerExecution.eventLoopWhenAlone.eventLoopBudget == .milliseconds(1))
    #expect(HTTP2Server.HandlerExecution.concurrencyPool.eventLoopBudget == nil)
  }

  @Test("With concurrencyPool no handler runs on an event loop")
  func poolOnly() async throws {
    try await self.withPlacementServer(.concurrencyPool) { client in
      let placed = try await self.place(client)
      #expect(placed == 0)
    }
  }

  @Test("A call beside another on the same connection runs on the global executor")
  func besideAnotherOnThePool() async throws {
    let gate = Gate()
    try await self.withPlacementServer(Self.onTheLoop, gate: gate) { client in
      try await withThrowingTaskGroup(of: UInt8?.self) { group in
        group.addTask { try await self.place(client, PlacementService.holdMethod) }
        try await poll("the held call's handler started") { gate.arrivals == 1 }
        let beside = try await self.place(client)
        #expect(beside == 0)
        gate.open()
        let held = try await group.next() ?? nil
        #expect(held == 1)
      }
    }
  }

  @Test("A handler that streams without ever waiting leaves the loop after its budget")
  func streamingHandlerMoves() async throws {
    // 100 ms, not less: the handler's first stretch (before its first write) must fit in the
    // budget even when a loaded machine takes the loop's thread away for a while.
    try await self.withPlacementServer(.eventLoopWhenAlone(budget: .milliseconds(100))) { client in
      let placements = try await client.serverStreaming(
        request: ClientRequest(message: []),
        descriptor: PlacementService.streamMethod,
        serializer: BytesSerializer(),
        deserializer: BytesDeserializer(),
        options: .defaults
      ) { response in
        var placements: [UInt8] = []
        for try await message in response.messages { placements.append(message.first ?? 9) }
        return placements
      }
      // It started on the loop, and moved long before its 20,000 messages were written (100 ms
      // of writes in place: a debug build under a sanitizer writes one or two thousand).
      #expect(placements.first == 1)
      #expect(placements.last == 0)
      #expect(placements.count < PlacementService.streamLimit, "\(placements.count) messages")
    }
  }

  @Test("A handler that keeps the loop busy past its budget goes on on the global executor")
  func busyHandlerMoves() async throws {
    try await self.withPlacementServer(.eventLoopWhenAlone(budget: .milliseconds(1))) { client in
      let busy = try await self.place(client, PlacementService.spinMethod)
      #expect(busy == 0)
    }
  }

  @Test("A loop's place holds one handler at a time, and jobs on it run on that loop")
  func slotTakesOneHandler() async throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let loop = group.next()
    let slot = EventLoopHandlerSlot(eventLoop: loop, budget: .milliseconds(1))
    let taken = try await loop.submit { (slot.take(), slot.take()) }.get()
    #expect(taken == (true, false))
    slot.release()  // from off the loop
    let again = try await loop.submit { slot.take() }.get()
    #expect(again)
    let ranOn = await Task(executorPreference: slot) {
      MultiThreadedEventLoopGroup.currentEventLoop.map { $0 === loop } ?? false
    }.value
    #expect(ranOn)
    // A job that runs past the budget moves the holder; giving the place back resets that.
    let moved = await Task(executorPreference: slot) {
      let start = ContinuousClock.now
      while ContinuousClock.now - start < .milliseconds(5) {}
      await Task.yield()
      return slot.handlerMoved
    }.value
    #expect(moved)
    slot.release()
    let reset = try await loop.submit { (slot.take(), slot.handlerMoved) }.get()
    #expect(reset == (true, false))
    try await group.shutdownGracefully()
  }
}

import GRPCCore
import Testing
import UserService

/// Calls of every kind to a grpc-go server (defaults: BDP pings with nearly every response) and
/// to a Swift server, through the balanced transport, our connection and the stock transport.
@Suite("grpc-go interop", .serialized, .timeLimit(.minutes(10)))
struct GoInteropTests {
  @Test("unary and streaming calls succeed", arguments: ServerKind.allCases, ClientKind.allCases)
  func callsOfEveryKind(server: ServerKind, client: ClientKind) async throws {
    try await withServer(server) { address in
      try await withClient(client, address: address) { calls in
        let value1 = try await calls.getById(7)
        #expect(value1 == address)
        let listed = try await calls.list(5)
        #expect(listed.map(\.id) == [1, 2, 3, 4, 5])
        #expect(listed.allSatisfy { $0.name == address })
        let collected = try await calls.collect(["a", "b", "c"])
        #expect(collected.id == 3)
        #expect(collected.name == "a,b,c")
        let value2 = try await calls.chat(["x", "y", "z"])
        #expect(value2 == ["x", "y", "z"])
      }
    }
  }

  /// Past ~200 calls the stock transport's peer limit on control frames would trip on grpc-go's
  /// BDP pings; ours must keep going on one connection.
  @Test(
    "2,000 calls, then streams, on one connection",
    arguments: [ClientKind.balanced, .connection]
  )
  func manyCallsThenStreams(client: ClientKind) async throws {
    try await withGoServer { server in
      try await withClient(client, address: server.address) { calls in
        let tally = await callMany(calls, total: 2_000, concurrency: 1, expected: server.address)
        #expect(tally.failed == 0, "\(tally.errors)")
        #expect(tally.succeeded == 2_000)
        let value4 = try await calls.list(100).count
        #expect(value4 == 100)
        let value5 = try await calls.chat(Array(repeating: "m", count: 300)).count
        #expect(value5 == 300)
      }
    }
  }

  @Test(
    "a deadline that passes ends the call with deadlineExceeded",
    arguments: ServerKind.allCases,
    ClientKind.allCases
  )
  func deadline(server: ServerKind, client: ClientKind) async throws {
    try await withServer(server) { address in
      try await withClient(client, address: address) { calls in
        var options = CallOptions.defaults
        options.timeout = .milliseconds(200)
        let start = ContinuousClock.now
        let result = await outcome { _ = try await calls.slow(10_000, options) }
        #expect(result == "deadlineExceeded")
        // It ends at the deadline (0.2 s measured, every client and server), not when the
        // server would have answered (10 s); the bound leaves room for a slow machine. (The
        // Swift server's handler must end on the RPC's cancellation handle, see
        // `InteropTestService`; it once slept on, and the server's shutdown waited ~10 s for it.)
        #expect(ContinuousClock.now - start < .seconds(5))
        // The connection is still good after it.
        let value6 = try await calls.getById(1)
        #expect(value6 == address)
      }
    }
  }

  @Test("a cancelled call ends with cancelled", arguments: ServerKind.allCases, ClientKind.allCases)
  func cancellation(server: ServerKind, client: ClientKind) async throws {
    try await withServer(server) { address in
      try await withClient(client, address: address) { calls in
        // A warm connection, so the cancellation hits a call in flight, not a connect.
        let value7 = try await calls.getById(1)
        #expect(value7 == address)
        let start = ContinuousClock.now
        let echoed = AsyncStream.makeStream(of: Void.self)
        let call = Task {
          let result = await outcome { try await calls.heldChat { echoed.continuation.yield() } }
          echoed.continuation.finish()
          return result
        }
        // Cancelled once the server has echoed a message: the call is open at both ends (a call
        // that fails before that ends the stream, and the check below reports how it ended).
        var iterator = echoed.stream.makeAsyncIterator()
        await iterator.next()
        call.cancel()
        let result = await call.value
        if client == .stock {
          // Measured: the stock transport ends a streaming call cancelled in flight with a
          // `CancellationError` rather than `RPCError(.cancelled)` (and some unary calls with
          // `unknown`), against grpc-go and grpc-swift servers alike; ours reports `cancelled`.
          withKnownIssue(
            "stock transport: a cancelled call may end 'unknown'",
            isIntermittent: true
          ) {
            #expect(result == "cancelled")
          }
        } else {
          #expect(result == "cancelled")
        }
        #expect(ContinuousClock.now - start < .seconds(5))
        let value8 = try await calls.getById(2)
        #expect(value8 == address)
      }
    }
  }

  @Test(
    "messages under the 4 MiB limit pass, over it fail with resourceExhausted",
    arguments: ServerKind.allCases,
    ClientKind.allCases
  )
  func largeMessages(server: ServerKind, client: ClientKind) async throws {
    try await withServer(server) { address in
      try await withClient(client, address: address) { calls in
        let under = InteropTestService.user(1, String(repeating: "u", count: 3 * 1024 * 1024))
        let echoed = try await calls.echo(under)
        #expect(echoed == under)
        let over = InteropTestService.user(2, String(repeating: "o", count: 5 * 1024 * 1024))
        let result = await outcome { _ = try await calls.echo(over) }
        if server == .swift {
          // Measured: grpc-swift's server answers an oversized request with RST_STREAM CANCEL
          // and no status, at times after a resourceExhausted status. gRPC maps CANCEL to
          // `cancelled` (our connection); the stock transport reports `unavailable` for any
          // reset. Either way the call fails and the connection goes on (checked below).
          #expect(["resourceExhausted", "cancelled", "unavailable"].contains(result), "\(result)")
        } else {
          #expect(result == "resourceExhausted")
        }
        let value9 = try await calls.getById(3)
        #expect(value9 == address)
      }
    }
  }

  @Test(
    "an unknown method fails with unimplemented",
    arguments: ServerKind.allCases,
    ClientKind.allCases
  )
  func unknownMethod(server: ServerKind, client: ClientKind) async throws {
    try await withServer(server) { address in
      try await withClient(client, address: address) { calls in
        let result = await outcome { try await calls.missing() }
        #expect(result == "unimplemented")
        let value10 = try await calls.getById(1)
        #expect(value10 == address)
      }
    }
  }

  @Test(
    "a server error arrives with its code and message",
    arguments: ServerKind.allCases,
    ClientKind.allCases
  )
  func serverError(server: ServerKind, client: ClientKind) async throws {
    try await withServer(server) { address in
      try await withClient(client, address: address) { calls in
        let value11 = try await calls.fail(0)
        #expect(value11 == address)
        for code in [RPCError.Code.notFound, .failedPrecondition, .internalError, .unavailable] {
          do {
            _ = try await calls.fail(Int64(code.rawValue))
            Issue.record("Fail(\(code)) succeeded")
          } catch let error as RPCError {
            #expect(error.code == code)
            #expect(error.message == "requested failure")
          }
        }
      }
    }
  }
}

import Testing

/// 100,000 calls to the grpc-go server through the balanced transport, without one failure
/// (`scripts/test` runs these in its last phase, the load tests), and the same to a Swift server.
@Suite("grpc-go interop load", .serialized, .timeLimit(.minutes(15)))
struct GoInteropLoadTests {
  @Test("100,000 calls through the balanced transport", arguments: ServerKind.allCases, [1, 64])
  func hundredThousandCalls(server: ServerKind, concurrency: Int) async throws {
    try await withServer(server) { address in
      try await withClient(.balanced, address: address) { calls in
        let tally = await callMany(
          calls,
          total: 100_000,
          concurrency: concurrency,
          expected: address
        )
        #expect(tally.failed == 0, "\(tally.errors)")
        #expect(tally.succeeded == 100_000)
      }
    }
  }
}

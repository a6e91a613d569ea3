import Testing

/// 100,000 calls to the grpc-go server through the balanced transport at concurrency 1 and 64,
/// without one failure (`scripts/test` runs these alone, in its last phase); 5,000 to a
/// Swift server for comparison (the stock server transport, not the subject here, is slower).
@Suite("grpc-go interop load", .serialized, .timeLimit(.minutes(15)))
struct GoInteropLoadTests {
  @Test(
    "calls through the balanced transport without a failure",
    arguments: [
      (ServerKind.go, 1, 100_000), (ServerKind.go, 64, 100_000), (ServerKind.swift, 1, 5_000),
      (ServerKind.swift, 64, 5_000),
    ]
  )
  func manyCalls(server: ServerKind, concurrency: Int, total: Int) async throws {
    try await withServer(server) { address in
      try await withClient(.balanced, address: address) { calls in
        let start = ContinuousClock.now
        let tally = await callMany(
          calls,
          total: total,
          concurrency: concurrency,
          expected: address
        )
        print(
          "\(server) server, concurrency \(concurrency): \(tally.succeeded) of \(total) calls in \(ContinuousClock.now - start), \(tally.failed) failed"
        )
        #expect(tally.failed == 0, "\(tally.errors)")
        #expect(tally.succeeded == total)
      }
    }
  }
}

import GRPCConnection
import GRPCCore
import Testing

/// Many calls on one connection to the stock grpc-swift-2 server, sequential and concurrent:
/// what a connection that loses, misroutes or stalls one call in thousands fails. About a minute
/// on two busy cores, so `scripts/test` runs it in its load phase, not in the fast tier.
@Suite("HTTP2Connection under load", .serialized, .timeLimit(.minutes(5)))
struct ConnectionLoadTests {
  @Test("10,000 sequential unary calls")
  func sequentialCalls() async throws {
    try await withEchoServerAndClient { client, _, _ in
      var failures = 0
      for i in 0 ..< 10_000 {
        let message = [UInt8(truncatingIfNeeded: i), UInt8(truncatingIfNeeded: i >> 8)]
        do {
          if try await client.echo(message).message != message { failures += 1 }
        } catch {
          failures += 1
        }
      }
      #expect(failures == 0)
    }
  }

  @Test("10,000 unary calls at concurrency 64")
  func concurrentCalls() async throws {
    try await withEchoServerAndClient { client, _, _ in
      let failures = try await withThrowingTaskGroup(of: Int.self) { group in
        for worker in 0 ..< 64 {
          group.addTask {
            var failures = 0
            var i = worker
            while i < 10_000 {
              let message = [UInt8(truncatingIfNeeded: i), UInt8(truncatingIfNeeded: i >> 8)]
              do {
                if try await client.echo(message).message != message { failures += 1 }
              } catch {
                failures += 1
              }
              i += 64
            }
            return failures
          }
        }
        return try await group.reduce(0, +)
      }
      #expect(failures == 0)
    }
  }
}

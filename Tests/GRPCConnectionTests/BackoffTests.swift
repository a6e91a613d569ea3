import GRPCConnection
import Testing

/// The package's one backoff (`HTTP2Connection.Backoff`, also `EtcdClient.Backoff`).
@Suite("Backoff")
struct BackoffTests {
  @Test("delays grow by the multiplier from the initial delay and stop at the maximum")
  func growth() {
    let backoff = HTTP2Connection.Backoff(
      initial: .milliseconds(50),
      maximum: .seconds(1),
      multiplier: 2,
      jitter: 0
    )
    let delays = (0 ..< 8).map { backoff.delay(attempt: $0) }
    #expect(
      delays == [50, 100, 200, 400, 800, 1000, 1000, 1000].map { Duration.milliseconds($0) }
    )
    #expect(backoff.delay(attempt: 10_000) == .seconds(1), "no overflow on a long outage")
    #expect(backoff.delay(attempt: -1) == .milliseconds(50))
  }

  @Test("jitter spreads each delay within ± its fraction, and is clamped to 0...1")
  func jitter() {
    let backoff = HTTP2Connection.Backoff(
      initial: .seconds(1),
      maximum: .seconds(10),
      multiplier: 2,
      jitter: 0.2
    )
    let delays = (0 ..< 200).map { _ in backoff.delay(attempt: 1) }
    #expect(delays.allSatisfy { $0 >= .milliseconds(1600) && $0 <= .milliseconds(2400) })
    #expect(Set(delays).count > 1, "spread, not a constant")

    var wild = backoff
    wild.jitter = 5
    #expect((0 ..< 100).allSatisfy { _ in wild.delay(attempt: 0) <= .seconds(2) })
    wild.jitter = -1
    #expect(wild.delay(attempt: 0) == .seconds(1))
  }
}

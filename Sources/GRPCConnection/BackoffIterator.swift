/// Successive reconnect delays: `initial`, then ×`multiplier` up to `max`, each with jitter.
struct BackoffIterator {
  private let policy: HTTP2Connection.Backoff
  private var current: Double?

  init(_ policy: HTTP2Connection.Backoff) {
    self.policy = policy
    self.current = nil
  }

  mutating func reset() {
    self.current = nil
  }

  mutating func next() -> Duration {
    let maxSeconds = Self.seconds(self.policy.maximum)
    let base: Double
    if let current = self.current {
      base = min(current * self.policy.multiplier, maxSeconds)
    } else {
      base = min(Self.seconds(self.policy.initial), maxSeconds)
    }
    self.current = base
    // Jitter spreads the reconnects of many clients that lost the same server.
    let spread = max(0, self.policy.jitter) * base
    let jittered = max(0, base + Double.random(in: -spread ... spread))
    return .nanoseconds(Int64(jittered * 1e9))
  }

  private static func seconds(_ duration: Duration) -> Double {
    let (seconds, attoseconds) = duration.components
    return Double(seconds) + Double(attoseconds) / 1e18
  }
}

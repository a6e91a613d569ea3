/// Successive reconnect delays of a ``HTTP2Connection/Backoff``: attempt 0, 1, 2, ... until
/// ``reset()``.
struct BackoffIterator {
  private let policy: HTTP2Connection.Backoff
  private var attempt = 0

  init(_ policy: HTTP2Connection.Backoff) {
    self.policy = policy
  }

  mutating func reset() {
    self.attempt = 0
  }

  mutating func next() -> Duration {
    defer { self.attempt += 1 }
    return self.policy.delay(attempt: self.attempt)
  }
}

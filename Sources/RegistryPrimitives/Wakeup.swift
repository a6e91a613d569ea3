/// Where a loop parks until the state it watches changes: kept inside the value a ``Locked``
/// guards, next to that state.
///
/// The loop parks with ``Locked/park(at:unless:)``, which checks its condition and stores the
/// continuation under the same lock, so no change can slip between the two. Whoever changes the
/// state takes the continuation (``take()``) under the lock and resumes it after unlocking. One
/// loop parks per `Wakeup`.
package struct Wakeup: Sendable {
  private var continuation: CheckedContinuation<Void, Never>?

  package init() {}

  /// Takes the parked loop's continuation, if one is parked; resume it after unlocking.
  package mutating func take() -> CheckedContinuation<Void, Never>? {
    defer { self.continuation = nil }
    return self.continuation
  }

  fileprivate mutating func park(_ continuation: CheckedContinuation<Void, Never>) {
    assert(self.continuation == nil, "two loops parked on one Wakeup")
    self.continuation = continuation
  }
}

extension Locked {
  /// Parks the calling loop until the continuation at `slot` is taken and resumed, unless
  /// `ready` already holds (checked under the lock, which it may use to consume a pending
  /// wake-up). The loop checks its state again after it returns: a wake-up says that something
  /// changed, not what.
  package func park(
    at slot: any WritableKeyPath<Value, Wakeup> & Sendable,
    unless ready: (inout sending Value) -> Bool
  ) async {
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
      let now = self.withLock { value in
        if ready(&value) { return true }
        value[keyPath: slot].park(continuation)
        return false
      }
      if now { continuation.resume() }
    }
  }
}

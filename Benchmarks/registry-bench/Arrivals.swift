import RegistryPrimitives
import Synchronization

/// When things arrived, by name, and a way to wait for them.
///
/// Observers (watch consumers) ``record(_:at:)`` the instant they saw something; the measuring
/// task waits for the `count`-th arrival of a name. The timestamps are taken by the observers,
/// so the measuring task's own wake-up latency is not part of a measurement.
final class Arrivals: Sendable {
  private struct Waiter {
    var key: String
    var count: Int
    var continuation: CheckedContinuation<ContinuousClock.Instant?, Never>
  }

  private struct State {
    var times: [String: [ContinuousClock.Instant]] = [:]
    var waiters: [UInt64: Waiter] = [:]
    var abandoned: Set<UInt64> = []
    var nextID: UInt64 = 0
  }

  private let state = Locked(State())

  func record(_ key: String, at instant: ContinuousClock.Instant = .now) {
    let ready = self.state.withLock { state in
      state.times[key, default: []].append(instant)
      let times = state.times[key]!
      var ready: [(CheckedContinuation<ContinuousClock.Instant?, Never>, ContinuousClock.Instant)] =
        []
      for (id, waiter) in state.waiters where waiter.key == key && waiter.count <= times.count {
        ready.append((waiter.continuation, Self.instant(times, waiter.count)))
        state.waiters[id] = nil
      }
      return ready
    }
    for (continuation, instant) in ready { continuation.resume(returning: instant) }
  }

  func count(_ key: String) -> Int {
    self.state.withLock { $0.times[key]?.count ?? 0 }
  }

  /// Every arrival instant of `key`, in the order recorded.
  func times(_ key: String) -> [ContinuousClock.Instant] {
    self.state.withLock { $0.times[key] ?? [] }
  }

  /// The instant by which `key` had arrived `count` times (the latest of the first `count`
  /// arrivals), or `nil` when that does not happen within `timeout`.
  func wait(
    _ key: String,
    count: Int = 1,
    timeout: Duration
  ) async -> ContinuousClock.Instant? {
    let id = self.state.withLock { state in
      state.nextID += 1
      return state.nextID
    }
    let instant = await withTaskGroup(of: ContinuousClock.Instant?.self) { group in
      group.addTask { await self.suspend(id: id, key: key, count: count) }
      group.addTask {
        // Cancelled early when the arrival came first; abandoning is then a no-op.
        try? await Task.sleep(for: timeout)
        self.abandon(id)
        return nil
      }
      let first = await group.next() ?? nil
      group.cancelAll()
      return first
    }
    self.state.withLock { _ = $0.abandoned.remove(id) }
    return instant
  }

  private func suspend(id: UInt64, key: String, count: Int) async -> ContinuousClock.Instant? {
    await withCheckedContinuation { continuation in
      let now: ContinuousClock.Instant?? = self.state.withLock { state in
        if state.abandoned.remove(id) != nil { return .some(nil) }
        if let times = state.times[key], times.count >= count {
          return .some(Self.instant(times, count))
        }
        state.waiters[id] = Waiter(key: key, count: count, continuation: continuation)
        return .none
      }
      if let now { continuation.resume(returning: now) }
    }
  }

  private func abandon(_ id: UInt64) {
    let waiter = self.state.withLock { state -> Waiter? in
      if let waiter = state.waiters.removeValue(forKey: id) { return waiter }
      state.abandoned.insert(id)
      return nil
    }
    waiter?.continuation.resume(returning: nil)
  }

  private static func instant(
    _ times: [ContinuousClock.Instant],
    _ count: Int
  ) -> ContinuousClock.Instant {
    times.prefix(count).max()!
  }
}

import RegistryPrimitives
import Synchronization

/// A one-shot signal: ``wait()`` suspends until ``fire()`` has been called (before or after).
/// Cancelling a waiter returns it early.
final class Signal: Sendable {
  private struct State {
    var fired = false
    var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
    var nextID: UInt64 = 0
  }

  private let state = Locked(State())

  var isFired: Bool { self.state.withLock { $0.fired } }

  func fire() {
    let waiters = self.state.withLock { state in
      state.fired = true
      defer { state.waiters.removeAll() }
      return Array(state.waiters.values)
    }
    for waiter in waiters { waiter.resume() }
  }

  func wait() async {
    let id = self.state.withLock { state in
      state.nextID += 1
      return state.nextID
    }
    await withTaskCancellationHandler {
      await withCheckedContinuation { continuation in
        let resume = self.state.withLock { state in
          if state.fired || Task.isCancelled { return true }
          state.waiters[id] = continuation
          return false
        }
        if resume { continuation.resume() }
      }
    } onCancel: {
      let waiter = self.state.withLock { $0.waiters.removeValue(forKey: id) }
      waiter?.resume()
    }
  }
}

/// A one-shot signal: fired once from any context, awaited by any number of tasks, before or
/// after it fires.
///
/// The project's one signal type (shutdown requested, loop stopped, subchannel closed).
/// ``wait()`` returns early when the waiting task is cancelled;
/// ``waitIgnoringCancellation()`` returns only once the signal has fired, for the waits that
/// must see the event happen (a shutdown that waits for its loop to stop).
package final class Signal: Sendable {
  private struct State {
    var fired = false
    var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
    var nextID: UInt64 = 0
  }

  private let state = Locked(State())

  package init() {}

  /// Whether ``fire()`` has been called.
  package var isFired: Bool { self.state.withLock { $0.fired } }

  /// Fires the signal and resumes every waiter; later calls do nothing.
  package func fire() {
    let waiters = self.state.withLock { state in
      if state.fired { return [CheckedContinuation<Void, Never>]() }
      state.fired = true
      defer { state.waiters.removeAll() }
      return Array(state.waiters.values)
    }
    for waiter in waiters { waiter.resume() }
  }

  /// Suspends until the signal fires or the task is cancelled.
  package func wait() async {
    let id = self.makeID()
    await withTaskCancellationHandler {
      await self.suspend(id: id, returnOnCancellation: true)
    } onCancel: {
      let waiter = self.state.withLock { $0.waiters.removeValue(forKey: id) }
      waiter?.resume()
    }
  }

  /// Suspends until the signal fires, even if the task is cancelled meanwhile.
  package func waitIgnoringCancellation() async {
    await self.suspend(id: self.makeID(), returnOnCancellation: false)
  }

  private func makeID() -> UInt64 {
    self.state.withLock { state in
      state.nextID += 1
      return state.nextID
    }
  }

  private func suspend(id: UInt64, returnOnCancellation: Bool) async {
    await withCheckedContinuation { continuation in
      let resume = self.state.withLock { state in
        if state.fired || (returnOnCancellation && Task.isCancelled) { return true }
        state.waiters[id] = continuation
        return false
      }
      if resume { continuation.resume() }
    }
  }
}

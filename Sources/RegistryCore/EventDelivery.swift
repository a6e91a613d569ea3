import RegistryPrimitives
import Synchronization

/// Delivers events to stream continuations in the order they were queued, without holding the
/// caller's lock while yielding.
///
/// Why not just yield under the lock that orders the events: yielding to a stream whose consumer
/// is waiting resumes that consumer's task, which takes the task's internal status lock. A task
/// being cancelled holds that same status lock while its stream's `onTermination` runs, and an
/// `onTermination` that unsubscribes takes the caller's lock. The two orders deadlock, and then
/// every later event of the service waits behind the held lock forever. (Found by the
/// `registry-bench` soak: a balanced transport shutting down while instances restarted.)
///
/// Use: under the caller's lock, ``enqueue(_:to:)`` each event with the subscribers it goes to,
/// so the queue order is the order of the state changes; after unlocking, call ``drain()``.
/// One caller at a time drains; the others leave their events to it, so every subscriber sees
/// events in queue order.
package final class EventDelivery<Element: Sendable>: Sendable {
  package typealias Continuation = AsyncThrowingStream<Element, any Error>.Continuation

  private struct Item {
    var element: Element
    var targets: [Continuation]
  }

  private struct State {
    var queue: [Item] = []
    var draining = false
  }

  private let state = Locked(State())

  package init() {}

  /// Queues `element` for `targets`. Call under the lock that orders the events; nothing is
  /// yielded here.
  package func enqueue(_ element: Element, to targets: [Continuation]) {
    guard !targets.isEmpty else { return }
    self.state.withLock { $0.queue.append(Item(element: element, targets: targets)) }
  }

  /// Yields every queued event, in order, unless another caller is already doing so (it then
  /// takes these too). Call with no lock held.
  package func drain() {
    let first = self.state.withLock { state -> Bool in
      if state.draining || state.queue.isEmpty { return false }
      state.draining = true
      return true
    }
    guard first else { return }
    while true {
      let items = self.state.withLock { state -> [Item] in
        let items = state.queue
        state.queue = []
        if items.isEmpty { state.draining = false }
        return items
      }
      if items.isEmpty { return }
      for item in items {
        for target in item.targets { target.yield(item.element) }
      }
    }
  }
}

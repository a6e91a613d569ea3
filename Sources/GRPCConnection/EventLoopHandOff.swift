internal import NIOCore
import RegistryPrimitives

/// Work handed to an event loop from other threads, taken in batches: the first hand-off while
/// none is pending schedules one task on the loop, and that task takes every item handed off
/// until it runs. Both sides of a connection use it for the streams whose outbound parts wait for
/// the loop (the client's requests, the server's responses from handlers off the loop), so that
/// the parts of calls that wait together cost one task and leave in one flush, one write system
/// call, instead of one each.
///
/// The caller hands each item off at most once per batch (the streams do it with their own
/// "flush scheduled" flag), so a batch holds no duplicates.
final class EventLoopHandOff<Item: Sendable>: Sendable {
  private let eventLoop: any EventLoop
  private let waiting = Locked(Waiting())

  private struct Waiting {
    var items: [Item] = []
    var taskScheduled = false
  }

  init(eventLoop: any EventLoop) {
    self.eventLoop = eventLoop
  }

  /// Adds `item` to the next batch. If no task is pending, schedules one on the event loop that
  /// takes the batch and passes it to `drain`; otherwise `drain` is not used (the pending task
  /// runs the `drain` given with the hand-off that scheduled it).
  func handOff(_ item: Item, drain: @escaping @Sendable ([Item]) -> Void) {
    let schedule = self.waiting.withLock { waiting -> Bool in
      waiting.items.append(item)
      if waiting.taskScheduled { return false }
      waiting.taskScheduled = true
      return true
    }
    guard schedule else { return }
    self.eventLoop.execute {
      drain(self.takeBatch())
    }
  }

  private func takeBatch() -> [Item] {
    self.waiting.withLock { waiting in
      waiting.taskScheduled = false
      let items = waiting.items
      waiting.items = []
      return items
    }
  }
}

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
  /// The loop the batches are taken on.
  let eventLoop: any EventLoop
  private let waiting = Locked(Waiting())

  private struct Waiting {
    var items: [Item] = []
    var taskScheduled = false
  }

  init(eventLoop: any EventLoop) {
    self.eventLoop = eventLoop
  }

  /// Adds `item` to the next batch. Returns true when no task was pending: the caller then
  /// schedules one on ``eventLoop`` that calls ``takeBatch()``. Returns false when a task is
  /// already pending; it takes `item` with the rest. Splitting the two keeps the caller's task
  /// closure (and its allocation) to the hand-offs that schedule one.
  func add(_ item: Item) -> Bool {
    self.waiting.withLock { waiting -> Bool in
      waiting.items.append(item)
      if waiting.taskScheduled { return false }
      waiting.taskScheduled = true
      return true
    }
  }

  /// Takes every item added since the last batch; the next ``add(_:)`` schedules again. Called
  /// by the task that ``add(_:)`` asked for, on the event loop.
  func takeBatch() -> [Item] {
    self.waiting.withLock { waiting in
      waiting.taskScheduled = false
      let items = waiting.items
      waiting.items = []
      return items
    }
  }
}

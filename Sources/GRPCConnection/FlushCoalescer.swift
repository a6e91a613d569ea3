/// When a connection handler flushes, the same on both sides of a connection: frames written
/// while a read loop runs go out together in one flush when it ends (so a burst of requests is
/// answered with one write system call); outside a read loop each write flushes at once, or, for
/// writes handed to the event loop in tasks of their own (the server's responses from handlers
/// on the pool), in one task queued behind the tasks already waiting, so that writes queued
/// together leave in one write system call. (The client's requests are gathered before they
/// reach the event loop instead: `ActiveConnection.scheduleFlush` writes the requests of every
/// call waiting for the loop in one task and flushes once.)
struct FlushCoalescer {
  private(set) var inReadLoop = false
  private var pending = false
  private var taskScheduled = false

  /// A frame was read: the read loop runs until `channelReadComplete`.
  mutating func readStarted() {
    self.inReadLoop = true
  }

  /// Something was written. Returns whether to flush now (`false`: at the read loop's end).
  mutating func wrote() -> Bool {
    guard self.inReadLoop else { return true }
    self.pending = true
    return false
  }

  /// Something was written by a task of its own on the event loop. Returns whether to queue a
  /// flush task (`false`: a read loop or an already queued task will flush it).
  mutating func wroteInTask() -> Bool {
    if self.inReadLoop {
      self.pending = true
      return false
    }
    if self.taskScheduled { return false }
    self.taskScheduled = true
    return true
  }

  /// The flush task runs: the next write from a task queues another.
  mutating func flushTaskRan() {
    self.taskScheduled = false
  }

  /// The read loop ended. Returns whether writes held during it need their flush.
  mutating func readLoopEnded() -> Bool {
    defer {
      self.inReadLoop = false
      self.pending = false
    }
    return self.pending
  }
}

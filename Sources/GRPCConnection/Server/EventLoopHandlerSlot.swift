internal import NIOCore

/// One event loop's place for a call handler
/// (``HTTP2Server/HandlerExecution/eventLoopWhenAlone``): the executor a handler runs on
/// when it is the only call on its connection, and whether a handler holds the place. At most one
/// handler at a time runs on a loop this way, so handlers never queue behind one another there;
/// the others run on Swift concurrency's global executor.
final class EventLoopHandlerSlot: TaskExecutor {
  let eventLoop: any EventLoop
  private let taken: NIOLoopBoundBox<Bool>

  /// May be called off `eventLoop`.
  init(eventLoop: any EventLoop) {
    self.eventLoop = eventLoop
    self.taken = .makeBoxSendingValue(false, eventLoop: eventLoop)
  }

  /// On the event loop: takes the place if it is free.
  func take() -> Bool {
    if self.taken.value { return false }
    self.taken.value = true
    return true
  }

  /// Gives the place back (from any thread; the handler that held it has returned).
  func release() {
    if self.eventLoop.inEventLoop {
      self.taken.value = false
    } else {
      self.eventLoop.execute { self.taken.value = false }
    }
  }

  func enqueue(_ job: consuming ExecutorJob) {
    let job = UnownedJob(job)
    let executor = self.asUnownedTaskExecutor()
    self.eventLoop.execute { job.runSynchronously(on: executor) }
  }
}

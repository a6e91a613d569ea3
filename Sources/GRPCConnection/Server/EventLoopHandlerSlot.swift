internal import NIOCore
import Synchronization

/// One event loop's place for a call handler
/// (``HTTP2Server/HandlerExecution/eventLoopWhenAlone``): the executor a handler runs on
/// when it is the only call on its connection, and whether a handler holds the place. At most one
/// handler at a time runs on a loop this way, so handlers never queue behind one another there;
/// the others run on Swift concurrency's global executor.
///
/// A handler on the loop delays the I/O of every connection on that loop for as long as it runs
/// without suspending, so its time there is bounded: once one of its jobs has run for longer than
/// `budget` (or it asks ``overBudget()`` while writing and is over), the handler is *moved*: its
/// later jobs run on the global executor until it returns and gives the place back. A handler that
/// streams a long response without ever waiting (its writes go out in place and never fill the
/// buffer) thus holds the loop for about one budget, not for the whole response.
final class EventLoopHandlerSlot: TaskExecutor {
  let eventLoop: any EventLoop
  /// How long one job of a handler may run on the loop before the handler moves to the pool.
  let budget: TimeAmount
  private let taken: NIOLoopBoundBox<Bool>
  /// When the job running on the loop started (on the loop only).
  private let jobStarted: NIOLoopBoundBox<NIODeadline>
  /// The handler that holds the place went over its budget: its jobs go to the global executor.
  /// Read on every enqueue, from any thread.
  private let moved = Atomic<Bool>(false)

  /// May be called off `eventLoop`.
  init(eventLoop: any EventLoop, budget: TimeAmount) {
    self.eventLoop = eventLoop
    self.budget = budget
    self.taken = .makeBoxSendingValue(false, eventLoop: eventLoop)
    self.jobStarted = .makeBoxSendingValue(.uptimeNanoseconds(0), eventLoop: eventLoop)
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
      self.releaseOnLoop()
    } else {
      self.eventLoop.execute { self.releaseOnLoop() }
    }
  }

  private func releaseOnLoop() {
    self.moved.store(false, ordering: .relaxed)
    self.taken.value = false
  }

  /// Whether the handler has moved to the global executor (for tests and diagnostics).
  var handlerMoved: Bool {
    self.moved.load(ordering: .relaxed)
  }

  /// On the event loop, from the handler's own job (a write made in place): whether that job has
  /// used up its budget. If so the handler is moved, and the caller should suspend (for example
  /// with `Task.yield()`) so that it continues on the global executor.
  func overBudget() -> Bool {
    self.moveIfOverBudget(jobStarted: self.jobStarted.value)
  }

  /// Moves the handler if the job that started at `jobStarted` has run longer than the budget;
  /// returns whether it did.
  private func moveIfOverBudget(jobStarted: NIODeadline) -> Bool {
    guard NIODeadline.now() - jobStarted > self.budget else { return false }
    self.moved.store(true, ordering: .relaxed)
    return true
  }

  func enqueue(_ job: consuming ExecutorJob) {
    if self.moved.load(ordering: .relaxed) {
      globalConcurrentExecutor.enqueue(job)
      return
    }
    let job = UnownedJob(job)
    let executor = self.asUnownedTaskExecutor()
    self.eventLoop.execute {
      let started = NIODeadline.now()
      self.jobStarted.value = started
      job.runSynchronously(on: executor)
      // `taken` is false when the handler returned in this job (and gave the place back).
      if self.taken.value {
        _ = self.moveIfOverBudget(jobStarted: started)
      }
    }
  }
}

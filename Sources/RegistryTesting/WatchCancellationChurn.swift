import Foundation
public import RegistryCore
import Synchronization

/// Starts watches of a service and cancels them at random moments, from a thread of its own,
/// while the caller makes the service change: the race between a registry yielding an event to a
/// waiting watcher and that watcher's task being cancelled (its stream's `onTermination`
/// running). A registry that yields under the lock its `onTermination` takes deadlocks here.
///
/// The cancelling runs on a dedicated thread, not in the concurrency pool, so that a deadlock
/// blocks that thread (and the registry's event thread) while the test's own polling goes on
/// and reports it.
public final class WatchCancellationChurn: Sendable {
  private final class Shared: Sendable {
    let cycles = Atomic<Int>(0)
    let stopped = Atomic<Bool>(false)
  }

  private let shared = Shared()

  /// Watch cycles (started, running a moment, cancelled, ended) completed so far.
  public var completedCycles: Int { self.shared.cycles.load(ordering: .relaxed) }

  /// Starts `count` cycles of watching `service` on `registry`.
  ///
  /// - Parameter watchdogSeconds: If the cycles have not all ended by then (and ``stop()`` was
  ///   not called), the process exits with status 70 and a message: a deadlock that blocks the
  ///   whole concurrency pool would otherwise hang the test run. Give the test's own deadline
  ///   less than this.
  public init(
    registry: any ServiceRegistry,
    service: String,
    count: Int,
    watchdogSeconds: Double = 120
  ) {
    let shared = self.shared
    let thread = Thread {
      var generator = SystemRandomNumberGenerator()
      for _ in 0 ..< count {
        if shared.stopped.load(ordering: .relaxed) { return }
        let ended = DispatchSemaphore(value: 0)
        let task = Task {
          defer { ended.signal() }
          do {
            for try await _ in registry.watch(service) {}
          } catch {}
        }
        // Cancel somewhere between at once and while it waits for the next event.
        usleep(UInt32.random(in: 0 ... 300, using: &generator))
        task.cancel()
        ended.wait()
        shared.cycles.add(1, ordering: .relaxed)
      }
    }
    thread.stackSize = 1 << 20
    thread.start()
    // If the deadlock also blocks every thread of the concurrency pool, the test's own deadline
    // can never fire: end the process with a message rather than hang it.
    let watchdog = Thread {
      let deadline = Date().addingTimeInterval(watchdogSeconds)
      while Date() < deadline {
        if shared.stopped.load(ordering: .relaxed)
          || shared.cycles.load(ordering: .relaxed) == count
        {
          return
        }
        usleep(100_000)
      }
      FileHandle.standardError.write(
        Data(
          "WatchCancellationChurn: \(shared.cycles.load(ordering: .relaxed)) of \(count) watch cycles ended in \(Int(watchdogSeconds)) s; the registry deadlocked (a watcher cancelled while an event was yielded to it). Exiting.\n"
            .utf8
        )
      )
      exit(70)
    }
    watchdog.start()
  }

  /// Stops starting new cycles (a cycle blocked by a deadlock stays blocked).
  public func stop() {
    self.shared.stopped.store(true, ordering: .relaxed)
  }
}

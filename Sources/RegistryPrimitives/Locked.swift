#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A value that tasks and threads share, guarded by a POSIX mutex.
///
/// The project's one lock type. It replaces the standard library's `Synchronization.Mutex`
/// because ThreadSanitizer cannot see how that one synchronises on Linux: its contended path
/// (a futex in the precompiled `Synchronization` library) is not instrumented, so every
/// contended `withLock` is reported as a data race and a TSan run of the tests says nothing
/// (`scripts/sanitize`). `pthread_mutex_lock` is intercepted by the sanitizers, and costs about
/// the same here (a futex too, uncontended in user space).
package final class Locked<Value>: @unchecked Sendable {
  private let mutex: UnsafeMutablePointer<pthread_mutex_t>
  private var value: Value

  /// A lock guarding `value`.
  package init(_ value: consuming sending Value) {
    self.mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    self.mutex.initialize(to: pthread_mutex_t())
    let status = pthread_mutex_init(self.mutex, nil)
    precondition(status == 0, "pthread_mutex_init failed with \(status)")
    self.value = value
  }

  deinit {
    pthread_mutex_destroy(self.mutex)
    self.mutex.deinitialize(count: 1)
    self.mutex.deallocate()
  }

  /// Runs `body` with the value while holding the lock. `body` must not block or suspend, and
  /// must not take this lock again.
  package func withLock<Result, Failure: Error>(
    _ body: (inout sending Value) throws(Failure) -> sending Result
  ) throws(Failure) -> sending Result {
    pthread_mutex_lock(self.mutex)
    defer { pthread_mutex_unlock(self.mutex) }
    return try body(&self.value)
  }
}

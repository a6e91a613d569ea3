import RegistryPrimitives
import Synchronization

/// The value of a task shared by several waiters, awaited so that a cancelled waiter stops
/// waiting at once (with `CancellationError`) while the task itself goes on for the others.
///
/// `await task.value` ignores the waiter's cancellation; a register call behind a lease grant
/// to an unreachable etcd would then outlive its caller's timeout by the grant's own deadline.
func cancellableValue<T: Sendable>(of task: Task<T, any Error>) async throws -> T {
  let box = WaitBox<T>()
  return try await withTaskCancellationHandler {
    try await withCheckedThrowingContinuation { continuation in
      guard box.install(continuation) else {
        continuation.resume(throwing: CancellationError())
        return
      }
      Task {
        let result = await task.result
        box.resume(with: result)
      }
    }
  } onCancel: {
    box.resume(with: .failure(CancellationError()))
  }
}

/// One continuation, resumed exactly once by whichever comes first: the result or a cancellation.
private final class WaitBox<T: Sendable>: Sendable {
  private enum State {
    case initial
    case waiting(CheckedContinuation<T, any Error>)
    case cancelledEarly
    case done
  }

  private let state = Locked(State.initial)

  /// Stores the continuation; `false` when the waiter was cancelled before it got here.
  func install(_ continuation: CheckedContinuation<T, any Error>) -> Bool {
    self.state.withLock { state in
      guard case .initial = state else { return false }
      state = .waiting(continuation)
      return true
    }
  }

  func resume(with result: Result<T, any Error>) {
    let continuation = self.state.withLock { state -> CheckedContinuation<T, any Error>? in
      switch state {
      case .initial:
        if case .failure(let error) = result, error is CancellationError {
          state = .cancelledEarly
        }
        return nil
      case .waiting(let continuation):
        state = .done
        return continuation
      case .cancelledEarly, .done:
        return nil
      }
    }
    continuation?.resume(with: result)
  }
}

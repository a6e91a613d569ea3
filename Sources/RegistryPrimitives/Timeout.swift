/// Runs `body`, and gives up after `limit`: `body` is cancelled and the error `onTimeout` makes is
/// thrown. An error `body` throws first is rethrown.
///
/// The project's one timeout helper (registration and deregistration timeouts, the registry's
/// shutdown timeout); each caller says which error a timeout is in its API.
package func withTimeout<T: Sendable>(
  _ limit: Duration,
  onTimeout: @escaping @Sendable () -> any Error,
  _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
  try await withThrowingTaskGroup(of: T?.self) { group in
    group.addTask { try await body() }
    group.addTask {
      try await Task.sleep(for: limit)
      return nil
    }
    defer { group.cancelAll() }
    // The group has two tasks, so `next()` has a result; `nil` from it only if both were
    // somehow gone, which counts as the timeout.
    guard let first = try await group.next(), let value = first else {
      throw onTimeout()
    }
    return value
  }
}

public import RegistryCore
import RegistryPrimitives
import Synchronization

/// Thrown by ``waitUntil(_:within:pollEvery:_:)`` when a condition did not hold in time.
public struct WaitTimeoutError: Error, CustomStringConvertible {
  /// What was being waited for.
  public var description: String

  /// Creates the error.
  public init(description: String) {
    self.description = description
  }
}

/// Polls `condition` until it holds or `within` has passed; never a bare sleep as
/// synchronisation.
///
/// - Throws: ``WaitTimeoutError`` naming `what` when the deadline passes, or the condition's
///   own error.
public func waitUntil(
  _ what: @autoclosure () -> String,
  within timeout: Duration = .seconds(5),
  pollEvery interval: Duration = .milliseconds(10),
  _ condition: () async throws -> Bool
) async throws {
  let deadline = ContinuousClock.now + timeout
  while true {
    if try await condition() { return }
    if ContinuousClock.now >= deadline {
      throw WaitTimeoutError(description: "timed out after \(timeout) waiting until \(what())")
    }
    try await Task.sleep(for: interval)
  }
}

/// Consumes a ``ServiceWatch`` in a background task and records what it yields, so tests can
/// wait for events with a deadline.
public final class WatchRecorder: Sendable {
  private final class Box: Sendable {
    let state = Locked(State())
  }

  private let box: Box
  private let task: Task<Void, Never>

  private struct State {
    var events: [RegistryEvent] = []
    var ended = false
    var error: (any Error)?
  }

  /// Starts consuming `watch`.
  public init(_ watch: ServiceWatch) {
    let box = Box()
    self.box = box
    self.task = Task {
      do {
        for try await event in watch {
          box.state.withLock { $0.events.append(event) }
        }
        box.state.withLock { $0.ended = true }
      } catch {
        box.state.withLock {
          $0.ended = true
          $0.error = error
        }
      }
    }
  }

  deinit {
    self.task.cancel()
  }

  /// Everything yielded so far.
  public var events: [RegistryEvent] { self.box.state.withLock { $0.events } }
  /// Whether the watch has ended (returned `nil` or thrown).
  public var ended: Bool { self.box.state.withLock { $0.ended } }
  /// The error the watch ended with, if any.
  public var error: (any Error)? { self.box.state.withLock { $0.error } }

  /// The set after every event so far, or `nil` before the first snapshot.
  public var current: RegistrySnapshot? {
    let events = self.events
    guard case .snapshot(var snapshot) = events.first else { return nil }
    for event in events.dropFirst() { snapshot = snapshot.applying(event) }
    return snapshot
  }

  /// The addresses of ``current``, sorted.
  public var currentAddresses: [String] {
    self.current?.instances.map(\.address) ?? []
  }

  /// Waits until the recorded events satisfy `condition`.
  public func waitUntil(
    _ what: @autoclosure () -> String,
    within timeout: Duration = .seconds(5),
    _ condition: @Sendable ([RegistryEvent]) -> Bool
  ) async throws {
    try await RegistryTesting.waitUntil(what(), within: timeout) { condition(self.events) }
  }

  /// Waits until the current set holds exactly `addresses`.
  public func waitForAddresses(
    _ addresses: [String],
    within timeout: Duration = .seconds(5)
  ) async throws {
    let expected = addresses.sorted()
    try await RegistryTesting.waitUntil(
      "the watched set is \(expected) (it is \(self.currentAddresses))",
      within: timeout
    ) { self.currentAddresses == expected }
  }

  /// Stops consuming.
  public func cancel() {
    self.task.cancel()
  }
}

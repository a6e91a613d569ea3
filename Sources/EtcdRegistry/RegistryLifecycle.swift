/// The life of an ``EtcdServiceRegistry`` as a value: whether its `run()` runs, and whether that
/// run was cancelled, and whether shutdown has begun.
///
/// The registry keeps it under its lock, tells it what happened and asks it what to do; it holds
/// no I/O. `RegistryLifecycleTests` drive it event by event.
struct RegistryLifecycle: Equatable {
  /// `run()`.
  enum Run: Equatable {
    case notStarted
    /// `cancelled`: the task running it was cancelled; the registry stops as a crashed process
    /// would, leaving its lease to expire.
    case running(cancelled: Bool)
    case ended(cancelled: Bool)
  }

  /// Whether the registry takes operations.
  enum Phase: Equatable {
    case open
    /// Shutdown began: registrations are dropped, operations fail with `shutDown`.
    case shutDown
  }

  /// What shutdown does with the lease, decided once by the first shutdown.
  enum ShutdownAction: Equatable {
    /// Revoke it: the registrations vanish from discovery at once.
    case revokeLease
    /// `run()` was cancelled: leave it to expire after its TTL, as a crash would.
    case leaveLeaseToExpire
  }

  private(set) var run: Run = .notStarted
  private(set) var phase: Phase = .open

  /// Whether `run()` is executing: then it performs the shutdown, and ``EtcdServiceRegistry/shutdown()``
  /// waits for it.
  var isRunning: Bool {
    if case .running = self.run { return true }
    return false
  }

  var isShutDown: Bool { self.phase == .shutDown }

  mutating func runStarted() {
    self.run = .running(cancelled: false)
  }

  mutating func runCancelled() {
    if case .running = self.run {
      self.run = .running(cancelled: true)
    }
  }

  mutating func runEnded() {
    if case .running(let cancelled) = self.run {
      self.run = .ended(cancelled: cancelled)
    }
  }

  /// Shutdown begins. The first call returns what to do with the lease; later ones `nil` (the
  /// shutdown is already under way).
  mutating func beginShutdown() -> ShutdownAction? {
    guard self.phase == .open else { return nil }
    self.phase = .shutDown
    switch self.run {
    case .running(cancelled: true), .ended(cancelled: true):
      return .leaveLeaseToExpire
    case .notStarted, .running(cancelled: false), .ended(cancelled: false):
      return .revokeLease
    }
  }
}

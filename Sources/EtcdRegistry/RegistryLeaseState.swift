import Etcd

/// The registry's one lease, as a value: none, being granted (one grant shared by every write
/// that needs it), or held; a generation that changes whenever the lease does, so a write can
/// tell it used a lease since lost; and whether registrations must be restored.
///
/// ``EtcdServiceRegistry`` keeps it under its lock; the grant itself (`Grant`, a task in the
/// registry, a number in `RegistryLeaseStateTests`) runs outside.
struct RegistryLeaseState<Grant: Equatable> {
  enum Phase {
    case none
    case granting(Grant)
    case held(EtcdLease)
  }

  /// What a write that needs the lease does.
  enum Lookup {
    /// Write with this lease; `generation` tells later whether it was lost meanwhile.
    case ready(EtcdLease, generation: UInt64)
    /// Wait for the grant under way.
    case wait(Grant)
    /// Start a grant (then ``granting(_:)``).
    case grant
  }

  /// What the lease loop does next.
  enum Next: Equatable {
    case keepAlive(EtcdLease)
    /// No lease, registrations to keep and no grant under way: grant one and write them all.
    case recover
    /// Nothing to do until something changes.
    case wait
  }

  /// How a recovery pass that wrote every registration with the lease of `generation` ended.
  enum RecoveryOutcome: Equatable {
    /// The lease changed while it wrote: try again.
    case superseded
    /// Nothing was lost: it raced a first registration for the first lease. Nothing to count.
    case nothingLost
    /// Registrations lost with a lease are back.
    case restored
  }

  private(set) var phase: Phase = .none
  private(set) var generation: UInt64 = 0
  /// A lease was lost since the registrations were last all written.
  private(set) var restoreNeeded = false

  var lease: EtcdLease? {
    if case .held(let lease) = self.phase { return lease }
    return nil
  }

  func lookup() -> Lookup {
    switch self.phase {
    case .held(let lease): return .ready(lease, generation: self.generation)
    case .granting(let grant): return .wait(grant)
    case .none: return .grant
    }
  }

  /// A grant started (after ``lookup()`` returned `grant`).
  mutating func granting(_ grant: Grant) {
    self.phase = .granting(grant)
  }

  /// `grant` ended with `lease`. Returns the generation to write with and whether this grant
  /// became the lease (only the grant under way does; a late one is not adopted).
  mutating func granted(_ lease: EtcdLease, by grant: Grant) -> (generation: UInt64, adopted: Bool)
  {
    guard case .granting(let current) = self.phase, current == grant else {
      return (self.generation, false)
    }
    self.phase = .held(lease)
    self.generation += 1
    return (self.generation, true)
  }

  /// `grant` failed; the next write starts another.
  mutating func grantFailed(_ grant: Grant) {
    if case .granting(let current) = self.phase, current == grant {
      self.phase = .none
    }
  }

  /// The lease `id` is gone (etcd said so, or a write found it missing). Returns whether it was
  /// the current lease (a lease already replaced is not lost again).
  mutating func lost(_ id: EtcdLease.ID) -> Bool {
    guard case .held(let lease) = self.phase, lease.id == id else { return false }
    self.phase = .none
    self.generation += 1
    self.restoreNeeded = true
    return true
  }

  func next(hasRegistrations: Bool) -> Next {
    switch self.phase {
    case .held(let lease): return .keepAlive(lease)
    case .granting: return .wait
    case .none: return hasRegistrations ? .recover : .wait
    }
  }

  /// A recovery pass wrote every registration with the lease of `generation`.
  mutating func recoveryWrote(generation: UInt64) -> RecoveryOutcome {
    guard generation == self.generation else { return .superseded }
    defer { self.restoreNeeded = false }
    return self.restoreNeeded ? .restored : .nothingLost
  }
}

import GRPCCore
import RegistryCore

/// The routing state of a ``RegistryClientTransport``: the instances, their connection and
/// health states, outstanding calls and ejections, and the picker. Kept in a `Locked` by the
/// transport; every method is synchronous and returns the side effects to run after unlocking.
struct Balancer {
  enum Health: Hashable, Sendable {
    /// No answer yet.
    case unknown
    /// The instance reported SERVING.
    case serving
    /// The instance does not implement the health service (or checking is disabled).
    case notWatched
    /// The instance reported NOT_SERVING or SERVICE_UNKNOWN.
    case notServing
    /// The health stream failed or ended.
    case broken

    var excludes: Bool { self == .notServing || self == .broken }
    var confirmed: Bool { self == .serving || self == .notWatched }
  }

  enum Connectivity: Hashable, Sendable {
    case idle, connecting, ready, transientFailure, shutdown
  }

  struct Entry {
    let subchannel: Subchannel
    var instance: ServiceInstance
    /// No longer in the registry (or the transport is shutting down): never picked again.
    var removed = false
    /// Its connection was told to close.
    var closing = false
    var connectivity: Connectivity = .idle
    var health: Health
    var currentWeight = 0
    var outstanding = 0
    var consecutiveFailures = 0
    var ejectedUntil: ContinuousClock.Instant?
    var ejections = 0
    var onProbation = false
    /// Joined after the first snapshot: slow start applies to it.
    var joinedLate = false
    /// When slow start began for it (its first connection); `nil` when not ramping.
    var rampStart: ContinuousClock.Instant?

    var isEjected: Bool { self.ejectedUntil != nil }
  }

  let service: String
  let policy: RegistryClientTransport.LoadBalancingPolicy
  let outlier: RegistryClientTransport.OutlierDetection
  let healthChecking: Bool
  let subsetting: RegistryClientTransport.Subsetting?
  let slowStart: RegistryClientTransport.SlowStart?
  /// Weights are scaled by this so that slow start can ramp a weight of 1.
  private let weightScale: Int

  /// Every instance in the registry's last snapshot, sorted by address.
  private(set) var registered: [ServiceInstance] = []
  /// With subsetting: the scopes (`nil` for the whole service, else a group) whose subsets are
  /// connected.
  private(set) var scopes: Set<String?> = []

  private(set) var entries: [UInt64: Entry] = [:]
  /// The registered instances: address to the id of its live entry.
  private(set) var active: [String: UInt64] = [:]
  /// The ids in `active`, ascending: the order the picker visits them in (kept so that a pick
  /// neither iterates a dictionary nor sorts).
  private var order: [UInt64] = []
  /// The candidates of the pick in progress; kept to reuse its storage.
  private var scratch: [UInt64] = []
  /// The usable preferred instances of the pick in progress; kept to reuse its storage.
  private var preferredScratch: [UInt64] = []
  private(set) var hasSnapshot = false
  private(set) var shuttingDown = false
  private(set) var generation: UInt64 = 0
  private var nextID: UInt64 = 0
  var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]

  init(
    service: String,
    policy: RegistryClientTransport.LoadBalancingPolicy,
    outlier: RegistryClientTransport.OutlierDetection,
    healthChecking: Bool,
    subsetting: RegistryClientTransport.Subsetting? = nil,
    slowStart: RegistryClientTransport.SlowStart? = nil,
    defaultGroup: String? = nil
  ) {
    self.service = service
    self.policy = policy
    self.outlier = outlier
    self.healthChecking = healthChecking
    self.subsetting = subsetting
    self.slowStart = slowStart
    self.weightScale = slowStart == nil ? 1 : 1000
    self.scopes = [defaultGroup]
  }

  mutating func makeID() -> UInt64 {
    self.nextID += 1
    return self.nextID
  }

  /// Side effects of a change, to run unlocked.
  struct Effects {
    var start: [Subchannel] = []
    var close: [Subchannel] = []
    var wake: [CheckedContinuation<Void, Never>] = []
    /// Instances outlier detection ejected.
    var ejected: [String] = []
    /// Ejected instances that a success on probation re-admitted.
    var readmitted: [String] = []
  }

  /// Call after `active` changed.
  private mutating func activeChanged() {
    self.order = self.active.values.sorted()
  }

  private mutating func changed(_ effects: inout Effects) {
    self.generation &+= 1
    effects.wake.append(contentsOf: self.waiters.values)
    self.waiters.removeAll()
  }

  // MARK: Membership

  /// Applies a full set from the registry. `makeSubchannel` creates the connection of a new
  /// instance.
  mutating func apply(
    _ instances: [ServiceInstance],
    makeSubchannel: (UInt64, ServiceInstance) -> Subchannel?
  ) -> Effects {
    guard !self.shuttingDown else { return Effects() }
    self.registered = instances.sorted { $0.address < $1.address }
    let effects = self.reconcile(makeSubchannel: makeSubchannel)
    self.hasSnapshot = true
    return effects
  }

  /// With subsetting, makes sure the subset of `group`'s scope is connected (the first call of a
  /// group adds it). Does nothing without subsetting.
  mutating func ensureScope(
    _ group: String?,
    makeSubchannel: (UInt64, ServiceInstance) -> Subchannel?
  ) -> Effects {
    guard self.subsetting != nil, !self.shuttingDown, !self.scopes.contains(group) else {
      return Effects()
    }
    self.scopes.insert(group)
    guard self.hasSnapshot else { return Effects() }
    return self.reconcile(makeSubchannel: makeSubchannel)
  }

  /// The registered instances to connect to: all of them, or with subsetting the union of the
  /// scopes' subsets.
  func selected() -> [ServiceInstance] {
    // A service of at most `threshold` instances is connected in full, every group included.
    guard let subsetting = self.subsetting, self.registered.count > subsetting.threshold else {
      return self.registered
    }
    var chosen: [ServiceInstance] = []
    var seen = Set<String>()
    for scope in self.scopes {
      let members =
        scope.map { group in self.registered.filter { $0.group == group } }
        ?? self.registered
      for index in Self.subset(count: members.count, subsetting) {
        if seen.insert(members[index].address).inserted { chosen.append(members[index]) }
      }
    }
    return chosen
  }

  /// The indexes, into a scope of `count` instances sorted by address, of the client's subset:
  /// all of them up to the threshold, else the `subsetSize` arcs from the client's position on.
  static func subset(count: Int, _ subsetting: RegistryClientTransport.Subsetting) -> [Int] {
    let size = max(1, subsetting.subsetSize)
    guard count > max(subsetting.threshold, size) else { return Array(0 ..< count) }
    let first = subsetting.position.firstArc(of: count)
    return (0 ..< size).map { (first + $0) % count }
  }

  /// Makes the connections match ``selected()``: new instances get a subchannel, instances no
  /// longer selected are closed once their calls finish.
  private mutating func reconcile(
    makeSubchannel: (UInt64, ServiceInstance) -> Subchannel?
  ) -> Effects {
    var effects = Effects()
    var seen = Set<String>()
    for instance in self.selected() {
      seen.insert(instance.address)
      if let id = self.active[instance.address] {
        self.entries[id]?.instance = instance
        continue
      }
      // An instance that came back before its old connection closed reuses it.
      if let (id, _) = self.entries.first(where: {
        $0.value.instance.address == instance.address && $0.value.removed && !$0.value.closing
      }) {
        self.entries[id]?.removed = false
        self.entries[id]?.instance = instance
        self.active[instance.address] = id
        continue
      }
      let id = self.makeID()
      guard let subchannel = makeSubchannel(id, instance) else { continue }
      self.entries[id] = Entry(
        subchannel: subchannel,
        instance: instance,
        health: self.healthChecking ? .unknown : .notWatched,
        joinedLate: self.hasSnapshot && self.slowStart != nil
      )
      self.active[instance.address] = id
      effects.start.append(subchannel)
    }
    for (address, id) in self.active where !seen.contains(address) {
      self.active[address] = nil
      self.entries[id]?.removed = true
      self.closeIfDrained(id, &effects)
    }
    self.activeChanged()
    self.changed(&effects)
    return effects
  }

  private mutating func closeIfDrained(_ id: UInt64, _ effects: inout Effects) {
    guard let entry = self.entries[id], entry.removed, !entry.closing, entry.outstanding == 0
    else { return }
    self.entries[id]?.closing = true
    effects.close.append(entry.subchannel)
  }

  /// The subchannel's task ended: forget it.
  mutating func subchannelEnded(_ id: UInt64) -> Effects {
    var effects = Effects()
    if let entry = self.entries.removeValue(forKey: id),
      self.active[entry.instance.address] == id
    {
      self.active[entry.instance.address] = nil
      self.activeChanged()
    }
    self.changed(&effects)
    return effects
  }

  mutating func beginShutdown() -> Effects {
    var effects = Effects()
    guard !self.shuttingDown else { return effects }
    self.shuttingDown = true
    self.active.removeAll()
    self.activeChanged()
    for id in self.entries.keys {
      self.entries[id]?.removed = true
      self.closeIfDrained(id, &effects)
    }
    self.changed(&effects)
    return effects
  }

  // MARK: State of an instance

  mutating func setConnectivity(
    _ id: UInt64,
    _ connectivity: Connectivity,
    now: ContinuousClock.Instant = .now
  ) -> Effects {
    var effects = Effects()
    guard self.entries[id] != nil, self.entries[id]?.connectivity != connectivity else {
      return effects
    }
    self.entries[id]?.connectivity = connectivity
    // Slow start runs from the first connection of an instance that joined late.
    if connectivity == .ready, self.entries[id]?.joinedLate == true {
      self.entries[id]?.joinedLate = false
      self.entries[id]?.rampStart = now
    }
    self.changed(&effects)
    return effects
  }

  mutating func setHealth(_ id: UInt64, _ health: Health) -> Effects {
    var effects = Effects()
    guard self.entries[id] != nil, self.entries[id]?.health != health else { return effects }
    self.entries[id]?.health = health
    self.changed(&effects)
    return effects
  }

  // MARK: Picking

  enum PickResult {
    case picked(Subchannel)
    /// Nothing to pick now; `error` explains why.
    case unavailable(RPCError)
  }

  mutating func pick(
    group: String?,
    preference: RegistryClientTransport.MetadataPreference? = nil,
    excluding excluded: [UInt64],
    now: ContinuousClock.Instant,
    random: inout some RandomNumberGenerator
  ) -> PickResult {
    if self.shuttingDown {
      return .unavailable(
        RPCError(
          code: .failedPrecondition,
          message:
            "The transport for registry://\(self.service) is shutting down; no new RPCs can start."
        )
      )
    }
    // One pass over the instances in id order: the best tier seen so far collects the
    // candidates. Tiers, best first: confirmed healthy and connected; usable but not confirmed;
    // failing connections; ejected instances only when nothing else is left.
    var inGroup = 0
    var bestTier = Int.max
    var candidates: [UInt64] = []
    swap(&candidates, &self.scratch)
    candidates.removeAll(keepingCapacity: true)
    // With a metadata preference: the preferred instances, and those of them in the first tier.
    var preferred = 0
    var preferredUsable: [UInt64] = []
    if preference != nil {
      swap(&preferredUsable, &self.preferredScratch)
      preferredUsable.removeAll(keepingCapacity: true)
    }
    defer {
      candidates.removeAll(keepingCapacity: true)
      swap(&candidates, &self.scratch)
      if preference != nil {
        preferredUsable.removeAll(keepingCapacity: true)
        swap(&preferredUsable, &self.preferredScratch)
      }
    }
    for id in self.order {
      // In place through the index: no copy of the entry, one hash lookup.
      guard let index = self.entries.index(forKey: id) else { continue }
      if let group, self.entries.values[index].instance.group != group { continue }
      inGroup += 1
      // An ejection that ran out puts the instance on probation.
      if let until = self.entries.values[index].ejectedUntil, until <= now {
        self.entries.values[index].ejectedUntil = nil
        self.entries.values[index].onProbation = true
      }
      // Every preferred instance counts towards the share, usable or not.
      let isPreferred = preference?.matches(self.entries.values[index].instance) ?? false
      if isPreferred { preferred += 1 }
      let health = self.entries.values[index].health
      if health.excludes || excluded.contains(id) { continue }
      let connectivity = self.entries.values[index].connectivity
      let tier: Int
      if self.entries.values[index].isEjected {
        tier = 3
      } else if connectivity == .transientFailure || connectivity == .shutdown {
        tier = 2
      } else if connectivity == .ready && health.confirmed {
        tier = 0
      } else {
        tier = 1
      }
      if tier < bestTier {
        bestTier = tier
        candidates.removeAll(keepingCapacity: true)
      }
      if tier == bestTier { candidates.append(id) }
      if isPreferred, tier == 0 { preferredUsable.append(id) }
    }
    // The preferred instances take the call while enough of them are usable.
    if let preference, !preferredUsable.isEmpty,
      Double(preferredUsable.count) >= preference.minimumHealthyShare * Double(preferred)
    {
      swap(&candidates, &preferredUsable)
    }
    if inGroup == 0 {
      return .unavailable(self.noInstancesError(group: group))
    }
    if candidates.isEmpty {
      let description = group.map { "in group '\($0)' " } ?? ""
      return .unavailable(
        RPCError(
          code: .unavailable,
          message:
            "No instance of service '\(self.service)' \(description)can take the call: \(inGroup) registered, none healthy\(excluded.isEmpty ? "" : " or untried")."
        )
      )
    }
    let chosen: UInt64
    switch self.policy.value {
    case .weightedRoundRobin:
      chosen = self.smoothWeightedRoundRobin(candidates, now: now)
    case .powerOfTwoChoices:
      chosen = self.powerOfTwoChoices(candidates, now: now, random: &random)
    }
    self.entries[chosen]!.outstanding += 1
    return .picked(self.entries[chosen]!.subchannel)
  }

  /// Smooth weighted round robin (as in nginx): every candidate's current weight grows by its
  /// weight, the largest wins and gives back the total.
  private mutating func smoothWeightedRoundRobin(
    _ candidates: [UInt64],
    now: ContinuousClock.Instant
  ) -> UInt64 {
    if candidates.count == 1 { return candidates[0] }
    var total = 0
    var best: UInt64 = candidates[0]
    var bestWeight = Int.min
    for id in candidates {
      let weight = self.weight(of: id, now: now)
      total += weight
      self.entries[id]!.currentWeight += weight
      let current = self.entries[id]!.currentWeight
      if current > bestWeight {
        bestWeight = current
        best = id
      }
    }
    self.entries[best]!.currentWeight -= total
    return best
  }

  private mutating func powerOfTwoChoices(
    _ candidates: [UInt64],
    now: ContinuousClock.Instant,
    random: inout some RandomNumberGenerator
  ) -> UInt64 {
    if candidates.count == 1 { return candidates[0] }
    let first = Int.random(in: 0 ..< candidates.count, using: &random)
    var second = Int.random(in: 0 ..< candidates.count - 1, using: &random)
    if second >= first { second += 1 }
    let a = candidates[first]
    let b = candidates[second]
    // Compare outstanding/weight without dividing: a.out * b.w vs b.out * a.w.
    let loadA = (self.entries[a]!.outstanding + 1) * self.weight(of: b, now: now)
    let loadB = (self.entries[b]!.outstanding + 1) * self.weight(of: a, now: now)
    return loadA <= loadB ? a : b
  }

  /// The weight the picker uses: the instance's weight (scaled), ramped during slow start.
  /// Ends the ramp once its window has passed.
  mutating func weight(of id: UInt64, now: ContinuousClock.Instant) -> Int {
    let full = self.entries[id]!.instance.effectiveWeight * self.weightScale
    guard let start = self.entries[id]!.rampStart, let slowStart = self.slowStart else {
      return full
    }
    let elapsed = now - start
    if elapsed >= slowStart.window || slowStart.window <= .zero {
      self.entries[id]!.rampStart = nil
      return full
    }
    let share = max(
      min(slowStart.minimumWeightShare, 1),
      elapsed / slowStart.window
    )
    return max(1, Int(Double(full) * share))
  }

  private func noInstancesError(group: String?) -> RPCError {
    guard let group else {
      return RPCError(
        code: .unavailable,
        message:
          "No instances of service '\(self.service)' are registered\(self.hasSnapshot ? "" : " (no answer from the registry yet)"); start one or check the service name."
      )
    }
    var groups = Set<String>()
    for instance in self.registered { groups.insert(instance.group) }
    let known = groups.sorted().map { $0.isEmpty ? "(none)" : $0 }.joined(separator: ", ")
    return RPCError(
      code: .unavailable,
      message:
        "No instances of service '\(self.service)' in group '\(group)'\(groups.isEmpty ? "" : " (registered groups: \(known))"); check the group or register an instance in it."
    )
  }

  // MARK: Outcomes

  /// A call on `id` finished (or could not start); `failure` is true for transport failures.
  mutating func release(_ id: UInt64, failure: Bool?, now: ContinuousClock.Instant) -> Effects {
    var effects = Effects()
    guard self.entries[id] != nil else { return effects }
    self.entries[id]!.outstanding -= 1
    if let failure {
      if failure {
        self.recordFailure(id, now: now, &effects)
      } else {
        self.entries[id]!.consecutiveFailures = 0
        if self.entries[id]!.onProbation {
          self.entries[id]!.onProbation = false
          self.entries[id]!.ejections = 0
          effects.readmitted.append(self.entries[id]!.instance.address)
        }
      }
    }
    self.closeIfDrained(id, &effects)
    return effects
  }

  private mutating func recordFailure(
    _ id: UInt64,
    now: ContinuousClock.Instant,
    _ effects: inout Effects
  ) {
    guard self.outlier.consecutiveFailures > 0, !self.entries[id]!.isEjected else { return }
    self.entries[id]!.consecutiveFailures += 1
    let entry = self.entries[id]!
    guard entry.onProbation || entry.consecutiveFailures >= self.outlier.consecutiveFailures else {
      return
    }
    let ejected = self.active.values.filter { self.entries[$0]?.isEjected == true }.count
    let limit = max(1, self.active.count * self.outlier.maxEjectionPercent / 100)
    guard ejected < limit else { return }
    let ejections = entry.ejections + 1
    let time = min(self.outlier.baseEjectionTime * ejections, self.outlier.maxEjectionTime)
    self.entries[id]!.ejections = ejections
    self.entries[id]!.ejectedUntil = now + time
    self.entries[id]!.consecutiveFailures = 0
    self.entries[id]!.onProbation = false
    effects.ejected.append(entry.instance.address)
    self.changed(&effects)
  }
}

/// The instances of one service at one revision of the registry.
public struct RegistrySnapshot: Hashable, Sendable {
  /// The service these instances belong to.
  public var service: String
  /// The instances, sorted by address.
  public var instances: [ServiceInstance]
  /// The store revision this set was read at (etcd's revision; a counter for in-memory).
  public var revision: Int64

  /// Creates a snapshot; the instances are sorted by address.
  public init(service: String, instances: [ServiceInstance], revision: Int64) {
    self.service = service
    // A listing arrives sorted already (etcd returns keys in byte order): check before sorting.
    var sorted = true
    for index in instances.indices.dropFirst()
    where instances[index].address < instances[index - 1].address {
      sorted = false
      break
    }
    self.instances = sorted ? instances : instances.sorted { $0.address < $1.address }
    self.revision = revision
  }

  /// The snapshot after `event`: the same set with the change applied.
  public func applying(_ event: RegistryEvent) -> RegistrySnapshot {
    var next = self
    next.apply(event)
    return next
  }

  /// Applies `event` in place: a binary search by address and one insertion, replacement or
  /// removal, so a change to a big set costs no sort and (when the storage is not shared) no
  /// copy of it. Takes the event's revision.
  public mutating func apply(_ event: RegistryEvent) {
    switch event {
    case .snapshot(let snapshot):
      self = snapshot
    case .added(let instance, let revision), .updated(let instance, let revision):
      let (index, found) = self.position(of: instance.address)
      if found {
        self.instances[index] = instance
      } else {
        self.instances.insert(instance, at: index)
      }
      self.revision = revision
    case .removed(let instance, let revision):
      let (index, found) = self.position(of: instance.address)
      if found { self.instances.remove(at: index) }
      self.revision = revision
    }
  }

  /// The instance registered at `address`, found by binary search.
  public func instance(at address: String) -> ServiceInstance? {
    let (index, found) = self.position(of: address)
    return found ? self.instances[index] : nil
  }

  /// Where `address` is in the sorted instances, or where it would go.
  private func position(of address: String) -> (index: Int, found: Bool) {
    var low = 0
    var high = self.instances.count
    while low < high {
      let middle = (low + high) / 2
      if self.instances[middle].address < address {
        low = middle + 1
      } else {
        high = middle
      }
    }
    return (low, low < self.instances.count && self.instances[low].address == address)
  }

  /// The events that turn `self` into `other`: removals, then additions and updates, all tagged
  /// with `other`'s revision. Unchanged instances produce no event.
  public func changes(to other: RegistrySnapshot) -> [RegistryEvent] {
    var old: [String: ServiceInstance] = [:]
    for instance in self.instances { old[instance.address] = instance }
    var events: [RegistryEvent] = []
    var seen = Set<String>()
    for instance in other.instances {
      seen.insert(instance.address)
      if let previous = old[instance.address] {
        if previous != instance { events.append(.updated(instance, revision: other.revision)) }
      } else {
        events.append(.added(instance, revision: other.revision))
      }
    }
    let removals = self.instances.filter { !seen.contains($0.address) }
      .map { RegistryEvent.removed($0, revision: other.revision) }
    return removals + events
  }
}

/// One item of a ``ServiceWatch``: the current set, or one change to it.
///
/// A watch yields ``snapshot(_:)`` first, then changes in the store's order, each tagged with the
/// store revision at which it happened.
public enum RegistryEvent: Hashable, Sendable {
  /// The complete current set. Always the first event of a watch.
  case snapshot(RegistrySnapshot)
  /// An instance appeared.
  case added(ServiceInstance, revision: Int64)
  /// An instance's value changed (weight, group, metadata or version); same address.
  case updated(ServiceInstance, revision: Int64)
  /// An instance went away (deregistered, its lease expired, or its key was deleted).
  case removed(ServiceInstance, revision: Int64)

  /// The store revision of this event.
  public var revision: Int64 {
    switch self {
    case .snapshot(let snapshot): return snapshot.revision
    case .added(_, let revision), .updated(_, let revision), .removed(_, let revision):
      return revision
    }
  }
}

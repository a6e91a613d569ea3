import RegistryCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension RegistryClientTransport {
  /// Deterministic subsetting: each client connects to ``subsetSize`` of a big service's
  /// instances instead of all of them, so that M clients of N instances open about
  /// `M x subsetSize` connections rather than `M x N`.
  ///
  /// The instances of a scope (the whole service, or one group) are placed, sorted by address,
  /// on a ring of N equal arcs; the client has a position on the same ring and connects to the
  /// ``subsetSize`` instances whose arcs follow its position (deterministic aperture, as in
  /// Finagle). Hence:
  /// - the same instances and the same ``position`` give the same subset, in every process;
  /// - clients at evenly spaced positions (``ClientPosition/index(_:of:)``) load every instance
  ///   with the same number of connections, within one; clients at hashed positions (the default)
  ///   spread like random draws;
  /// - an instance that joins or leaves changes at most about two connections of each client
  ///   besides its own (the arcs shift by less than one position).
  ///
  /// A service of at most ``threshold`` instances is connected in full, as without subsetting.
  /// Above it, the transport connects to the subset of its target's scope (the target's group,
  /// else the whole service). Weights and health apply inside the subset. A call for another
  /// group is served by that group's own subset, chosen the same way among the group's
  /// instances when the first call for the group arrives (and kept from then on): a group with
  /// no instance in the service-wide subset still gets its calls, after one connection setup.
  /// A group of at most ``threshold`` instances is connected in full.
  public struct Subsetting: Hashable, Sendable {
    /// The number of instances a client connects to in a scope bigger than ``threshold``.
    public var subsetSize: Int
    /// Services (and groups) of at most this many instances are connected in full.
    public var threshold: Int
    /// The client's position on the ring.
    public var position: ClientPosition

    /// Creates a subsetting policy: subsets of 25 (as kratos uses) for scopes above 100
    /// instances, at the position hashed from this process's host name and process ID.
    public init(
      subsetSize: Int = 25,
      threshold: Int = 100,
      position: ClientPosition = .process
    ) {
      self.subsetSize = subsetSize
      self.threshold = threshold
      self.position = position
    }
  }

  /// Where a client sits on the subsetting ring.
  public struct ClientPosition: Hashable, Sendable, CustomStringConvertible {
    /// The position as a fraction of the ring: `numerator / 2^64`.
    let point: UInt64

    /// Client `index` of `count` clients, at `index / count` of the ring: clients numbered
    /// 0 ..< count (a StatefulSet ordinal, a shard number) spread their connections evenly.
    /// An index outside 0 ..< count is taken modulo `count`; a `count` below 1 counts as 1.
    public static func index(_ index: Int, of count: Int) -> Self {
      let count = max(1, count)
      var index = index % count
      if index < 0 { index += count }
      // index / count as a 64-bit fraction, rounded up: (index << 64) / count. Rounding up keeps
      // client i of n at arc i of n instances exactly.
      let (quotient, remainder) = UInt64(count).dividingFullWidth((high: UInt64(index), low: 0))
      return Self(point: remainder == 0 ? quotient : quotient + 1)
    }

    /// A position hashed from `identity` (such as a host name): the same identity always gets
    /// the same position.
    public static func hashed(_ identity: String) -> Self {
      Self(point: StableHash.mix(StableHash.fnv1a(identity.utf8)))
    }

    /// A position hashed from this process's host name and process ID.
    public static var process: Self {
      .hashed("\(Self.hostName())/\(getpid())")
    }

    public var description: String {
      "\(Double(self.point) / 18_446_744_073_709_551_616.0)"
    }

    private static func hostName() -> String {
      var buffer = [CChar](repeating: 0, count: 256)
      guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
      return String(
        decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) },
        as: UTF8.self
      )
    }

    /// The first of the `count` arcs at or after this position.
    func firstArc(of count: Int) -> Int {
      Int(self.point.multipliedFullWidth(by: UInt64(count)).high)
    }
  }

  /// Slow start: an instance that joins after the transport's first answer from the registry
  /// gets a weight that grows from ``minimumWeightShare`` of its own to all of it over
  /// ``window``, counted from its first successful connection (as Envoy's slow start does), so a
  /// server with cold caches is not handed its full share at once. Instances present at the
  /// first answer start at full weight.
  public struct SlowStart: Hashable, Sendable {
    /// How long the ramp lasts.
    public var window: Duration
    /// The share of its weight a new instance starts with, in 0...1.
    public var minimumWeightShare: Double

    /// Creates a slow-start policy: a 30 s linear ramp from 10% of the weight.
    public init(window: Duration = .seconds(30), minimumWeightShare: Double = 0.1) {
      self.window = window
      self.minimumWeightShare = minimumWeightShare
    }
  }

  /// Metadata-aware routing: calls prefer the instances whose metadata has all of
  /// ``metadata``'s entries (such as the caller's `zone`), and spread over every instance when
  /// too few of those are usable.
  ///
  /// The preferred instances take the calls while they have at least one connected, healthy,
  /// non-ejected instance and at least ``minimumHealthyShare`` of them are in that state;
  /// otherwise calls go to all eligible instances (within the call's group) as without a
  /// preference. Set it for the whole transport in ``Config/metadataPreference``, or for the
  /// calls of a task with ``withRegistryMetadataPreference(_:isolation:_:)``.
  public struct MetadataPreference: Hashable, Sendable {
    /// The metadata entries an instance must have to be preferred.
    public var metadata: [String: String]
    /// The share (0...1) of the preferred instances that must be usable for calls to stay with
    /// them.
    public var minimumHealthyShare: Double

    /// Creates a preference for instances with `metadata`, such as `["zone": "eu-west-1a"]`.
    public init(_ metadata: [String: String], minimumHealthyShare: Double = 0.5) {
      self.metadata = metadata
      self.minimumHealthyShare = minimumHealthyShare
    }

    func matches(_ instance: ServiceInstance) -> Bool {
      for (key, value) in self.metadata where instance.metadata[key] != value { return false }
      return true
    }
  }
}

/// A hash that is the same in every process (Swift's `Hasher` is seeded per process).
enum StableHash {
  static func fnv1a(_ bytes: some Sequence<UInt8>) -> UInt64 {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in bytes {
      hash ^= UInt64(byte)
      hash = hash &* 0x0000_0100_0000_01b3
    }
    return hash
  }

  /// SplitMix64's finalizer: spreads the FNV hash's bits over the whole range.
  static func mix(_ value: UInt64) -> UInt64 {
    var z = value &+ 0x9e37_79b9_7f4a_7c15
    z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
    z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
    return z ^ (z >> 31)
  }
}

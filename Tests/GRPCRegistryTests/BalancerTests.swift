import CoreMetrics
import GRPCConnection
import Logging
import RegistryCore
import Testing

@testable import GRPCRegistry

/// The balancer driven event by event, without sockets: subsetting, slow start and metadata
/// preference. Subchannels are created but never connected.
@Suite("Balancer")
struct BalancerTests {
  // MARK: Helpers

  static func instances(
    _ count: Int,
    group: String = "",
    metadata: [String: String] = [:],
    from first: Int = 0
  ) -> [ServiceInstance] {
    (first ..< first + count).map { index in
      ServiceInstance(
        name: "svc",
        address: "10.\(index / 65536 % 256).\(index / 256 % 256).\(index % 256):8080",
        weight: 1,
        group: group,
        metadata: metadata
      )
    }
  }

  static func makeSubchannel(_ id: UInt64, _ instance: ServiceInstance) -> Subchannel? {
    guard
      let connection = try? InstanceConnection.make(
        address: instance.address,
        kind: .http2Connection(),
        tls: nil,
        logger: Logger(label: "test")
      )
    else { return nil }
    return Subchannel(
      id: id,
      address: instance.address,
      connection: connection,
      calls: Counter(label: "test")
    )
  }

  static func balancer(
    policy: RegistryClientTransport.LoadBalancingPolicy = .weightedRoundRobin,
    subsetting: RegistryClientTransport.Subsetting? = nil,
    slowStart: RegistryClientTransport.SlowStart? = nil,
    defaultGroup: String? = nil
  ) -> Balancer {
    Balancer(
      service: "svc",
      policy: policy,
      outlier: RegistryClientTransport.OutlierDetection(consecutiveFailures: 0),
      healthChecking: false,
      subsetting: subsetting,
      slowStart: slowStart,
      defaultGroup: defaultGroup
    )
  }

  /// Applies `instances` and marks every new connection ready.
  static func apply(
    _ instances: [ServiceInstance],
    to balancer: inout Balancer,
    now: ContinuousClock.Instant = .now
  ) {
    let effects = balancer.apply(instances, makeSubchannel: Self.makeSubchannel)
    for subchannel in effects.start {
      _ = balancer.setConnectivity(subchannel.id, .ready, now: now)
    }
  }

  /// The addresses of `count` picks, each released at once.
  static func picks(
    _ count: Int,
    from balancer: inout Balancer,
    group: String? = nil,
    preference: RegistryClientTransport.MetadataPreference? = nil,
    now: ContinuousClock.Instant = .now
  ) -> [String: Int] {
    var random = SystemRandomNumberGenerator()
    var tally: [String: Int] = [:]
    for _ in 0 ..< count {
      switch balancer.pick(
        group: group,
        preference: preference,
        excluding: [],
        now: now,
        random: &random
      ) {
      case .picked(let subchannel):
        tally[subchannel.address, default: 0] += 1
        _ = balancer.release(subchannel.id, failure: false, now: now)
      case .unavailable(let error):
        Issue.record("pick failed: \(error)")
        return tally
      }
    }
    return tally
  }

  // MARK: Power of two choices

  /// A random source that makes `Int.random(in: 0 ..< bound)` return scripted indices.
  struct ScriptedDraws: RandomNumberGenerator {
    /// (index, bound) pairs, in draw order.
    var draws: [(index: Int, bound: Int)]

    mutating func next() -> UInt64 {
      guard !self.draws.isEmpty else {
        Issue.record("more random draws than scripted")
        return 0
      }
      let (index, bound) = self.draws.removeFirst()
      // `next(upperBound:)` keeps the high word of value × bound: aim at the middle of the
      // index's slice of the 64-bit range.
      let slice = UInt64.max / UInt64(bound)
      return slice * UInt64(index) + slice / 2
    }
  }

  // Catches a P2C that ignores load or weight, and the option being ignored (round robin picks
  // another sequence): each pick is checked against the rule for the two scripted draws.
  @Test("power of two choices takes the less loaded of two draws, per unit of weight")
  func powerOfTwoChoicesPicks() {
    var balancer = Self.balancer(policy: .powerOfTwoChoices)
    let instances = [
      ServiceInstance(name: "svc", address: "10.0.0.1:80", weight: 1),
      ServiceInstance(name: "svc", address: "10.0.0.2:80", weight: 1),
      ServiceInstance(name: "svc", address: "10.0.0.3:80", weight: 2),
    ]
    Self.apply(instances, to: &balancer)
    // Candidates in address order: a, b, c (weight 2). A draw is (first of 3, second of the
    // other 2); calls are held, so outstanding counts grow.
    let (a, b, c) = ("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80")
    let steps: [(first: Int, second: Int, expected: String, why: String)] = [
      (0, 0, a, "a vs b, both idle: the first drawn"),
      (0, 0, b, "a (1 call) vs b (idle)"),
      (0, 1, c, "a (1 call) vs c (idle)"),
      (2, 0, c, "c (1 call, weight 2) vs a (1 call, weight 1): c's load per weight is half"),
      (2, 0, c, "c (2 calls: 1.5 per weight) vs a (1 call: 2 per weight)"),
      (
        2, 1, c,
        "c (3 calls: 2 per weight) vs b (1 call: 2 per weight): a tie goes to c, drawn first"
      ),
      (1, 1, b, "b (1 call: 2 per weight) vs c (4 calls: 2.5 per weight)"),
    ]
    var random = ScriptedDraws(
      draws: steps.flatMap { [(index: $0.first, bound: 3), (index: $0.second, bound: 2)] }
    )
    var picked: [String] = []
    for step in steps {
      guard
        case .picked(let subchannel) = balancer.pick(
          group: nil,
          excluding: [],
          now: .now,
          random: &random
        )
      else {
        Issue.record("no pick for \(step.why)")
        return
      }
      picked.append(subchannel.address)
      #expect(subchannel.address == step.expected, "\(step.why)")
    }
    #expect(picked == steps.map(\.expected))
  }

  // MARK: Subsetting

  static let subsetting = RegistryClientTransport.Subsetting(subsetSize: 25, threshold: 100)

  /// The addresses client `client` of `clients` connects to among `instances`.
  static func subset(
    client: Int,
    of clients: Int,
    _ instances: [ServiceInstance],
    size: Int = 25
  ) -> Set<String> {
    var subsetting = Self.subsetting
    subsetting.subsetSize = size
    subsetting.position = .index(client, of: clients)
    let sorted = instances.sorted { $0.address < $1.address }
    return Set(Balancer.subset(count: sorted.count, subsetting).map { sorted[$0].address })
  }

  // Catches: a subset that ignores the client's position (every client on the same servers),
  // or positions spread unevenly.
  @Test("100 clients x 300 instances: every instance gets 8 or 9 of the 2,500 connections")
  func evenSpread() {
    let instances = Self.instances(300)
    var connections: [String: Int] = [:]
    for client in 0 ..< 100 {
      let subset = Self.subset(client: client, of: 100, instances)
      #expect(subset.count == 25)
      for address in subset { connections[address, default: 0] += 1 }
    }
    #expect(connections.count == 300)
    let counts = connections.values
    #expect(counts.reduce(0, +) == 2_500)
    #expect(counts.min() == 8)
    #expect(counts.max() == 9)

    // Hashed positions (the default, no coordination) spread like random draws: reported, and
    // bounded loosely (the mean is 8.3).
    var hashed: [String: Int] = [:]
    for client in 0 ..< 100 {
      var subsetting = Self.subsetting
      subsetting.position = .hashed("client-\(client)")
      let sorted = instances.sorted { $0.address < $1.address }
      for index in Balancer.subset(count: 300, subsetting) {
        hashed[sorted[index].address, default: 0] += 1
      }
    }
    let hashedCounts = instances.map { hashed[$0.address] ?? 0 }
    print(
      "subsetting spread over 300 instances, 100 clients of 25: index positions min 8 max 9;",
      "hashed positions min \(hashedCounts.min() ?? 0) max \(hashedCounts.max() ?? 0)"
    )
    #expect(hashedCounts.reduce(0, +) == 2_500)
    #expect((hashedCounts.max() ?? 0) <= 30)
  }

  // Catches: a subset recomputed from scratch (a reshuffle) when membership changes.
  @Test(
    "one instance joining or leaving moves at most 2 connections of each client besides its own"
  )
  func stability() {
    let instances = Self.instances(300)
    let removed = instances[137].address
    let newcomer = Self.instances(1, from: 5_000)[0]
    var moved = 0
    for client in 0 ..< 100 {
      let before = Self.subset(client: client, of: 100, instances)
      let afterRemoval = Self.subset(
        client: client,
        of: 100,
        instances.filter { $0.address != removed }
      )
      let afterJoin = Self.subset(client: client, of: 100, instances + [newcomer])
      // Connections to instances still there that closed, and to old instances that opened.
      let changes = [
        before.subtracting(afterRemoval).subtracting([removed]).count
          + afterRemoval.subtracting(before).count,
        before.subtracting(afterJoin).count
          + afterJoin.subtracting(before).subtracting([newcomer.address]).count,
      ]
      for change in changes {
        #expect(change <= 4, "client \(client) moved \(change) connections")
        moved += change
      }
    }
    print("subsetting stability: \(moved) connections moved over 100 clients x 2 changes")
    // Most clients are untouched: far below a reshuffle's ~2 x 100 x 25.
    #expect(moved < 400)
  }

  @Test("the same inputs give the same subset, and hashed positions are the same in every process")
  func determinism() {
    let instances = Self.instances(300)
    #expect(
      Self.subset(client: 7, of: 100, instances)
        == Self.subset(client: 7, of: 100, instances.reversed())
    )
    // A fixed value: Swift's Hasher (seeded per process) would change it from run to run.
    #expect(RegistryClientTransport.ClientPosition.hashed("host-1").point == 0x941f_0965_1bcb_c202)
    #expect(RegistryClientTransport.ClientPosition.index(1, of: 4).point == 1 << 62)
    #expect(RegistryClientTransport.ClientPosition.index(-1, of: 4).point == 3 << 62)
  }

  @Test("a balancer with subsetting connects to its subset, and to a group's own subset on demand")
  func balancerSubsets() {
    var balancer = Self.balancer(
      subsetting: RegistryClientTransport.Subsetting(
        subsetSize: 5,
        threshold: 10,
        position: .index(0, of: 1)
      )
    )
    // 30 instances without a group, 20 in group G and (later) 8 in group S, sorting in that
    // order (10.0.0.x, 10.0.1.x, 10.0.2.x).
    let plain = Self.instances(30)
    let grouped = Self.instances(20, group: "G", from: 256)
    let sortedPlain = plain.map(\.address).sorted()
    let sortedGrouped = grouped.map(\.address).sorted()
    let effects = balancer.apply(plain + grouped, makeSubchannel: Self.makeSubchannel)
    // Client 0 of 1 starts at the first arc: the 5 lowest addresses, all without a group.
    #expect(Set(effects.start.map(\.address)) == Set(sortedPlain.prefix(5)))

    // A call for G finds none of G's instances in the subset: G's own subset is added.
    let scope = balancer.ensureScope("G", makeSubchannel: Self.makeSubchannel)
    #expect(Set(scope.start.map(\.address)) == Set(sortedGrouped.prefix(5)))
    #expect(balancer.ensureScope("G", makeSubchannel: Self.makeSubchannel).start.isEmpty)
    let tally = Self.picks(50, from: &balancer, group: "G")
    #expect(Set(tally.keys) == Set(sortedGrouped.prefix(5)))

    // A group of at most `threshold` instances is connected in full.
    let small = Self.instances(8, group: "S", from: 512)
    _ = balancer.apply(plain + grouped + small, makeSubchannel: Self.makeSubchannel)
    let added = balancer.ensureScope("S", makeSubchannel: Self.makeSubchannel)
    #expect(added.start.count == 8)

    // An instance of the subset that leaves is closed (it has no calls) and replaced by the next.
    let fewer = plain.filter { $0.address != sortedPlain[0] } + grouped + small
    let change = balancer.apply(fewer, makeSubchannel: Self.makeSubchannel)
    #expect(change.close.map(\.address) == [sortedPlain[0]])
    #expect(change.start.map(\.address) == [sortedPlain[5]])
  }

  @Test("without subsetting, or below the threshold, every instance is connected")
  func noSubsetting() {
    var off = Self.balancer()
    #expect(off.apply(Self.instances(300), makeSubchannel: Self.makeSubchannel).start.count == 300)
    var below = Self.balancer(subsetting: Self.subsetting)
    #expect(
      below.apply(Self.instances(100), makeSubchannel: Self.makeSubchannel).start.count == 100
    )
    var above = Self.balancer(subsetting: Self.subsetting)
    #expect(above.apply(Self.instances(101), makeSubchannel: Self.makeSubchannel).start.count == 25)
  }

  // MARK: Slow start

  // Catches: a ramp that never starts (full share at once), never ends, or applies to the
  // instances of the first answer.
  @Test("a late joiner ramps from 10% to its full share over the window; the first set does not")
  func slowStart() {
    let window = Duration.seconds(10)
    var balancer = Self.balancer(slowStart: .init(window: window, minimumWeightShare: 0.1))
    let start = ContinuousClock.now
    let first = Self.instances(2)
    Self.apply(first, to: &balancer, now: start)
    let late = Self.instances(1, from: 2)[0]
    let joined = start + .seconds(100)
    Self.apply(first + [late], to: &balancer, now: joined)
    let lateID = balancer.active[late.address]!
    let firstID = balancer.active[first[0].address]!

    // Weights are scaled by 1,000: 100 at the start, 500 half way, 1,000 at the end.
    #expect(balancer.weight(of: firstID, now: joined) == 1_000)
    #expect(balancer.weight(of: lateID, now: joined) == 100)
    #expect(balancer.weight(of: lateID, now: joined + .seconds(5)) == 500)
    #expect(balancer.weight(of: lateID, now: joined + window) == 1_000)
    // Once over, the ramp stays over.
    #expect(balancer.weight(of: lateID, now: joined) == 1_000)

    // The shares of 2,100 smooth round robin picks at those weights: exact.
    var again = Self.balancer(slowStart: .init(window: window, minimumWeightShare: 0.1))
    Self.apply(first, to: &again, now: start)
    Self.apply(first + [late], to: &again, now: joined)
    #expect(Self.picks(2_100, from: &again, now: joined)[late.address] == 100)
    #expect(Self.picks(2_500, from: &again, now: joined + .seconds(5))[late.address] == 500)
    #expect(Self.picks(3_000, from: &again, now: joined + window)[late.address] == 1_000)
  }

  // MARK: Metadata preference

  static func zoned() -> (Balancer, [ServiceInstance], [ServiceInstance]) {
    var balancer = Self.balancer()
    let zoneA = Self.instances(2, metadata: ["zone": "a"])
    let zoneB = Self.instances(2, metadata: ["zone": "b"], from: 10)
    Self.apply(zoneA + zoneB, to: &balancer)
    return (balancer, zoneA, zoneB)
  }

  // Catches: a preference that is ignored, that never falls back, or that falls back too early.
  @Test("calls prefer matching instances, and fall back when too few of them are usable")
  func metadataPreference() {
    let (zoned, zoneA, zoneB) = Self.zoned()
    var balancer = zoned
    let preferA = RegistryClientTransport.MetadataPreference(["zone": "a"])
    let a = Set(zoneA.map(\.address))
    let all = a.union(zoneB.map(\.address))
    #expect(Set(Self.picks(40, from: &balancer, preference: preferA).keys) == a)
    #expect(Set(Self.picks(40, from: &balancer).keys) == all)

    // One of two down: half still usable, the default share (0.5): stay local.
    let downA = balancer.active[zoneA[0].address]!
    _ = balancer.setHealth(downA, .notServing)
    #expect(Set(Self.picks(40, from: &balancer, preference: preferA).keys) == [zoneA[1].address])
    // A stricter share (0.75) falls back to every usable instance.
    let strict = RegistryClientTransport.MetadataPreference(
      ["zone": "a"],
      minimumHealthyShare: 0.75
    )
    #expect(
      Set(Self.picks(40, from: &balancer, preference: strict).keys)
        == all.subtracting([zoneA[0].address])
    )
    // Both down: the other zone takes the calls.
    _ = balancer.setHealth(balancer.active[zoneA[1].address]!, .broken)
    #expect(
      Set(Self.picks(40, from: &balancer, preference: preferA).keys) == Set(zoneB.map(\.address))
    )
    // A preference nothing matches: as without one.
    let nowhere = RegistryClientTransport.MetadataPreference(["zone": "z"])
    #expect(
      Set(Self.picks(40, from: &balancer, preference: nowhere).keys) == Set(zoneB.map(\.address))
    )
  }
}

import Testing

@testable import Etcd
@testable import EtcdRegistry

/// The registry's lease (`RegistryLeaseState`), event by event: one grant shared by every
/// write, a lost lease starting a recovery, a recovery overtaken by another loss, and the
/// register/restore race that must not count as a re-registration. Grants are numbers here.
@Suite("Registry lease state")
struct RegistryLeaseStateTests {
  typealias State = RegistryLeaseState<Int>

  static let lease1 = EtcdLease(id: 101, ttl: .seconds(10))
  static let lease2 = EtcdLease(id: 102, ttl: .seconds(10))

  /// A state holding `lease1` from grant 1.
  static func holding() -> State {
    var state = State()
    state.granting(1)
    _ = state.granted(lease1, by: 1)
    return state
  }

  @Test("the first write starts one grant; the others wait for it; its lease is then used by all")
  func oneGrant() {
    var state = State()
    guard case .grant = state.lookup() else {
      Issue.record("no grant was asked for")
      return
    }
    state.granting(1)
    guard case .wait(1) = state.lookup() else {
      Issue.record("a second write did not wait for the grant under way")
      return
    }
    #expect(state.next(hasRegistrations: true) == .wait, "no recovery while a grant runs")
    let (generation, adopted) = state.granted(Self.lease1, by: 1)
    #expect(adopted)
    guard case .ready(let lease, let readyGeneration) = state.lookup() else {
      Issue.record("the granted lease is not used")
      return
    }
    #expect(lease == Self.lease1)
    #expect(readyGeneration == generation)
    #expect(state.next(hasRegistrations: true) == .keepAlive(Self.lease1))
  }

  @Test("a failed grant lets the next write start another; a late grant is not adopted")
  func failedAndLateGrants() {
    var state = State()
    state.granting(1)
    state.grantFailed(1)
    guard case .grant = state.lookup() else {
      Issue.record("a failed grant blocked the next one")
      return
    }
    state.granting(2)
    state.grantFailed(1)  // A stale failure changes nothing.
    guard case .wait(2) = state.lookup() else {
      Issue.record("a stale failure dropped the grant under way")
      return
    }
    let lateAdopted = state.granted(Self.lease1, by: 1).adopted
    #expect(lateAdopted == false)
    let currentAdopted = state.granted(Self.lease2, by: 2).adopted
    #expect(currentAdopted)
    #expect(state.lease == Self.lease2)
  }

  @Test("a lost lease changes the generation and starts a recovery that counts as a restore")
  func lostThenRestored() {
    var state = Self.holding()
    let before = state.generation
    let wasCurrent = state.lost(Self.lease1.id)
    #expect(wasCurrent)
    #expect(state.lease == nil)
    #expect(state.generation != before, "a write with the old lease can tell")
    #expect(state.restoreNeeded)
    #expect(state.next(hasRegistrations: true) == .recover)
    #expect(state.next(hasRegistrations: false) == .wait, "nothing to restore")

    state.granting(2)
    let (generation, _) = state.granted(Self.lease2, by: 2)
    let first = state.recoveryWrote(generation: generation)
    #expect(first == .restored)
    #expect(!state.restoreNeeded)
    let second = state.recoveryWrote(generation: generation)
    #expect(second == .nothingLost, "counted once")
  }

  @Test("a loss reported for a lease already replaced is ignored")
  func staleLoss() {
    var state = Self.holding()
    let firstLoss = state.lost(Self.lease1.id)
    #expect(firstLoss)
    state.granting(2)
    _ = state.granted(Self.lease2, by: 2)
    let staleLoss = state.lost(Self.lease1.id)
    #expect(!staleLoss)
    #expect(state.lease == Self.lease2)
  }

  @Test("a recovery whose lease is lost while it writes is superseded and writes again")
  func supersededRecovery() {
    var state = Self.holding()
    _ = state.lost(Self.lease1.id)
    state.granting(2)
    let (generation, _) = state.granted(Self.lease2, by: 2)
    _ = state.lost(Self.lease2.id)
    let outcome = state.recoveryWrote(generation: generation)
    #expect(outcome == .superseded)
    #expect(state.restoreNeeded, "the next pass still restores")
  }

  @Test("a recovery that raced the first register() for the first lease counts nothing")
  func registerRestoreRace() {
    var state = State()
    state.granting(1)
    let (generation, _) = state.granted(Self.lease1, by: 1)
    let outcome = state.recoveryWrote(generation: generation)
    #expect(outcome == .nothingLost)
  }
}

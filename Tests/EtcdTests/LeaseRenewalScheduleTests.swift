import Testing

@testable import Etcd

/// When leases are renewed and what etcd's answers mean (`LeaseRenewalSchedule`), with made-up
/// times: what the keep-alive tests against etcd can only show as loose bounds, exactly.
@Suite("Lease renewal schedule")
struct LeaseRenewalScheduleTests {
  static let start = ContinuousClock.now
  static let silence = Duration.milliseconds(1500)

  static func at(_ milliseconds: Int) -> ContinuousClock.Instant {
    start + .milliseconds(milliseconds)
  }

  /// One keep-alive (ID 1) of lease 7 with a 3 s TTL, added at 0 ms.
  static func oneLease(ttl: Duration = .seconds(3)) -> LeaseRenewalSchedule {
    var schedule = LeaseRenewalSchedule()
    schedule.add(1, lease: EtcdLease(id: 7, ttl: ttl), now: at(0))
    return schedule
  }

  @Test("a lease is renewed a third of its TTL after its last renewal, and not before")
  func everyThirdOfTheTTL() {
    var schedule = Self.oneLease()
    let early = schedule.tick(now: Self.at(999), silenceTimeout: Self.silence)
    #expect(early.due.isEmpty)
    #expect(early.next == Self.at(1000), "it wakes exactly when the renewal is due")

    #expect(schedule.tick(now: Self.at(1000), silenceTimeout: Self.silence).due == [7])
    let answered = schedule.answered(lease: 7, ttlSeconds: 3, now: Self.at(1010))
    #expect(answered.latency == .milliseconds(10))
    #expect(answered.answers.map(\.1) == [.renewed(ttl: .seconds(3))])

    #expect(schedule.tick(now: Self.at(2009), silenceTimeout: Self.silence).due.isEmpty)
    #expect(schedule.tick(now: Self.at(2010), silenceTimeout: Self.silence).due == [7])
  }

  @Test(
    "an unanswered renewal is sent again every third of the TTL; the latency counts from the first"
  )
  func resend() {
    var schedule = Self.oneLease(ttl: .seconds(30))
    #expect(schedule.tick(now: Self.at(10_000), silenceTimeout: .seconds(60)).due == [7])
    #expect(schedule.tick(now: Self.at(20_000), silenceTimeout: .seconds(60)).due == [7])
    let answered = schedule.answered(lease: 7, ttlSeconds: 30, now: Self.at(20_100))
    #expect(answered.latency == .milliseconds(10_100))
  }

  @Test(
    "a renewal unanswered for a sixth of the TTL (at most the silence timeout) means a silent member"
  )
  func silentMember() {
    var schedule = Self.oneLease(ttl: .seconds(3))
    _ = schedule.tick(now: Self.at(1000), silenceTimeout: Self.silence)
    let waiting = schedule.tick(now: Self.at(1499), silenceTimeout: Self.silence)
    #expect(waiting.unanswered == nil)
    #expect(waiting.next == Self.at(1500), "it wakes when the renewal's timeout ends")
    let silent = schedule.tick(now: Self.at(1500), silenceTimeout: Self.silence)
    #expect(silent.unanswered?.lease == 7)
    #expect(silent.unanswered?.waited == .milliseconds(500))

    #expect(
      LeaseRenewalSchedule.renewalTimeout(ttl: .seconds(60), silenceTimeout: Self.silence)
        == Self.silence
    )
    #expect(
      LeaseRenewalSchedule.renewalTimeout(ttl: .seconds(1), silenceTimeout: Self.silence)
        == .milliseconds(200),
      "never below 200 ms"
    )
  }

  @Test("a lease without a renewal for a whole TTL is reported overdue once, until renewed")
  func overdue() {
    var schedule = Self.oneLease()
    _ = schedule.tick(now: Self.at(1000), silenceTimeout: .seconds(60))
    #expect(schedule.tick(now: Self.at(3000), silenceTimeout: .seconds(60)).overdue.isEmpty)
    #expect(schedule.tick(now: Self.at(3001), silenceTimeout: .seconds(60)).overdue == [1])
    #expect(schedule.tick(now: Self.at(5000), silenceTimeout: .seconds(60)).overdue.isEmpty)

    _ = schedule.answered(lease: 7, ttlSeconds: 3, now: Self.at(5000))
    #expect(schedule.tick(now: Self.at(8001), silenceTimeout: .seconds(60)).overdue == [1])
  }

  @Test("an answer with TTL 0 loses the lease for every keep-alive of it, and only those")
  func lost() {
    var schedule = Self.oneLease()
    schedule.add(2, lease: EtcdLease(id: 7, ttl: .seconds(3)), now: Self.at(0))
    schedule.add(3, lease: EtcdLease(id: 8, ttl: .seconds(3)), now: Self.at(0))
    let answered = schedule.answered(lease: 7, ttlSeconds: 0, now: Self.at(100))
    #expect(answered.answers.map(\.0).sorted() == [1, 2])
    #expect(answered.answers.allSatisfy { $0.1 == .lost })
    #expect(schedule.entries.keys.sorted() == [3])
  }

  @Test("a new stream renews every lease at once and forgets renewals sent on the old one")
  func newStream() {
    var schedule = Self.oneLease()
    _ = schedule.tick(now: Self.at(1000), silenceTimeout: Self.silence)
    schedule.streamOpened(now: Self.at(1200))
    let tick = schedule.tick(now: Self.at(1200), silenceTimeout: Self.silence)
    #expect(tick.due == [7])
    #expect(tick.unanswered == nil, "the old stream's renewal does not count against the new")
    let answered = schedule.answered(lease: 7, ttlSeconds: 3, now: Self.at(1250))
    #expect(answered.latency == .milliseconds(50), "measured from the new stream's renewal")
  }

  @Test("the TTL etcd returns paces the next renewal")
  func ttlFromAnswer() {
    var schedule = Self.oneLease()
    _ = schedule.tick(now: Self.at(1000), silenceTimeout: Self.silence)
    _ = schedule.answered(lease: 7, ttlSeconds: 9, now: Self.at(1000))
    #expect(schedule.tick(now: Self.at(3999), silenceTimeout: Self.silence).due.isEmpty)
    #expect(schedule.tick(now: Self.at(4000), silenceTimeout: Self.silence).due == [7])
  }
}

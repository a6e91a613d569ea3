/// When each kept-alive lease is renewed, and what etcd's answers mean, as a value: no stream,
/// no clock of its own, no continuations.
///
/// ``LeaseKeepAliveLoop`` asks it, each time it wakes, which leases are due, whether a member
/// left a renewal unanswered too long, and when to wake next; it hands it etcd's answers and
/// delivers the events it returns. `LeaseRenewalScheduleTests` drive it with made-up times.
///
/// The rules: a lease is renewed a third of its TTL after its last renewal (and again every
/// third of the TTL while no answer comes); a renewal unanswered for ``renewalTimeout(ttl:silenceTimeout:)``
/// means the member is silent; a lease with no renewal for a whole TTL is reported overdue once;
/// an answer with TTL 0 means etcd no longer has the lease.
struct LeaseRenewalSchedule {
  typealias Instant = ContinuousClock.Instant

  /// One caller's keep-alive of one lease (several callers may keep the same lease alive).
  struct Entry {
    var lease: EtcdLease.ID
    var ttl: Duration
    var nextSend: Instant
    var lastRenewal: Instant
    /// When the renewal now awaiting etcd's answer was first sent.
    var sentAt: Instant?
    var reportedOverdue = false
  }

  /// What the loop does now.
  struct Tick {
    /// The leases to send a renewal for.
    var due: Set<EtcdLease.ID> = []
    /// The keep-alives to report `overdue` to (each once per silence).
    var overdue: [UInt64] = []
    /// When to look again.
    var next: Instant
    /// A renewal left unanswered past its timeout: the member is silent; reconnect elsewhere.
    var unanswered: RenewalUnanswered?
  }

  /// An answer, for one keep-alive.
  enum Answer: Equatable {
    case renewed(ttl: Duration)
    /// etcd no longer has the lease; the keep-alive is removed.
    case lost
  }

  private(set) var entries: [UInt64: Entry] = [:]

  var isEmpty: Bool { self.entries.isEmpty }

  /// How long a renewal of a lease with `ttl` may go unanswered before its member counts as
  /// silent: a sixth of the TTL (so the lease moves with half its TTL left: a renewal goes out a
  /// third of the TTL after the last answer), at most `silenceTimeout`, at least 200 ms.
  static func renewalTimeout(ttl: Duration, silenceTimeout: Duration) -> Duration {
    max(min(ttl / 6, silenceTimeout), .milliseconds(200))
  }

  /// Starts keeping `lease` alive under `id`: first renewal a third of its TTL from `now`.
  mutating func add(_ id: UInt64, lease: EtcdLease, now: Instant) {
    let ttl = max(lease.ttl, .seconds(1))
    self.entries[id] = Entry(lease: lease.id, ttl: ttl, nextSend: now + ttl / 3, lastRenewal: now)
  }

  mutating func remove(_ id: UInt64) {
    self.entries[id] = nil
  }

  /// A new keep-alive stream opened: every lease is renewed at once (after an outage, leases are
  /// confirmed or found lost as soon as etcd answers), and an answer on it answers a renewal
  /// sent on it, not one lost with the old stream.
  mutating func streamOpened(now: Instant) {
    for id in self.entries.keys {
      self.entries[id]?.nextSend = now
      self.entries[id]?.sentAt = nil
    }
  }

  /// What is due at `now`. Marks the due leases as sent.
  mutating func tick(now: Instant, silenceTimeout: Duration) -> Tick {
    var tick = Tick(next: now + .milliseconds(500))
    for (id, var entry) in self.entries {
      if let sentAt = entry.sentAt {
        let timeout = Self.renewalTimeout(ttl: entry.ttl, silenceTimeout: silenceTimeout)
        if now - sentAt >= timeout {
          tick.unanswered = RenewalUnanswered(lease: entry.lease, waited: now - sentAt)
        }
        tick.next = min(tick.next, sentAt + timeout)
      }
      if entry.nextSend <= now {
        tick.due.insert(entry.lease)
        // A resend keeps the first send time: the latency is what etcd made us wait.
        if entry.sentAt == nil { entry.sentAt = now }
        // Try again after a third of the TTL if no answer comes.
        entry.nextSend = now + entry.ttl / 3
      }
      if !entry.reportedOverdue, now - entry.lastRenewal > entry.ttl {
        entry.reportedOverdue = true
        tick.overdue.append(id)
      }
      tick.next = min(tick.next, entry.nextSend)
      self.entries[id] = entry
    }
    return tick
  }

  /// etcd answered a renewal of `lease` with `ttl` seconds left (0: the lease is gone). Returns
  /// the answer for each keep-alive of the lease, and how long the answered renewal waited.
  mutating func answered(
    lease: EtcdLease.ID,
    ttlSeconds: Int64,
    now: Instant
  ) -> (answers: [(UInt64, Answer)], latency: Duration?) {
    var answers: [(UInt64, Answer)] = []
    var latency: Duration?
    for (id, var entry) in self.entries where entry.lease == lease {
      if let sentAt = entry.sentAt {
        latency = now - sentAt
        entry.sentAt = nil
      }
      if ttlSeconds <= 0 {
        answers.append((id, .lost))
        self.entries[id] = nil
      } else {
        entry.ttl = .seconds(ttlSeconds)
        entry.lastRenewal = now
        entry.nextSend = now + entry.ttl / 3
        entry.reportedOverdue = false
        self.entries[id] = entry
        answers.append((id, .renewed(ttl: entry.ttl)))
      }
    }
    return (answers, latency)
  }
}

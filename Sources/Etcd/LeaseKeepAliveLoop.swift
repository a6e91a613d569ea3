import CoreMetrics
import GRPCCore
import Logging
import RegistryPrimitives
import Synchronization

/// Renews every lease of a client over one `LeaseKeepAlive` stream, reconnecting (with failover
/// and backoff) whenever the stream breaks.
final class LeaseKeepAliveLoop: Sendable {
  private struct Registration {
    var lease: Int64
    var ttl: Duration
    var nextSend: ContinuousClock.Instant
    var lastRenewal: ContinuousClock.Instant
    /// When the renewal now awaiting etcd's answer was sent.
    var sentAt: ContinuousClock.Instant?
    var reportedOverdue = false
    var continuation: AsyncStream<EtcdLeaseKeepAliveEvent>.Continuation
  }

  private struct State {
    var registrations: [UInt64: Registration] = [:]
    var nextID: UInt64 = 0
    var isShutDown = false
    var streamsOpened = 0
    var wake = Wakeup()
  }

  private let state = Locked(State())
  private let logger: Logger
  private let latency: CoreMetrics.Timer
  private let shutdownSignal = Signal()
  private let stoppedSignal = Signal()

  init(logger: Logger, latency: CoreMetrics.Timer) {
    self.logger = logger
    self.latency = latency
  }

  /// How many keep-alive streams have been opened (1 while nothing failed).
  var streamsOpened: Int { self.state.withLock { $0.streamsOpened } }

  func add(
    lease: EtcdLease,
    continuation: AsyncStream<EtcdLeaseKeepAliveEvent>.Continuation
  ) -> UInt64 {
    let now = ContinuousClock.now
    let ttl = max(lease.ttl, .seconds(1))
    let (id, wake) = self.state.withLock { state in
      state.nextID += 1
      state.registrations[state.nextID] = Registration(
        lease: lease.id,
        ttl: ttl,
        nextSend: now + ttl / 3,
        lastRenewal: now,
        continuation: continuation
      )
      return (state.nextID, state.wake.take())
    }
    wake?.resume()
    return id
  }

  func remove(_ id: UInt64) {
    self.state.withLock { _ = $0.registrations.removeValue(forKey: id) }
  }

  func shutdown() {
    let (registrations, wake) = self.state.withLock { state in
      state.isShutDown = true
      defer {
        state.registrations = [:]
      }
      return (state.registrations.values.map(\.continuation), state.wake.take())
    }
    for continuation in registrations { continuation.finish() }
    wake?.resume()
    self.shutdownSignal.fire()
  }

  /// Waits until ``run(client:)`` has returned.
  func stopped() async {
    await self.stoppedSignal.waitIgnoringCancellation()
  }

  func run(client: EtcdClient) async {
    defer { self.stoppedSignal.fire() }
    await withTaskGroup(of: Void.self) { group in
      group.addTask { await self.loop(client: client) }
      await self.shutdownSignal.waitIgnoringCancellation()
      group.cancelAll()
    }
  }

  private func loop(client: EtcdClient) async {
    var failures = 0
    while !Task.isCancelled {
      guard await self.waitForRegistrations() else { return }
      let (index, endpoint) = client.pickEndpoint()
      self.state.withLock { state in
        state.streamsOpened += 1
        // A new stream renews everything at once: after an outage, leases are confirmed (or
        // found lost) as soon as etcd answers.
        let now = ContinuousClock.now
        for id in state.registrations.keys {
          state.registrations[id]?.nextSend = now
          // An answer on the new stream answers a request sent on it, not one lost with the old.
          state.registrations[id]?.sentAt = nil
        }
      }
      do {
        var metadata = try await client.auth.metadata(for: client)
        // A member without a leader ends the stream rather than holding renewals it cannot
        // forward (etcd's require-leader flag).
        metadata.addString("true", forKey: EtcdClient.requireLeaderKey)
        let leases = Etcdserverpb_Lease.Client(wrapping: endpoint.client)
        let silence = client.config.silenceTimeout
        let request = StreamingClientRequest<Etcdserverpb_LeaseKeepAliveRequest>(metadata: metadata)
        {
          writer in
          try await self.sendRenewals(writer, silenceTimeout: silence)
        }
        try await leases.leaseKeepAlive(request: request) { response in
          for try await message in response.messages {
            self.handle(message)
          }
        }
        if Task.isCancelled { return }
        self.logger.debug(
          "etcd keep-alive stream ended; reopening",
          metadata: ["etcd.endpoint": "\(endpoint.address)"]
        )
      } catch {
        if Task.isCancelled { return }
        failures += 1
        self.logger.warning(
          "etcd keep-alive stream failed",
          metadata: [
            "etcd.endpoint": "\(endpoint.address)", "etcd.error": "\(error)",
            "etcd.attempt": "\(failures)",
          ]
        )
        if let stalled = error as? RenewalUnanswered {
          // The member holds the connection open but answers nothing (stopped, partitioned,
          // stalled): everything on that connection moves to the next member now, not when
          // a keep-alive PING times out.
          client.abandon(endpoint: index, reason: stalled.description)
        } else {
          client.failover(from: index)
        }
        do {
          try await Task.sleep(for: client.config.retryBackoff.delay(attempt: failures - 1))
        } catch {
          return
        }
        continue
      }
      failures = 0
    }
  }

  /// Waits until at least one lease needs renewing; false on shutdown.
  private func waitForRegistrations() async -> Bool {
    while true {
      if Task.isCancelled { return false }
      let ready: Bool? = self.state.withLock { state in
        if state.isShutDown { return false }
        return state.registrations.isEmpty ? nil : true
      }
      if let ready { return ready }
      await self.state.park(at: \.wake) { $0.isShutDown || !$0.registrations.isEmpty }
    }
  }

  /// How long a renewal of a lease with `ttl` may go unanswered before its member counts as
  /// silent: a sixth of the TTL (so the lease moves with half its TTL left: a renewal goes out a
  /// third of the TTL after the last answer), at most `silenceTimeout`, at least 200 ms.
  static func renewalTimeout(ttl: Duration, silenceTimeout: Duration) -> Duration {
    max(min(ttl / 6, silenceTimeout), .milliseconds(200))
  }

  /// Sends a renewal for every lease that is due, then sleeps until the next is due.
  ///
  /// - Throws: ``RenewalUnanswered`` when a renewal has waited longer than its timeout.
  private func sendRenewals(
    _ writer: RPCWriter<Etcdserverpb_LeaseKeepAliveRequest>,
    silenceTimeout: Duration
  ) async throws {
    while !Task.isCancelled {
      let now = ContinuousClock.now
      let (due, overdue, next, unanswered) = self.state.withLock { state in
        var due = Set<Int64>()
        var overdue: [AsyncStream<EtcdLeaseKeepAliveEvent>.Continuation] = []
        var next = now + .milliseconds(500)
        var unanswered: RenewalUnanswered?
        for (id, var registration) in state.registrations {
          if let sentAt = registration.sentAt {
            let timeout = Self.renewalTimeout(ttl: registration.ttl, silenceTimeout: silenceTimeout)
            if now - sentAt >= timeout {
              unanswered = RenewalUnanswered(lease: registration.lease, waited: now - sentAt)
            }
            next = min(next, sentAt + timeout)
          }
          if registration.nextSend <= now {
            due.insert(registration.lease)
            // A resend keeps the first send time: the latency is what etcd made us wait.
            if registration.sentAt == nil { registration.sentAt = now }
            // Try again after a third of the TTL if no answer comes.
            registration.nextSend = now + registration.ttl / 3
          }
          if !registration.reportedOverdue, now - registration.lastRenewal > registration.ttl {
            registration.reportedOverdue = true
            overdue.append(registration.continuation)
          }
          next = min(next, registration.nextSend)
          state.registrations[id] = registration
        }
        return (due, overdue, next, unanswered)
      }
      for continuation in overdue { continuation.yield(.overdue) }
      if let unanswered { throw unanswered }
      for lease in due {
        var request = Etcdserverpb_LeaseKeepAliveRequest()
        request.id = lease
        try await writer.write(request)
      }
      try await Task.sleep(
        until: max(next, ContinuousClock.now + .milliseconds(20)),
        clock: .continuous
      )
    }
  }

  private func handle(_ response: Etcdserverpb_LeaseKeepAliveResponse) {
    let now = ContinuousClock.now
    let (events, latency) = self.state.withLock { state in
      var events: [(AsyncStream<EtcdLeaseKeepAliveEvent>.Continuation, EtcdLeaseKeepAliveEvent)] =
        []
      var latency: Duration?
      for (id, var registration) in state.registrations where registration.lease == response.id {
        if let sentAt = registration.sentAt {
          latency = now - sentAt
          registration.sentAt = nil
        }
        if response.ttl <= 0 {
          events.append((registration.continuation, .lost))
          state.registrations[id] = nil
        } else {
          registration.ttl = .seconds(response.ttl)
          registration.lastRenewal = now
          registration.nextSend = now + registration.ttl / 3
          registration.reportedOverdue = false
          state.registrations[id] = registration
          events.append((registration.continuation, .renewed(ttl: registration.ttl)))
        }
      }
      return (events, latency)
    }
    if let latency {
      let (seconds, attoseconds) = latency.components
      self.latency.recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
    for (continuation, event) in events {
      continuation.yield(event)
      if event == .lost {
        self.logger.info("etcd lease lost", metadata: ["etcd.lease": "\(response.id)"])
        continuation.finish()
      }
    }
  }
}

/// A lease renewal that its member left unanswered past ``LeaseKeepAliveLoop/renewalTimeout(ttl:silenceTimeout:)``.
struct RenewalUnanswered: Error, CustomStringConvertible {
  var lease: Int64
  var waited: Duration

  var description: String {
    "etcd left a renewal of lease \(self.lease) unanswered for \(self.waited); the member counts as silent"
  }
}

import CoreMetrics
import GRPCCore
import Logging
import RegistryPrimitives
import Synchronization

/// Renews every lease of a client over one `LeaseKeepAlive` stream, reconnecting (with failover
/// and backoff) whenever the stream breaks.
final class LeaseKeepAliveLoop: Sendable {
  private struct State {
    /// When each lease is renewed; decides everything.
    var schedule = LeaseRenewalSchedule()
    /// Where each keep-alive's events go, by the same IDs as the schedule's.
    var continuations: [UInt64: AsyncStream<EtcdLeaseKeepAliveEvent>.Continuation] = [:]
    var nextID: UInt64 = 0
    var isShutDown = false
    var streamsOpened = 0
    var wake = Wakeup()
  }

  private let state = Locked(State())
  private let logger: Logger
  private let latency: CoreMetrics.Timer
  private let lifetime = LoopLifetime()

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
    let (id, wake) = self.state.withLock { state in
      state.nextID += 1
      state.schedule.add(state.nextID, lease: lease, now: now)
      state.continuations[state.nextID] = continuation
      return (state.nextID, state.wake.take())
    }
    wake?.resume()
    return id
  }

  func remove(_ id: UInt64) {
    self.state.withLock { state in
      state.schedule.remove(id)
      state.continuations[id] = nil
    }
  }

  func shutdown() {
    let (registrations, wake) = self.state.withLock { state in
      state.isShutDown = true
      defer {
        state.schedule = LeaseRenewalSchedule()
        state.continuations = [:]
      }
      return (Array(state.continuations.values), state.wake.take())
    }
    for continuation in registrations { continuation.finish() }
    wake?.resume()
    self.lifetime.shutdown()
  }

  /// Waits until ``run(client:)`` has returned.
  func stopped() async {
    await self.lifetime.stopped()
  }

  func run(client: EtcdClient) async {
    await self.lifetime.run { await self.loop(client: client) }
  }

  private func loop(client: EtcdClient) async {
    var failures = 0
    while !Task.isCancelled {
      guard await self.waitForRegistrations() else { return }
      let (index, endpoint) = client.pickEndpoint()
      self.state.withLock { state in
        state.streamsOpened += 1
        state.schedule.streamOpened(now: .now)
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
        return state.schedule.isEmpty ? nil : true
      }
      if let ready { return ready }
      await self.state.park(at: \.wake) { $0.isShutDown || !$0.schedule.isEmpty }
    }
  }

  /// Sends a renewal for every lease that is due, then sleeps until the next is due.
  ///
  /// - Throws: ``RenewalUnanswered`` when a renewal has waited longer than its timeout.
  private func sendRenewals(
    _ writer: RPCWriter<Etcdserverpb_LeaseKeepAliveRequest>,
    silenceTimeout: Duration
  ) async throws {
    while !Task.isCancelled {
      let (tick, overdue) = self.state.withLock { state in
        let tick = state.schedule.tick(now: .now, silenceTimeout: silenceTimeout)
        return (tick, tick.overdue.compactMap { state.continuations[$0] })
      }
      for continuation in overdue { continuation.yield(.overdue) }
      if let unanswered = tick.unanswered { throw unanswered }
      for lease in tick.due {
        var request = Etcdserverpb_LeaseKeepAliveRequest()
        request.id = lease
        try await writer.write(request)
      }
      try await Task.sleep(
        until: max(tick.next, ContinuousClock.now + .milliseconds(20)),
        clock: .continuous
      )
    }
  }

  private func handle(_ response: Etcdserverpb_LeaseKeepAliveResponse) {
    let (events, latency) = self.state.withLock { state in
      let (answers, latency) = state.schedule.answered(
        lease: response.id,
        ttlSeconds: response.ttl,
        now: .now
      )
      var events: [(AsyncStream<EtcdLeaseKeepAliveEvent>.Continuation, EtcdLeaseKeepAliveEvent)] =
        []
      for (id, answer) in answers {
        guard let continuation = state.continuations[id] else { continue }
        switch answer {
        case .renewed(let ttl):
          events.append((continuation, .renewed(ttl: ttl)))
        case .lost:
          events.append((continuation, .lost))
          state.continuations[id] = nil
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

/// A lease renewal that its member left unanswered past ``LeaseRenewalSchedule/renewalTimeout(ttl:silenceTimeout:)``.
struct RenewalUnanswered: Error, CustomStringConvertible {
  var lease: Int64
  var waited: Duration

  var description: String {
    "etcd left a renewal of lease \(self.lease) unanswered for \(self.waited); the member counts as silent"
  }
}

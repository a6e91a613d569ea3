import Etcd
import Logging
import RegistryCore

extension EtcdServiceRegistry {
  /// The lease to write with, granting one if there is none (one grant shared by all callers).
  func currentLease() async throws -> (EtcdLease, UInt64) {
    enum Lookup {
      case ready(EtcdLease, UInt64)
      case pending(Task<EtcdLease, any Error>)
    }
    let lookup = try self.state.withLock { state throws(RegistryError) -> Lookup in
      if state.lifecycle.isShutDown { throw RegistryError.shutDown("register") }
      switch state.leasing.lookup() {
      case .ready(let lease, let generation):
        return .ready(lease, generation)
      case .wait(let grant):
        return .pending(grant)
      case .grant:
        // The grant serves every register call waiting for a lease, so it belongs to none of
        // them.
        let ttl = self.config.leaseTTL
        let pending = Task { try await self.client.grantLease(ttl: ttl) }
        state.leasing.granting(pending)
        return .pending(pending)
      }
    }
    let task: Task<EtcdLease, any Error>
    switch lookup {
    case .ready(let lease, let generation): return (lease, generation)
    case .pending(let pending): task = pending
    }
    do {
      let lease = try await cancellableValue(of: task)
      let (generation, granted, wake) = self.state.withLock { state in
        let (generation, adopted) = state.leasing.granted(lease, by: task)
        return (generation, adopted, adopted ? state.wake.take() : nil)
      }
      wake?.resume()
      if granted {
        self.metrics.leaseGrants.increment()
        self.logger.info(
          "granted registry lease",
          metadata: ["etcd.lease": "\(lease.id)", "etcd.ttl": "\(lease.ttl)"]
        )
      }
      return (lease, generation)
    } catch is CancellationError {
      // This waiter gave up; the grant goes on for the other waiters, and the next register
      // call takes it over. A lease nobody takes over expires unused after its TTL.
      throw CancellationError()
    } catch {
      self.state.withLock { $0.leasing.grantFailed(task) }
      throw error
    }
  }

  /// Forgets `lease` if it is still the current one, and wakes the recovery.
  func leaseLost(_ lease: EtcdLease, reason: String) {
    let (lost, wake) = self.state.withLock { state in
      guard state.leasing.lost(lease.id) else {
        return (false, nil as CheckedContinuation<Void, Never>?)
      }
      return (true, state.wake.take())
    }
    wake?.resume()
    if lost {
      self.metrics.leaseLosses.increment()
      self.logger.warning(
        "registry lease lost; registering again",
        metadata: ["etcd.lease": "\(lease.id)", "registry.reason": "\(reason)"]
      )
    }
  }

  /// Keeps the lease alive while there is one; when it is lost with registrations left, grants a
  /// new one and writes every registration again, retrying with jittered backoff forever.
  func maintainLease() async {
    while !Task.isCancelled {
      // nil: shut down.
      let next = self.state.withLock {
        state -> RegistryLeaseState<Task<EtcdLease, any Error>>.Next? in
        if state.lifecycle.isShutDown { return nil }
        return state.leasing.next(hasRegistrations: !state.registrations.isEmpty)
      }
      switch next {
      case nil:
        return
      case .wait:
        await self.waitForChange()
      case .recover:
        await self.recover()
      case .keepAlive(let lease):
        var lost = false
        for await event in self.client.keepAlive(lease) {
          switch event {
          case .renewed:
            break
          case .overdue:
            self.logger.warning(
              "registry lease renewal overdue; etcd unreachable",
              metadata: ["etcd.lease": "\(lease.id)"]
            )
          case .lost:
            lost = true
          }
          // A lease replaced meanwhile (a write found it gone) needs no more renewals.
          if self.state.withLock({ $0.leasing.lease?.id != lease.id || $0.lifecycle.isShutDown }) {
            break
          }
        }
        if self.state.withLock({ $0.lifecycle.isShutDown }) { return }
        if lost { self.leaseLost(lease, reason: "etcd reports it expired or revoked") }
      }
    }
  }

  private func waitForChange() async {
    await self.state.park(at: \.wake) { state in
      state.lifecycle.isShutDown
        || state.leasing.next(hasRegistrations: !state.registrations.isEmpty) != .wait
    }
  }

  /// Grants a new lease and writes every registration with it.
  ///
  /// The first attempt waits a random part of the recovery spread, so that many processes that
  /// lost their leases in the same etcd incident do not all write at the same instant.
  func recover() async {
    var attempt = 0
    let spread = self.config.recoveryBackoff.initial * Double.random(in: 0 ... 10)
    let firstDelay = min(spread, self.config.leaseTTL / 2)
    self.logger.debug(
      "registry recovery starts",
      metadata: ["registry.first_attempt_in_ms": "\(Int(firstDelay / .milliseconds(1)))"]
    )
    try? await Task.sleep(for: firstDelay)
    while !Task.isCancelled {
      if self.state.withLock({ $0.lifecycle.isShutDown || $0.registrations.isEmpty }) { return }
      attempt += 1
      self.metrics.recoveryAttempts.increment()
      var leaseUsed: EtcdLease?
      do {
        let (lease, generation) = try await self.currentLease()
        leaseUsed = lease
        let registrations = self.state.withLock { $0.registrations }
        for key in registrations.keys {
          try await self.write(key, lease: lease)
        }
        let outcome = self.state.withLock { state in
          let outcome = state.leasing.recoveryWrote(generation: generation)
          if outcome != .superseded {
            state.confirmed.formUnion(registrations.keys.filter { state.registrations[$0] != nil })
          }
          return outcome
        }
        switch outcome {
        case .superseded:
          // The lease changed while this pass wrote: write again with the new one.
          continue
        case .nothingLost:
          // No lease was lost: this pass raced a first register() for the first lease and wrote
          // the same keys again. Nothing to count or to warn about.
          return
        case .restored:
          self.metrics.reRegistrations.increment()
          self.logger.warning(
            "registrations restored",
            metadata: [
              "etcd.lease": "\(lease.id)", "registry.count": "\(registrations.count)",
              "registry.attempts": "\(attempt)",
            ]
          )
          return
        }
      } catch {
        if let error = error as? EtcdError, error.code == .leaseNotFound, let lease = leaseUsed {
          self.leaseLost(lease, reason: "it vanished during recovery")
        }
        if let error = error as? RegistryError, error.code == .shutdown { return }
        let delay = self.config.recoveryBackoff.delay(attempt: attempt - 1)
        self.logger.warning(
          "registry recovery attempt failed; retrying",
          metadata: [
            "registry.attempt": "\(attempt)", "registry.error": "\(error)",
            "registry.retry_in": "\(delay)",
          ]
        )
        do {
          try await Task.sleep(for: delay)
        } catch {
          return
        }
      }
    }
  }

  /// Restores registered keys that someone else deleted while the registry lives.
  ///
  /// Follows deletions under the registry's prefix; a deleted key that is still registered is
  /// written again with the current lease (a lease that turns out gone starts a recovery).
  /// After the watch ends (compaction, replaced store) every registered key is checked.
  func repairDeletedKeys() async {
    var failures = 0
    while !Task.isCancelled {
      if self.state.withLock({ $0.lifecycle.isShutDown }) { return }
      do {
        let revision = try await self.reconcile()
        var options = EtcdWatchOptions()
        options.startRevision = revision + 1
        options.filterPuts = true
        for try await batch in self.client.watch(
          .prefix(self.keyspace.rootPrefix),
          options: options
        ) {
          failures = 0
          for event in batch.events where event.kind == .delete {
            await self.repair(event.kv.keyString)
          }
        }
        return
      } catch {
        if Task.isCancelled || self.state.withLock({ $0.lifecycle.isShutDown }) { return }
        failures += 1
        self.logger.debug(
          "registry repair watch restarting",
          metadata: ["registry.error": "\(error)"]
        )
        try? await Task.sleep(
          for: self.config.recoveryBackoff.delay(attempt: min(failures - 1, 6))
        )
      }
    }
  }

  /// Writes every registered key that is missing; returns the revision it checked at.
  private func reconcile() async throws -> Int64 {
    let probe = try await self.client.get(.key(self.keyspace.rootPrefix))
    var revision = probe.header.revision
    let registrations = self.state.withLock { $0.registrations }
    for key in registrations.keys {
      let result = try await self.client.get(.key(key))
      revision = min(revision, result.header.revision)
      if result.kvs.isEmpty { await self.repair(key) }
    }
    return revision
  }

  private func repair(_ key: String) async {
    // Only keys etcd has acknowledged: a key whose register call is still writing it is not
    // missing, just not there yet.
    guard let lease = self.state.withLock({ $0.confirmed.contains(key) ? $0.leasing.lease : nil })
    else {
      return  // not ours, not yet written, or no lease: the recovery writes everything
    }
    do {
      guard try await self.restore(key, lease: lease) else { return }
      self.metrics.keyRepairs.increment()
      self.logger.warning(
        "registered key was deleted; restored it",
        metadata: self.keyMetadata(key).merging(["etcd.lease": "\(lease.id)"]) { $1 }
      )
    } catch let error as EtcdError where error.code == .leaseNotFound {
      self.leaseLost(lease, reason: "restoring a deleted key found it gone")
    } catch {
      self.logger.info(
        "could not restore deleted key yet",
        metadata: self.keyMetadata(key).merging(["registry.error": "\(error)"]) { $1 }
      )
    }
  }

  /// Writes a missing key back, only if it is still missing: a repair must never overwrite a
  /// value that a `register` call wrote meanwhile. Returns whether it wrote.
  private func restore(_ key: String, lease: EtcdLease) async throws -> Bool {
    guard let wanted = self.state.withLock({ $0.registrations[key] }) else { return false }
    let result = try await self.client.transaction(
      if: [.version(of: key, .equal, 0)],
      then: [.put(key, value: self.config.codec.encode(wanted), lease: lease.id)]
    )
    guard result.succeeded else { return false }
    // A deregister or register that ran while the restore was in flight may have been
    // overtaken by it: put right what it wanted.
    let now = self.state.withLock { $0.registrations[key] }
    if now != wanted {
      if let now {
        try await self.client.put(key, value: self.config.codec.encode(now), lease: lease.id)
      } else {
        try await self.client.delete(.key(key))
      }
    }
    return true
  }

  /// Makes etcd hold what the registry wants at `key`, with `lease`.
  ///
  /// The wanted value is read again after each write: a `register` or `deregister` that ran
  /// meanwhile may have been overtaken by this write, which then puts or deletes once more.
  func write(_ key: String, lease: EtcdLease) async throws {
    var written: ServiceInstance?
    var first = true
    while true {
      let wanted = self.state.withLock { $0.registrations[key] }
      if !first, wanted == written { return }
      if first, wanted == nil { return }
      first = false
      if let wanted {
        try await self.client.put(
          key,
          value: self.config.codec.encode(wanted),
          lease: lease.id
        )
      } else {
        try await self.client.delete(.key(key))
      }
      written = wanted
    }
  }

  /// The service, address and key of a registry key, for log metadata.
  func keyMetadata(_ key: String) -> Logger.Metadata {
    var metadata: Logger.Metadata = ["registry.key": "\(key)"]
    if let (service, address) = self.keyspace.parse(key) {
      metadata["registry.service"] = "\(service)"
      metadata["registry.address"] = "\(address)"
    }
    return metadata
  }
}

import GRPCCore
import Logging
import RegistryPrimitives
import Synchronization

/// Multiplexes every watch of a client on one `Watch` stream and keeps them going across stream
/// failures: each watch resumes from the revision after the last it delivered.
///
/// The protocol is ``WatchStreamStateMachine``; this type runs the stream and performs its
/// actions. Requests are written under the lock (their order is the protocol's), events are
/// handed to iterators after it: finishing an iterator runs its `onTermination`, which cancels
/// the watch and takes the lock.
final class WatchMultiplexer: Sendable {
  private typealias Continuation = AsyncThrowingStream<EtcdWatchBatch, any Error>.Continuation

  private struct State {
    var machine = WatchStreamStateMachine()
    var continuations: [WatchStreamStateMachine.WatchID: Continuation] = [:]
    var outbound: AsyncStream<Etcdserverpb_WatchRequest>.Continuation?
    var streamsOpened = 0
    var wake = Wakeup()

    /// Writes the requests among `actions` now; returns what is left to do after the lock.
    mutating func perform(
      _ actions: [WatchStreamStateMachine.Action]
    ) -> [(Continuation, Result<EtcdWatchBatch, EtcdError>)] {
      var after: [(Continuation, Result<EtcdWatchBatch, EtcdError>)] = []
      for action in actions {
        switch action {
        case .send(let request):
          self.outbound?.yield(request)
        case .deliver(let id, let batch):
          if let continuation = self.continuations[id] {
            after.append((continuation, .success(batch)))
          }
        case .fail(let id, let error):
          if let continuation = self.continuations.removeValue(forKey: id) {
            after.append((continuation, .failure(error)))
          }
        case .checkRevision, .renewTokenAndReopen:
          break  // performed by the stream's reader
        }
      }
      return after
    }
  }

  private let state = Locked(State())
  private let logger: Logger
  private let lifetime = LoopLifetime()

  init(logger: Logger) {
    self.logger = logger
  }

  var streamsOpened: Int { self.state.withLock { $0.streamsOpened } }

  func add(
    range: EtcdKeyRange,
    options: EtcdWatchOptions,
    continuation: AsyncThrowingStream<EtcdWatchBatch, any Error>.Continuation
  ) -> UInt64 {
    let (id, wake) = self.state.withLock { state in
      let (id, actions) = state.machine.add(range, options: options)
      state.continuations[id] = continuation
      _ = state.perform(actions)  // only a create request
      return (id, state.wake.take())
    }
    wake?.resume()
    return id
  }

  func cancel(_ id: UInt64) {
    self.state.withLock { state in
      state.continuations[id] = nil
      _ = state.perform(state.machine.cancel(id))  // only a cancel request
    }
  }

  func shutdown() {
    let (watchers, wake, outbound) = self.state.withLock { state in
      let ids = state.machine.shutdown()
      defer {
        state.continuations = [:]
        state.outbound = nil
      }
      return (ids.compactMap { state.continuations[$0] }, state.wake.take(), state.outbound)
    }
    outbound?.finish()
    for continuation in watchers { continuation.finish() }
    wake?.resume()
    self.lifetime.shutdown()
  }

  func stopped() async {
    await self.lifetime.stopped()
  }

  func run(client: EtcdClient) async {
    await self.lifetime.run { await self.loop(client: client) }
  }

  private func loop(client: EtcdClient) async {
    var failures = 0
    while !Task.isCancelled {
      guard await self.waitForWatchers() else { return }
      let (index, endpoint) = client.pickEndpoint()
      let (outboundStream, outbound) = AsyncStream.makeStream(of: Etcdserverpb_WatchRequest.self)
      let generation: UInt64? = self.state.withLock { state in
        if state.machine.isShutDown { return nil }
        state.streamsOpened += 1
        state.outbound = outbound
        let (generation, actions) = state.machine.streamOpened()
        _ = state.perform(actions)
        return generation
      }
      guard let generation else { return }
      let received = Flag()
      var metadata: Metadata = [:]
      do {
        metadata = try await client.auth.metadata(for: client)
        // etcd's require-leader flag: a member cut off from its cluster ends the stream
        // instead of holding the watches silently.
        metadata.addString("true", forKey: EtcdClient.requireLeaderKey)
        let request = StreamingClientRequest<Etcdserverpb_WatchRequest>(metadata: metadata) {
          writer in
          for await message in outboundStream {
            try await writer.write(message)
          }
        }
        try await Etcdserverpb_Watch.Client(wrapping: endpoint.client).watch(request: request) {
          response in
          for try await message in response.messages {
            received.set()
            try await self.handle(message, generation: generation, client: client)
          }
        }
        if Task.isCancelled { return }
        self.logger.info(
          "etcd watch stream ended; reopening",
          metadata: ["etcd.endpoint": "\(endpoint.address)"]
        )
      } catch is RenewTokenAndReopen {
        if Task.isCancelled { return }
        client.auth.invalidate(metadata)
        self.logger.info(
          "etcd refused a watch over its auth token; reopening the watch stream with a new token",
          metadata: ["etcd.endpoint": "\(endpoint.address)"]
        )
      } catch {
        if Task.isCancelled { return }
        // Self-healing: the stream is reopened (with failover and backoff) and watches resume.
        self.logger.warning(
          "etcd watch stream failed",
          metadata: [
            "etcd.endpoint": "\(endpoint.address)", "etcd.error": "\(error)",
            "etcd.attempt": "\(failures + 1)",
          ]
        )
      }
      self.state.withLock { state in
        state.machine.streamClosed(generation)
        state.outbound = nil
      }
      outbound.finish()
      failures = received.isSet ? 0 : failures + 1
      client.failover(from: index)
      do {
        try await Task.sleep(for: client.config.retryBackoff.delay(attempt: failures))
      } catch {
        return
      }
    }
  }

  private func waitForWatchers() async -> Bool {
    while true {
      if Task.isCancelled { return false }
      let ready: Bool? = self.state.withLock { state in
        if state.machine.isShutDown { return false }
        return state.machine.wantsStream ? true : nil
      }
      if let ready { return ready }
      await self.state.park(at: \.wake) { $0.machine.isShutDown || $0.machine.wantsStream }
    }
  }

  private func handle(
    _ response: Etcdserverpb_WatchResponse,
    generation: UInt64,
    client: EtcdClient
  ) async throws {
    var (after, checks, reopen) = self.state.withLock { state in
      let actions = state.machine.received(response, on: generation)
      return (
        state.perform(actions), Self.revisionChecks(actions),
        actions.contains(.renewTokenAndReopen)
      )
    }
    Self.finish(after)
    if reopen { throw RenewTokenAndReopen() }
    for (id, expected, seen) in checks {
      var options = EtcdGetOptions()
      options.countOnly = true
      let current = try await client.get(.key("\u{0}"), options: options).header.revision
      if current < expected {
        self.logger.warning(
          "etcd store replaced: revision went backwards",
          metadata: [
            "etcd.revision": "\(current)", "etcd.expected": "\(expected)", "etcd.seen": "\(seen)",
          ]
        )
      }
      after = self.state.withLock { state in
        state.perform(state.machine.revisionChecked(id, current: current))
      }
      Self.finish(after)
    }
  }

  private static func revisionChecks(
    _ actions: [WatchStreamStateMachine.Action]
  ) -> [(WatchStreamStateMachine.WatchID, Int64, Int64)] {
    actions.compactMap { action in
      if case .checkRevision(let id, let expected, let seen) = action {
        return (id, expected, seen)
      }
      return nil
    }
  }

  private static func finish(_ after: [(Continuation, Result<EtcdWatchBatch, EtcdError>)]) {
    for (continuation, result) in after {
      switch result {
      case .success(let batch): continuation.yield(batch)
      case .failure(let error): continuation.finish(throwing: error)
      }
    }
  }
}

/// Ends the watch stream so that it is reopened with a new auth token.
private struct RenewTokenAndReopen: Error {}

/// A flag set from a `@Sendable` closure.
final class Flag: Sendable {
  private let value = Atomic<Bool>(false)
  func set() { self.value.store(true, ordering: .relaxed) }
  var isSet: Bool { self.value.load(ordering: .relaxed) }
}

import GRPCCore
import Logging
import Synchronization

import struct Foundation.Data

/// Multiplexes every watch of a client on one `Watch` stream and keeps them going across stream
/// failures: each watch resumes from the revision after the last it delivered.
final class WatchMultiplexer: Sendable {
  private struct Watcher {
    var range: EtcdKeyRange
    var options: EtcdWatchOptions
    /// The next revision to deliver; 0 until etcd has told us the creation revision.
    var nextRevision: Int64
    var continuation: AsyncThrowingStream<EtcdWatchBatch, any Error>.Continuation
    /// The stream generation the watcher was created on, if any.
    var stream: UInt64?
  }

  private struct State {
    var watchers: [Int64: Watcher] = [:]
    var nextID: Int64 = 0
    var generation: UInt64 = 0
    var outbound: AsyncStream<Etcdserverpb_WatchRequest>.Continuation?
    var isShutDown = false
    var streamsOpened = 0
    var wake: CheckedContinuation<Void, Never>?
  }

  private let state = Mutex(State())
  private let logger: Logger
  private let shutdownSignal = ShutdownSignal()
  private let stoppedSignal = ShutdownSignal()

  init(logger: Logger) {
    self.logger = logger
  }

  var streamsOpened: Int { self.state.withLock { $0.streamsOpened } }

  func add(
    range: EtcdKeyRange,
    options: EtcdWatchOptions,
    continuation: AsyncThrowingStream<EtcdWatchBatch, any Error>.Continuation
  ) -> Int64 {
    let (id, wake) = self.state.withLock { state in
      state.nextID += 1
      let id = state.nextID
      var watcher = Watcher(
        range: range,
        options: options,
        nextRevision: options.startRevision,
        continuation: continuation
      )
      if let outbound = state.outbound {
        watcher.stream = state.generation
        outbound.yield(Self.createRequest(id: id, watcher))
      }
      state.watchers[id] = watcher
      defer { state.wake = nil }
      return (id, state.wake)
    }
    wake?.resume()
    return id
  }

  func cancel(_ id: Int64) {
    self.state.withLock { state in
      guard let watcher = state.watchers.removeValue(forKey: id) else { return }
      if let outbound = state.outbound, watcher.stream == state.generation {
        var request = Etcdserverpb_WatchRequest()
        var cancel = Etcdserverpb_WatchCancelRequest()
        cancel.watchID = id
        request.cancelRequest = cancel
        outbound.yield(request)
      }
    }
  }

  func shutdown() {
    let (watchers, wake, outbound) = self.state.withLock { state in
      state.isShutDown = true
      defer {
        state.watchers = [:]
        state.wake = nil
        state.outbound = nil
      }
      return (state.watchers.values.map(\.continuation), state.wake, state.outbound)
    }
    outbound?.finish()
    for continuation in watchers { continuation.finish() }
    wake?.resume()
    self.shutdownSignal.fire()
  }

  func stopped() async {
    await self.stoppedSignal.wait()
  }

  func run(client: EtcdClient) async {
    defer { self.stoppedSignal.fire() }
    await withTaskGroup(of: Void.self) { group in
      group.addTask { await self.loop(client: client) }
      await self.shutdownSignal.wait()
      group.cancelAll()
    }
  }

  private static func createRequest(id: Int64, _ watcher: Watcher) -> Etcdserverpb_WatchRequest {
    var create = Etcdserverpb_WatchCreateRequest()
    create.key = Data(watcher.range.key)
    create.rangeEnd = Data(watcher.range.rangeEnd)
    create.startRevision = watcher.nextRevision
    create.prevKv = watcher.options.previousValues
    create.progressNotify = watcher.options.progressNotify
    create.watchID = id
    if watcher.options.filterPuts { create.filters.append(.noput) }
    if watcher.options.filterDeletes { create.filters.append(.nodelete) }
    var request = Etcdserverpb_WatchRequest()
    request.createRequest = create
    return request
  }

  private func loop(client: EtcdClient) async {
    var failures = 0
    while !Task.isCancelled {
      guard await self.waitForWatchers() else { return }
      let (index, endpoint) = client.pickEndpoint()
      let (outboundStream, outbound) = AsyncStream.makeStream(of: Etcdserverpb_WatchRequest.self)
      let generation: UInt64? = self.state.withLock { state in
        if state.isShutDown { return nil }
        state.generation += 1
        state.streamsOpened += 1
        state.outbound = outbound
        for (id, var watcher) in state.watchers.sorted(by: { $0.key < $1.key }) {
          watcher.stream = state.generation
          outbound.yield(Self.createRequest(id: id, watcher))
          state.watchers[id] = watcher
        }
        return state.generation
      }
      guard let generation else { return }
      let received = Flag()
      do {
        var metadata = try await client.auth.metadata(for: client)
        // etcd's require-leader flag: a member cut off from its cluster ends the stream
        // instead of holding the watches silently.
        metadata.addString("true", forKey: "hasleader")
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
        if state.generation == generation { state.outbound = nil }
      }
      outbound.finish()
      failures = received.isSet ? 0 : failures + 1
      client.failover(from: index)
      do {
        try await Task.sleep(for: client.configuration.retryBackoff.delay(attempt: failures))
      } catch {
        return
      }
    }
  }

  private func waitForWatchers() async -> Bool {
    while true {
      if Task.isCancelled { return false }
      let ready: Bool? = self.state.withLock { state in
        if state.isShutDown { return false }
        return state.watchers.isEmpty ? nil : true
      }
      if let ready { return ready }
      await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        let resumeNow = self.state.withLock { state in
          if state.isShutDown || !state.watchers.isEmpty { return true }
          state.wake = continuation
          return false
        }
        if resumeNow { continuation.resume() }
      }
    }
  }

  private enum Action {
    case none
    case deliver(AsyncThrowingStream<EtcdWatchBatch, any Error>.Continuation, EtcdWatchBatch)
    case fail(AsyncThrowingStream<EtcdWatchBatch, any Error>.Continuation, EtcdError)
    case verifyRevision(expected: Int64, seen: Int64)
  }

  private func handle(
    _ response: Etcdserverpb_WatchResponse,
    generation: UInt64,
    client: EtcdClient
  ) async throws {
    let id = response.watchID
    let header = EtcdResponseHeader(response.header)
    var action = self.state.withLock { state -> Action in
      guard var watcher = state.watchers[id], watcher.stream == generation else { return .none }
      if response.canceled {
        state.watchers[id] = nil
        if response.compactRevision > 0 {
          return .fail(
            watcher.continuation,
            EtcdError(
              code: .compacted,
              message:
                "the watch's start revision \(watcher.nextRevision) has been compacted; re-read the current state and watch from its revision + 1",
              compactRevision: response.compactRevision
            )
          )
        }
        let reason = response.cancelReason.isEmpty ? "no reason given" : response.cancelReason
        let code: EtcdError.Code =
          reason.contains("permission denied") ? .permissionDenied : .canceled
        return .fail(
          watcher.continuation,
          EtcdError(code: code, message: "etcd canceled the watch: \(reason)")
        )
      }
      if response.created {
        if watcher.nextRevision == 0 {
          watcher.nextRevision = header.revision + 1
          state.watchers[id] = watcher
          return .none
        }
        // A resumed watch whose next revision lies beyond the store's current one would wait
        // silently forever: the store has been replaced. Check it with a linearizable read
        // first, since a lagging member can be a little behind.
        if header.revision + 1 < watcher.nextRevision {
          return .verifyRevision(expected: watcher.nextRevision - 1, seen: header.revision)
        }
        return .none
      }
      let events = response.events.map { event in
        EtcdWatchEvent(
          kind: event.type == .delete ? .delete : .put,
          kv: EtcdKeyValue(event.kv),
          previous: event.hasPrevKv ? EtcdKeyValue(event.prevKv) : nil
        )
      }
      if let last = events.last {
        watcher.nextRevision = max(watcher.nextRevision, last.kv.modRevision + 1)
      } else {
        // etcd sends progress notifications only to watchers that have caught up.
        watcher.nextRevision = max(watcher.nextRevision, header.revision + 1)
      }
      state.watchers[id] = watcher
      return .deliver(watcher.continuation, EtcdWatchBatch(header: header, events: events))
    }

    if case .verifyRevision(let expected, let seen) = action {
      var options = EtcdGetOptions()
      options.countOnly = true
      let current = try await client.get(.key("\u{0}"), options: options).header.revision
      action = .none
      if current < expected {
        self.logger.warning(
          "etcd store replaced: revision went backwards",
          metadata: [
            "etcd.revision": "\(current)", "etcd.expected": "\(expected)", "etcd.seen": "\(seen)",
          ]
        )
        action = self.state.withLock { state in
          guard let watcher = state.watchers.removeValue(forKey: id) else { return .none }
          if let outbound = state.outbound {
            var request = Etcdserverpb_WatchRequest()
            var cancel = Etcdserverpb_WatchCancelRequest()
            cancel.watchID = id
            request.cancelRequest = cancel
            outbound.yield(request)
          }
          return .fail(
            watcher.continuation,
            EtcdError(
              code: .storeReplaced,
              message:
                "etcd's revision is \(current) but this watch had seen revision \(expected): the store was wiped or restored from a backup; re-read the current state"
            )
          )
        }
      }
    }

    switch action {
    case .deliver(let continuation, let batch):
      continuation.yield(batch)
    case .fail(let continuation, let error):
      continuation.finish(throwing: error)
    case .none, .verifyRevision:
      break
    }
  }
}

/// A flag set from a `@Sendable` closure.
final class Flag: Sendable {
  private let value = Atomic<Bool>(false)
  func set() { self.value.store(true, ordering: .relaxed) }
  var isSet: Bool { self.value.load(ordering: .relaxed) }
}

import Etcd
import EtcdHarness
import Foundation
import RegistryPrimitives
import RegistryTesting
import Synchronization
import Testing

/// Collects a watch's batches in the background, for waiting with a deadline.
final class BatchRecorder: Sendable {
  private let task: Task<Void, Never>

  init(_ watch: EtcdWatch) {
    let box = Box()
    self.task = Task {
      do {
        for try await batch in watch { box.append(batch) }
        box.end(nil)
      } catch {
        box.end(error)
      }
    }
    self.box = box
  }

  private let box: Box

  final class Box: Sendable {
    let state = Locked<(batches: [EtcdWatchBatch], error: (any Error)?, ended: Bool)>(
      ([], nil, false)
    )
    func append(_ batch: EtcdWatchBatch) { self.state.withLock { $0.batches.append(batch) } }
    func end(_ error: (any Error)?) {
      self.state.withLock {
        $0.ended = true
        $0.error = error
      }
    }
  }

  var batches: [EtcdWatchBatch] { self.box.state.withLock { $0.batches } }
  var events: [EtcdWatchEvent] { self.batches.flatMap(\.events) }
  var error: (any Error)? { self.box.state.withLock { $0.error } }
  var ended: Bool { self.box.state.withLock { $0.ended } }

  func waitForEvents(_ count: Int, within timeout: Duration = .seconds(10)) async throws {
    try await waitUntil("\(count) watch events arrive (have \(self.events.count))", within: timeout)
    {
      self.events.count >= count
    }
  }

  func waitForEnd(within timeout: Duration = .seconds(10)) async throws {
    try await waitUntil("the watch ends", within: timeout) { self.ended }
  }

  func cancel() { self.task.cancel() }
  deinit { self.task.cancel() }
}

@Suite("EtcdClient leases and watches", .timeLimit(.minutes(3)))
struct EtcdLeaseWatchTests {
  @Test("grant, time to live with keys, revoke deletes the keys")
  func leaseLifecycle() async throws {
    try await withEtcdClient { etcd, _ in
      let p = uniquePrefix()
      let lease = try await etcd.grantLease(ttl: .seconds(30))
      #expect(lease.ttl == .seconds(30))
      try await etcd.put(p + "a", value: "1", lease: lease.id)
      try await etcd.put(p + "b", value: "2", lease: lease.id)
      let info = try await etcd.leaseInfo(lease.id, keys: true)
      #expect(info.grantedTTL == .seconds(30))
      #expect(info.ttl.map { $0 > .zero && $0 <= .seconds(30) } == true)
      #expect(Set(info.keys.map { String(decoding: $0, as: UTF8.self) }) == [p + "a", p + "b"])
      try await etcd.revokeLease(lease.id)
      #expect(try await etcd.get(.prefix(p)).kvs.isEmpty)
      #expect(try await etcd.leaseInfo(lease.id).ttl == nil, "a revoked lease has no time left")
      await expectEtcdError(.leaseNotFound) { try await etcd.revokeLease(lease.id) }
    }
  }

  @Test("a lease not kept alive expires and its keys vanish; keep-alive holds a 2 s lease for 10 s")
  func keepAlive() async throws {
    try await withEtcdClient { etcd, _ in
      let p = uniquePrefix()
      let kept = try await etcd.grantLease(ttl: .seconds(2))
      // Renewals start at once, before anything else can delay them on a loaded machine.
      let renewals = Locked<[ContinuousClock.Instant]>([])
      let keeper = Task {
        for await event in etcd.keepAlive(kept) {
          if case .renewed = event { renewals.withLock { $0.append(.now) } }
        }
      }
      defer { keeper.cancel() }
      try await etcd.put(p + "kept", value: "1", lease: kept.id)
      let dropped = try await etcd.grantLease(ttl: .seconds(2))
      do {
        try await etcd.put(p + "dropped", value: "1", lease: dropped.id)
      } catch let error as EtcdError where error.code == .leaseNotFound {
        // A machine slow enough to let 2 s pass between grant and put: the lease is gone,
        // which is what this half of the test is about.
      }
      try await waitUntil("the unrenewed lease's key is gone", within: .seconds(6)) {
        try await etcd.get(p + "dropped") == nil
      }
      // Keep going until 10 s have passed since the grant: the kept key must still be there.
      let end = ContinuousClock.now + .seconds(8)
      while ContinuousClock.now < end {
        #expect(try await etcd.get(p + "kept") != nil)
        try await Task.sleep(for: .milliseconds(500))
      }
      #expect(try await etcd.get(p + "kept") != nil)
      // Catches a renewal period other than TTL/3 (TTL/2 gives 1 s here, TTL/4 0.5 s): the
      // median interval between renewals is measured, not a count.
      let times = renewals.withLock { $0 }
      let intervals = zip(times.dropFirst(), times).map { $0 - $1 }.sorted()
      try #require(intervals.count >= 8, "renewals: \(times.count)")
      let median = intervals[intervals.count / 2]
      #expect(
        median > .milliseconds(580) && median < .milliseconds(760),
        "renewed every TTL/3 (667 ms for a 2 s lease); median interval \(median)"
      )
      #expect(etcd.keepAliveStreamsOpened == 1)
    }
  }

  @Test("keep-alive of a revoked lease reports it lost and ends")
  func keepAliveLost() async throws {
    try await withEtcdClient { etcd, _ in
      let lease = try await etcd.grantLease(ttl: .seconds(3))
      let events = Locked<[EtcdLeaseKeepAliveEvent]>([])
      let ended = Locked(false)
      let keeper = Task {
        for await event in etcd.keepAlive(lease) { events.withLock { $0.append(event) } }
        ended.withLock { $0 = true }
      }
      defer { keeper.cancel() }
      try await etcd.revokeLease(lease.id)
      try await waitUntil("the keep-alive reports the lease lost", within: .seconds(5)) {
        ended.withLock { $0 }
      }
      #expect(events.withLock { $0.last } == .lost)
    }
  }

  @Test("watch: puts and deletes in order, previous values, filters, cancel")
  func watchBasics() async throws {
    try await withEtcdClient { etcd, _ in
      let p = uniquePrefix()
      var options = EtcdWatchOptions()
      options.previousValues = true
      let all = BatchRecorder(etcd.watch(.prefix(p), options: options))
      var noDeletes = EtcdWatchOptions()
      noDeletes.filterDeletes = true
      let putsOnly = BatchRecorder(etcd.watch(.prefix(p), options: noDeletes))
      // A watch is live once etcd has created it; a put to a sentinel key proves it.
      try await waitUntil("both watches are live", within: .seconds(5)) {
        try await etcd.put(p + "sentinel", value: "x")
        return !all.events.isEmpty && !putsOnly.events.isEmpty
      }
      try await etcd.put(p + "a", value: "1")
      try await etcd.put(p + "a", value: "2")
      try await etcd.delete(.key(p + "a"))
      // Late sentinel events may still arrive; look at the key under test only.
      try await waitUntil("the three changes of the key arrive") {
        all.events.filter { $0.kv.keyString == p + "a" }.count >= 3
      }
      let events = all.events.filter { $0.kv.keyString == p + "a" }
      #expect(events.map(\.kind) == [.put, .put, .delete])
      #expect(events.map(\.kv.valueString) == ["1", "2", ""])
      #expect(events[1].previous?.valueString == "1")
      #expect(events[0].kv.modRevision < events[1].kv.modRevision)
      try await waitUntil("the filtered watch sees the two puts") {
        putsOnly.events.filter { $0.kv.keyString == p + "a" }.count == 2
      }
      #expect(putsOnly.events.allSatisfy { $0.kind == .put })
      all.cancel()
      try await all.waitForEnd()
      #expect(all.error == nil)
    }
  }

  @Test("watch from an old revision replays history; progress notifications carry the revision")
  func watchHistory() async throws {
    try await withEtcdClient(
      cluster: .defaults {
        $0.extraArguments = ["--experimental-watch-progress-notify-interval=500ms"]
      }
    ) { etcd, _ in
      let p = uniquePrefix()
      let first = try await etcd.put(p + "k", value: "1")
      try await etcd.put(p + "k", value: "2")
      try await etcd.put(p + "k", value: "3")
      var options = EtcdWatchOptions()
      options.startRevision = first.header.revision
      options.progressNotify = true
      let recorder = BatchRecorder(etcd.watch(.prefix(p), options: options))
      try await recorder.waitForEvents(3)
      #expect(recorder.events.map(\.kv.valueString) == ["1", "2", "3"])
      try await waitUntil("a progress notification arrives", within: .seconds(10)) {
        recorder.batches.contains { $0.isProgressNotification }
      }
      let progress = try #require(recorder.batches.first { $0.isProgressNotification })
      #expect(progress.header.revision >= first.header.revision + 2)
    }
  }

  @Test("a watch from a compacted revision ends with a typed error naming the compact revision")
  func watchCompacted() async throws {
    try await withEtcdClient { etcd, _ in
      let p = uniquePrefix()
      let first = try await etcd.put(p + "k", value: "1")
      let last = try await etcd.put(p + "k", value: "2")
      try await etcd.compact(revision: last.header.revision)
      var options = EtcdWatchOptions()
      options.startRevision = first.header.revision
      let recorder = BatchRecorder(etcd.watch(.prefix(p), options: options))
      try await recorder.waitForEnd()
      let error = try #require(recorder.error as? EtcdError)
      #expect(error.code == .compacted)
      #expect(error.compactRevision == last.header.revision)
      var old = EtcdGetOptions()
      old.revision = first.header.revision
      await expectEtcdError(.compacted) { try await etcd.get(.key(p + "k"), options: old) }
    }
  }
}

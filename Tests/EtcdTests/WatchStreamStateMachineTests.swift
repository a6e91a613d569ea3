import Foundation
import Testing

@testable import Etcd

/// Drives the watch stream's protocol event by event, as etcd and its grpc-proxy answer it.
@Suite("WatchStreamStateMachine")
struct WatchStreamStateMachineTests {
  typealias Machine = WatchStreamStateMachine

  // MARK: - Creating watches

  @Test("create requests carry no watch id of ours and go out one at a time, oldest first")
  func createsOneAtATime() throws {
    var machine = Machine()
    let (first, none) = machine.add(.prefix("/a/"), options: EtcdWatchOptions())
    #expect(none.isEmpty, "no stream yet: nothing to send")
    let (second, _) = machine.add(.prefix("/b/"), options: EtcdWatchOptions())

    let (generation, opened) = machine.streamOpened()
    let create = try #require(Self.creates(opened).first)
    #expect(Self.creates(opened).count == 1, "only one create outstanding")
    #expect(create.key == Data("/a/".utf8))
    // A client-chosen id is what etcd's grpc-proxy ignores (it numbers watches from 0).
    #expect(create.watchID == 0)

    let next = machine.received(Self.created(id: 7, revision: 10), on: generation)
    #expect(Self.creates(next).map(\.key) == [Data("/b/".utf8)])
    _ = machine.received(Self.created(id: 3, revision: 10), on: generation)
    #expect(machine.watchers[first]?.phase == .active(serverID: 7))
    #expect(machine.watchers[second]?.phase == .active(serverID: 3))
    #expect(machine.watchers[first]?.nextRevision == 11)
  }

  @Test("behind a grpc-proxy (ids from 0) each watch gets its own events")
  func proxyNumbering() {
    var machine = Machine()
    let (repair, _) = machine.add(.prefix("/micro/"), options: EtcdWatchOptions())
    let (generation, _) = machine.streamOpened()
    _ = machine.received(Self.created(id: 0, revision: 5), on: generation)
    let (service, _) = machine.add(.prefix("/micro/user/"), options: EtcdWatchOptions())
    _ = machine.received(Self.created(id: 1, revision: 5), on: generation)

    // Breaks if responses are matched by an id the client chose (1 and 2 here).
    let toRepair = machine.received(
      Self.events(id: 0, [Self.delete("/micro/x/1", rev: 6)]),
      on: generation
    )
    let toService = machine.received(
      Self.events(id: 1, [Self.put("/micro/user/a", rev: 7)]),
      on: generation
    )
    #expect(Self.deliveries(toRepair).map(\.0) == [repair])
    #expect(Self.deliveries(toRepair).first?.1.events.first?.kind == .delete)
    #expect(Self.deliveries(toService).map(\.0) == [service])
  }

  @Test("a watch cancelled while its create is outstanding is cancelled on etcd once created")
  func cancelWhileCreating() throws {
    var machine = Machine()
    let (first, _) = machine.add(.prefix("/a/"), options: EtcdWatchOptions())
    let (second, _) = machine.add(.prefix("/b/"), options: EtcdWatchOptions())
    let (generation, _) = machine.streamOpened()
    #expect(machine.cancel(first).isEmpty, "etcd has not named the watch yet")

    let actions = machine.received(Self.created(id: 4, revision: 9), on: generation)
    #expect(Self.cancels(actions) == [4])
    #expect(Self.creates(actions).map(\.key) == [Data("/b/".utf8)])
    _ = machine.received(Self.created(id: 5, revision: 9), on: generation)
    #expect(machine.watchers[second]?.phase == .active(serverID: 5))
    #expect(machine.watchers[first] == nil)
  }

  @Test("cancelling an active watch sends etcd's id; a queued one sends nothing")
  func cancelActiveAndQueued() {
    var machine = Machine()
    let (first, _) = machine.add(.prefix("/a/"), options: EtcdWatchOptions())
    let (second, _) = machine.add(.prefix("/b/"), options: EtcdWatchOptions())
    let (generation, _) = machine.streamOpened()
    _ = machine.received(Self.created(id: 12, revision: 1), on: generation)
    #expect(Self.cancels(machine.cancel(first)) == [12])
    // Events for the cancelled id that were already in flight go nowhere.
    #expect(
      machine.received(Self.events(id: 12, [Self.put("/a/x", rev: 2)]), on: generation).isEmpty
    )
    _ = machine.received(Self.created(id: 13, revision: 1), on: generation)
    machine.streamClosed(generation)
    #expect(machine.cancel(second).isEmpty, "no stream: etcd forgets the watch with it")
    #expect(!machine.wantsStream)
  }

  // MARK: - Reconnects

  @Test("a new stream resumes each watch after the last revision it delivered, oldest first")
  func resumesAfterReconnect() throws {
    var machine = Machine()
    var options = EtcdWatchOptions()
    options.filterPuts = true
    options.previousValues = true
    let (first, _) = machine.add(.prefix("/a/"), options: options)
    let (second, _) = machine.add(.prefix("/b/"), options: EtcdWatchOptions())
    let (one, _) = machine.streamOpened()
    _ = machine.received(Self.created(id: 0, revision: 20), on: one)
    _ = machine.received(Self.created(id: 1, revision: 20), on: one)
    _ = machine.received(
      Self.events(id: 0, [Self.delete("/a/1", rev: 25), Self.delete("/a/2", rev: 27)]),
      on: one
    )
    _ = machine.received(Self.progress(id: 1, revision: 30), on: one)
    machine.streamClosed(one)
    #expect(machine.watchers[first]?.phase == .queued)

    let (two, reopened) = machine.streamOpened()
    let create = try #require(Self.creates(reopened).first)
    #expect(create.key == Data("/a/".utf8))
    #expect(create.startRevision == 28, "the event at 27 was delivered; 28 is next")
    #expect(create.filters == [.noput])
    #expect(create.prevKv)
    let next = machine.received(Self.created(id: 0, revision: 31), on: two)
    #expect(Self.creates(next).first?.startRevision == 31, "progress up to 30 was delivered")
    _ = machine.received(Self.created(id: 1, revision: 31), on: two)
    #expect(machine.watchers[second]?.phase == .active(serverID: 1))
    // Events of the old stream that arrive late are ignored.
    #expect(machine.received(Self.events(id: 0, [Self.delete("/a/3", rev: 29)]), on: one).isEmpty)
  }

  @Test("a create answer on a stream that closed meanwhile is not matched")
  func staleCreated() {
    var machine = Machine()
    let (id, _) = machine.add(.prefix("/a/"), options: EtcdWatchOptions())
    let (one, _) = machine.streamOpened()
    machine.streamClosed(one)
    #expect(machine.received(Self.created(id: 0, revision: 3), on: one).isEmpty)
    let (two, actions) = machine.streamOpened()
    #expect(Self.creates(actions).count == 1)
    _ = machine.received(Self.created(id: 9, revision: 3), on: two)
    #expect(machine.watchers[id]?.phase == .active(serverID: 9))
  }

  // MARK: - Cancellation by etcd

  @Test("a compaction cancel after created fails the watch with the compact revision")
  func compactedAfterCreated() throws {
    var machine = Machine()
    var options = EtcdWatchOptions()
    options.startRevision = 2
    let (id, _) = machine.add(.prefix("/a/"), options: options)
    let (generation, _) = machine.streamOpened()
    _ = machine.received(Self.created(id: 0, revision: 50), on: generation)
    var cancel = Etcdserverpb_WatchResponse()
    cancel.watchID = 0
    cancel.canceled = true
    cancel.compactRevision = 40
    let actions = machine.received(cancel, on: generation)
    // Breaks a watch behind grpc-proxy: the proxy keeps the cancelled watch attached to its
    // dead upstream watch until the client cancels it, and attaches the next one there too.
    #expect(Self.cancels(actions) == [0])
    let failure = try #require(Self.failures(actions).first)
    #expect(failure.0 == id)
    #expect(failure.1.code == .compacted)
    #expect(failure.1.compactRevision == 40)
    #expect(machine.watchers[id] == nil)
  }

  @Test(
    "a creation refused for permission is tried once more on a stream with a new token; refused again, it fails and the next create goes out"
  )
  func refusedCreation() throws {
    var machine = Machine()
    let (denied, _) = machine.add(.prefix("/secret/"), options: EtcdWatchOptions())
    let (allowed, _) = machine.add(.prefix("/open/"), options: EtcdWatchOptions())
    var (generation, _) = machine.streamOpened()
    var refusal = Self.created(id: 0, revision: 8)
    refusal.canceled = true
    refusal.cancelReason = "etcdserver: permission denied"
    // The first refusal may be the stream's expired token: reopen, fail nothing.
    var actions = machine.received(refusal, on: generation)
    #expect(actions == [.renewTokenAndReopen])
    #expect(machine.watchers[denied]?.phase == .queued)
    machine.streamClosed(generation)
    (generation, actions) = machine.streamOpened()
    #expect(Self.creates(actions).map(\.key) == [Data("/secret/".utf8)])
    // Refused again with a new token: the user may not watch it.
    actions = machine.received(refusal, on: generation)
    #expect(Self.failures(actions).map(\.0) == [denied])
    #expect(Self.failures(actions).first?.1.code == .permissionDenied)
    #expect(Self.creates(actions).map(\.key) == [Data("/open/".utf8)])
    _ = machine.received(Self.created(id: 0, revision: 8), on: generation)
    #expect(machine.watchers[allowed]?.phase == .active(serverID: 0))
  }

  @Test(
    "an expired token (etcd: invalid auth token) is renewed; a watch allowed again is renewed once more later"
  )
  func refusalResetsOnCreation() throws {
    var machine = Machine()
    let (id, _) = machine.add(.prefix("/k/"), options: EtcdWatchOptions())
    var (generation, _) = machine.streamOpened()
    var refusal = Self.created(id: -1, revision: 8)
    refusal.canceled = true
    refusal.cancelReason = "etcdserver: invalid auth token"
    #expect(machine.received(refusal, on: generation) == [.renewTokenAndReopen])
    machine.streamClosed(generation)
    (generation, _) = machine.streamOpened()
    _ = machine.received(Self.created(id: 3, revision: 9), on: generation)
    #expect(machine.watchers[id]?.phase == .active(serverID: 3))
    // Much later the stream breaks and the token has expired again: one more renewal.
    machine.streamClosed(generation)
    (generation, _) = machine.streamOpened()
    #expect(machine.received(refusal, on: generation) == [.renewTokenAndReopen])
    // And a second refusal in a row ends it, saying why.
    machine.streamClosed(generation)
    (generation, _) = machine.streamOpened()
    let actions = machine.received(refusal, on: generation)
    #expect(Self.failures(actions).map(\.0) == [id])
    #expect(Self.failures(actions).first?.1.code == .authFailed)
  }

  @Test("a compacted start revision is not retried with a new token")
  func compactedNotRetried() throws {
    var machine = Machine()
    var options = EtcdWatchOptions()
    options.startRevision = 5
    let (id, _) = machine.add(.prefix("/k/"), options: options)
    let (generation, _) = machine.streamOpened()
    var refusal = Self.created(id: -1, revision: 50)
    refusal.canceled = true
    refusal.compactRevision = 40
    let actions = machine.received(refusal, on: generation)
    #expect(Self.failures(actions).map(\.0) == [id])
    #expect(!actions.contains(.renewTokenAndReopen))
  }

  // MARK: - Replaced store

  @Test("a watch resumed beyond etcd's revision asks for a check, and fails only if it went back")
  func replacedStore() throws {
    var machine = Machine()
    let (id, _) = machine.add(.prefix("/a/"), options: EtcdWatchOptions())
    let (one, _) = machine.streamOpened()
    _ = machine.received(Self.created(id: 0, revision: 100), on: one)
    _ = machine.received(Self.events(id: 0, [Self.put("/a/x", rev: 120)]), on: one)
    machine.streamClosed(one)

    let (two, _) = machine.streamOpened()
    let actions = machine.received(Self.created(id: 0, revision: 3), on: two)
    #expect(actions == [.checkRevision(id, expected: 120, seen: 3)])
    // A lagging member: the linearizable read sees the revision; nothing happens.
    #expect(machine.revisionChecked(id, current: 121).isEmpty)
    // A replaced store: the watch fails and is cancelled on etcd.
    let replaced = machine.revisionChecked(id, current: 3)
    #expect(Self.cancels(replaced) == [0])
    #expect(Self.failures(replaced).first?.1.code == .storeReplaced)
    #expect(machine.watchers[id] == nil)
  }

  @Test("shutdown ends every watch and wants no stream")
  func shutdown() {
    var machine = Machine()
    let (a, _) = machine.add(.prefix("/a/"), options: EtcdWatchOptions())
    let (b, _) = machine.add(.prefix("/b/"), options: EtcdWatchOptions())
    #expect(machine.wantsStream)
    #expect(machine.shutdown() == [a, b])
    #expect(!machine.wantsStream)
    #expect(machine.isShutDown)
  }

  // MARK: - Helpers

  static func created(id: Int64, revision: Int64) -> Etcdserverpb_WatchResponse {
    var response = Etcdserverpb_WatchResponse()
    response.watchID = id
    response.created = true
    response.header.revision = revision
    return response
  }

  static func progress(id: Int64, revision: Int64) -> Etcdserverpb_WatchResponse {
    var response = Etcdserverpb_WatchResponse()
    response.watchID = id
    response.header.revision = revision
    return response
  }

  static func events(id: Int64, _ events: [Etcdserverpb_Event]) -> Etcdserverpb_WatchResponse {
    var response = Etcdserverpb_WatchResponse()
    response.watchID = id
    response.events = events
    response.header.revision = events.last?.kv.modRevision ?? 0
    return response
  }

  static func put(_ key: String, rev: Int64) -> Etcdserverpb_Event {
    var event = Etcdserverpb_Event()
    event.type = .put
    event.kv.key = Data(key.utf8)
    event.kv.value = Data("v".utf8)
    event.kv.modRevision = rev
    return event
  }

  static func delete(_ key: String, rev: Int64) -> Etcdserverpb_Event {
    var event = Etcdserverpb_Event()
    event.type = .delete
    event.kv.key = Data(key.utf8)
    event.kv.modRevision = rev
    return event
  }

  static func creates(_ actions: [Machine.Action]) -> [Etcdserverpb_WatchCreateRequest] {
    actions.compactMap {
      if case .send(let request) = $0, case .createRequest(let create)? = request.requestUnion {
        return create
      }
      return nil
    }
  }

  static func cancels(_ actions: [Machine.Action]) -> [Int64] {
    actions.compactMap {
      if case .send(let request) = $0, case .cancelRequest(let cancel)? = request.requestUnion {
        return cancel.watchID
      }
      return nil
    }
  }

  static func deliveries(_ actions: [Machine.Action]) -> [(Machine.WatchID, EtcdWatchBatch)] {
    actions.compactMap {
      if case .deliver(let id, let batch) = $0 { return (id, batch) }
      return nil
    }
  }

  static func failures(_ actions: [Machine.Action]) -> [(Machine.WatchID, EtcdError)] {
    actions.compactMap {
      if case .fail(let id, let error) = $0 { return (id, error) }
      return nil
    }
  }
}

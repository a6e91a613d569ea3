import struct Foundation.Data

/// The protocol of a client's one multiplexed etcd `Watch` stream, as a value that takes events
/// and returns actions; ``WatchMultiplexer`` performs the actions.
///
/// Watches are known locally by ids of the client's own. etcd names each watch on a stream by
/// an id it assigns in the `created` response; the client never chooses them. etcd 3.4 accepts
/// client-chosen ids, but its grpc-proxy ignores them and numbers watches from 0 per stream, so
/// a client that relied on its own ids mixed up (or silently lost) every watch behind a proxy.
/// Created responses are matched to create requests by order instead, with at most one create
/// request outstanding (etcd's own Go client does the same): a proxy may answer creates on
/// different ranges in any order when several are in flight.
///
/// Each watch resumes from the revision after the last one it delivered whenever the stream is
/// reopened, so nothing is lost or repeated across reconnects.
struct WatchStreamStateMachine {
  typealias WatchID = UInt64

  struct Watcher: Equatable {
    var range: EtcdKeyRange
    var options: EtcdWatchOptions
    /// The next revision to deliver; 0 until etcd has told us the creation revision.
    var nextRevision: Int64
    var phase: Phase
    /// Refused over authentication once, and waiting to be created again on a stream opened
    /// with a fresh auth token; a second refusal is final.
    var deniedOnce = false
  }

  enum Phase: Equatable {
    /// Waiting for its create request to go out (on this stream, or on the next one).
    case queued
    /// Its create request is the one outstanding.
    case creating
    /// Created: etcd's id for it on the current stream.
    case active(serverID: Int64)
  }

  enum Action: Equatable {
    /// Write this request on the current stream.
    case send(Etcdserverpb_WatchRequest)
    /// Hand these events (or this progress notification) to the watch's iterator.
    case deliver(WatchID, EtcdWatchBatch)
    /// End the watch's iterator with this error; the watch is gone.
    case fail(WatchID, EtcdError)
    /// The watch resumed at a revision beyond etcd's current one: check with a linearizable
    /// read whether the store was replaced, then report ``revisionChecked(_:current:)``.
    case checkRevision(WatchID, expected: Int64, seen: Int64)
    /// A create was refused over authentication: etcd checks a watch with the token the stream
    /// was opened with, which may have expired since (etcd's simple tokens live
    /// `--auth-token-ttl` of disuse). Drop the cached token and reopen the stream; every watch
    /// resumes on the new one.
    case renewTokenAndReopen
  }

  private(set) var watchers: [WatchID: Watcher] = [:]
  private var nextID: WatchID = 0
  /// Local ids in the order their create requests go out.
  private var queue: [WatchID] = []
  /// The watch whose create request is outstanding; it stays set when that watch is cancelled
  /// meanwhile, so the `created` answer can still be matched (and cancelled on etcd).
  private var creating: WatchID?
  private var byServerID: [Int64: WatchID] = [:]
  /// The current stream's generation, while one is open.
  private(set) var openStream: UInt64?
  private var generation: UInt64 = 0
  private(set) var isShutDown = false

  /// Whether a stream should be open: there are watches and the client runs.
  var wantsStream: Bool { !self.isShutDown && !self.watchers.isEmpty }

  // MARK: - Watches

  /// Adds a watch; its create request goes out now if the stream is open and idle.
  mutating func add(_ range: EtcdKeyRange, options: EtcdWatchOptions) -> (WatchID, [Action]) {
    self.nextID += 1
    let id = self.nextID
    self.watchers[id] = Watcher(
      range: range,
      options: options,
      nextRevision: options.startRevision,
      phase: .queued
    )
    self.queue.append(id)
    return (id, self.sendNextCreate())
  }

  /// Removes a watch (its iterator ended); etcd is told when it knows the watch.
  mutating func cancel(_ id: WatchID) -> [Action] {
    guard let watcher = self.watchers.removeValue(forKey: id) else { return [] }
    switch watcher.phase {
    case .queued:
      self.queue.removeAll { $0 == id }
      return []
    case .creating:
      // Matched (and cancelled on etcd) when its `created` answer arrives.
      return []
    case .active(let serverID):
      self.byServerID[serverID] = nil
      return self.openStream == nil ? [] : [.send(Self.cancelRequest(serverID))]
    }
  }

  /// Ends every watch; returns the ids whose iterators are to be finished.
  mutating func shutdown() -> [WatchID] {
    self.isShutDown = true
    defer {
      self.watchers = [:]
      self.queue = []
      self.byServerID = [:]
      self.creating = nil
      self.openStream = nil
    }
    return self.watchers.keys.sorted()
  }

  // MARK: - The stream

  /// A new stream is open: every watch is created on it again, oldest first, from its next
  /// revision. Returns the stream's generation, for ``streamClosed(_:)`` and ``received(_:on:)``.
  mutating func streamOpened() -> (UInt64, [Action]) {
    self.generation += 1
    self.openStream = self.generation
    self.resetToQueued()
    return (self.generation, self.sendNextCreate())
  }

  /// The stream `generation` ended (failed, or etcd closed it).
  mutating func streamClosed(_ generation: UInt64) {
    guard self.openStream == generation else { return }
    self.openStream = nil
    self.resetToQueued()
  }

  /// A response arrived on stream `generation`.
  mutating func received(_ response: Etcdserverpb_WatchResponse, on generation: UInt64) -> [Action]
  {
    guard self.openStream == generation else { return [] }
    let header = EtcdResponseHeader(response.header)
    if response.created {
      return self.created(response, header: header)
    }
    guard let id = self.byServerID[response.watchID], var watcher = self.watchers[id] else {
      // A watch cancelled meanwhile, or a stream-wide progress answer (id -1).
      return []
    }
    if response.canceled {
      self.byServerID[response.watchID] = nil
      self.watchers[id] = nil
      // Cancelled on our side too: etcd has forgotten the watch already and ignores this, but
      // etcd's grpc-proxy keeps a watch that its upstream cancelled (compaction) attached to
      // the dead upstream watch, and would attach the next watch of the same range to it.
      return [
        .send(Self.cancelRequest(response.watchID)), .fail(id, Self.cancelError(response, watcher)),
      ]
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
    self.watchers[id] = watcher
    return [.deliver(id, EtcdWatchBatch(header: header, events: events))]
  }

  /// The answer to a ``Action/checkRevision(_:expected:seen:)``: etcd's current revision.
  mutating func revisionChecked(_ id: WatchID, current: Int64) -> [Action] {
    guard let watcher = self.watchers[id], current < watcher.nextRevision - 1 else { return [] }
    let expected = watcher.nextRevision - 1
    var actions: [Action] = []
    if case .active(let serverID) = watcher.phase {
      self.byServerID[serverID] = nil
      if self.openStream != nil { actions.append(.send(Self.cancelRequest(serverID))) }
    }
    self.watchers[id] = nil
    self.queue.removeAll { $0 == id }
    actions.append(
      .fail(
        id,
        EtcdError(
          code: .storeReplaced,
          message:
            "etcd's revision is \(current) but this watch had seen revision \(expected): the store was wiped or restored from a backup; re-read the current state"
        )
      )
    )
    return actions
  }

  // MARK: - Internals

  private mutating func created(
    _ response: Etcdserverpb_WatchResponse,
    header: EtcdResponseHeader
  ) -> [Action] {
    // Answers come in the order of the requests, and only one is outstanding.
    guard let id = self.creating else { return [] }
    self.creating = nil
    var actions: [Action] = []
    if var watcher = self.watchers[id] {
      if response.canceled || response.watchID < 0 {
        if Self.isAuthRefusal(response), !watcher.deniedOnce {
          // Possibly the stream's token, not the user's permission: try once more on a stream
          // with a fresh token. Nothing more goes out on this stream.
          watcher.deniedOnce = true
          watcher.phase = .queued
          self.watchers[id] = watcher
          return [.renewTokenAndReopen]
        }
        // Refused at creation: a bad range, no permission, or a compacted start revision.
        self.watchers[id] = nil
        actions.append(.fail(id, Self.cancelError(response, watcher)))
      } else {
        watcher.deniedOnce = false
        watcher.phase = .active(serverID: response.watchID)
        self.byServerID[response.watchID] = id
        if watcher.nextRevision == 0 {
          watcher.nextRevision = header.revision + 1
        } else if header.revision + 1 < watcher.nextRevision {
          // A resumed watch whose next revision lies beyond the store's current one would wait
          // silently forever if the store has been replaced. A lagging member can be a little
          // behind too, so the handler checks with a linearizable read.
          actions.append(
            .checkRevision(id, expected: watcher.nextRevision - 1, seen: header.revision)
          )
        }
        self.watchers[id] = watcher
      }
    } else if !response.canceled, response.watchID >= 0 {
      // Cancelled while its create request was outstanding.
      actions.append(.send(Self.cancelRequest(response.watchID)))
    }
    return actions + self.sendNextCreate()
  }

  private mutating func sendNextCreate() -> [Action] {
    guard self.openStream != nil, self.creating == nil else { return [] }
    while !self.queue.isEmpty {
      let id = self.queue.removeFirst()
      guard var watcher = self.watchers[id], watcher.phase == .queued else { continue }
      watcher.phase = .creating
      self.watchers[id] = watcher
      self.creating = id
      return [.send(Self.createRequest(watcher))]
    }
    return []
  }

  private mutating func resetToQueued() {
    self.byServerID = [:]
    self.creating = nil
    self.queue = self.watchers.keys.sorted()
    for id in self.queue { self.watchers[id]?.phase = .queued }
  }

  static func createRequest(_ watcher: Watcher) -> Etcdserverpb_WatchRequest {
    var create = Etcdserverpb_WatchCreateRequest()
    create.key = Data(watcher.range.key)
    create.rangeEnd = Data(watcher.range.rangeEnd)
    create.startRevision = watcher.nextRevision
    create.prevKv = watcher.options.previousValues
    create.progressNotify = watcher.options.progressNotify
    if watcher.options.filterPuts { create.filters.append(.noput) }
    if watcher.options.filterDeletes { create.filters.append(.nodelete) }
    var request = Etcdserverpb_WatchRequest()
    request.createRequest = create
    return request
  }

  static func cancelRequest(_ serverID: Int64) -> Etcdserverpb_WatchRequest {
    var cancel = Etcdserverpb_WatchCancelRequest()
    cancel.watchID = serverID
    var request = Etcdserverpb_WatchRequest()
    request.cancelRequest = cancel
    return request
  }

  private static func cancelError(
    _ response: Etcdserverpb_WatchResponse,
    _ watcher: Watcher
  ) -> EtcdError {
    if response.compactRevision > 0 {
      return EtcdError(
        code: .compacted,
        message:
          "the watch's start revision \(watcher.nextRevision) has been compacted; re-read the current state and watch from its revision + 1",
        compactRevision: response.compactRevision
      )
    }
    let reason = response.cancelReason.isEmpty ? "no reason given" : response.cancelReason
    let code: EtcdError.Code
    if reason.contains("permission denied") {
      code = .permissionDenied
    } else if Self.isAuthRefusal(response) {
      code = .authFailed
    } else {
      code = .canceled
    }
    return EtcdError(code: code, message: "etcd canceled the watch: \(reason)")
  }

  /// Whether etcd refused a watch over the stream's authentication: etcd checks a watch with the
  /// token its stream was opened with (reasons as etcd 3.4 and 3.5 word them: an expired token,
  /// a token older than the last auth change, no user, no permission).
  private static func isAuthRefusal(_ response: Etcdserverpb_WatchResponse) -> Bool {
    guard response.compactRevision == 0 else { return false }
    let reason = response.cancelReason
    return reason.contains("invalid auth token") || reason.contains("revision in header is old")
      || reason.contains("user name is empty") || reason.contains("permission denied")
  }
}

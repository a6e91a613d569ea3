extension EtcdClient {
  /// Watches a key, a prefix or a range.
  ///
  /// Each iteration of the returned sequence is one watch on etcd. Watches of a client share one
  /// stream; when it breaks, the client reconnects (to another endpoint if needed) and resumes
  /// every watch from the revision after the last one it delivered, so no event is lost or
  /// repeated. The iteration ends when the iterating task is cancelled (the watch is then
  /// cancelled on etcd) or the client shuts down, and throws ``EtcdError``:
  /// - `compacted` when the start revision has been compacted: re-read the state, then watch
  ///   from its revision + 1 (``EtcdError/compactRevision`` says the oldest revision kept);
  /// - `storeReplaced` when etcd came back with an older revision than this watch had seen
  ///   (wiped or restored from a backup): re-read the state;
  /// - `permissionDenied` or `canceled` when etcd refuses or cancels the watch.
  ///
  /// ```swift
  /// for try await batch in etcd.watch(.prefix("/micro/user-server/")) {
  ///   for event in batch.events { print(event.kind, event.kv.keyString) }
  /// }
  /// ```
  public func watch(
    _ range: EtcdKeyRange,
    options: EtcdWatchOptions = EtcdWatchOptions()
  ) -> EtcdWatch {
    EtcdWatch { [watches = self.watches, client = self] in
      let (stream, continuation) = AsyncThrowingStream.makeStream(of: EtcdWatchBatch.self)
      do {
        try range.validate("watch")
        guard !client.isShutDown else { throw EtcdError.shutDown() }
        let id = watches.add(range: range, options: options, continuation: continuation)
        continuation.onTermination = { _ in watches.cancel(id) }
      } catch {
        continuation.finish(throwing: error)
      }
      return stream
    }
  }

  /// How many times the client has opened its watch stream (1 while nothing has failed).
  package var watchStreamsOpened: Int { self.watches.streamsOpened }

  /// How many times the client has opened its lease keep-alive stream.
  public var keepAliveStreamsOpened: Int { self.keepAlives.streamsOpened }
}

/// Options of a watch.
public struct EtcdWatchOptions: Hashable, Sendable {
  /// The first revision to deliver; 0 for changes after the watch is created.
  public var startRevision: Int64 = 0
  /// Include each key's previous value in events.
  public var previousValues = false
  /// Ask etcd for periodic progress notifications (empty batches with the current revision)
  /// while nothing changes.
  public var progressNotify = false
  /// Leave out put events.
  public var filterPuts = false
  /// Leave out delete events.
  public var filterDeletes = false

  /// Default options: changes from now on, no previous values, no filters.
  public init() {}
}

/// One change of a watched key.
public struct EtcdWatchEvent: Hashable, Sendable {
  /// Whether the key was written or deleted.
  public enum Kind: Hashable, Sendable {
    /// The key was created or changed.
    case put
    /// The key was deleted (by a delete or by its lease ending).
    case delete
  }

  /// What happened.
  public var kind: Kind
  /// The key-value after the change; for a delete, the key with its deletion revision.
  public var kv: EtcdKeyValue
  /// The key-value before the change, with ``EtcdWatchOptions/previousValues``.
  public var previous: EtcdKeyValue?
}

/// What one watch response carried: events at increasing revisions, or a progress notification.
public struct EtcdWatchBatch: Hashable, Sendable {
  /// The response header; for a progress notification its revision says how far the watch has
  /// seen.
  public var header: EtcdResponseHeader
  /// The changes, in revision order.
  public var events: [EtcdWatchEvent]
  /// Whether this is a progress notification (no events).
  public var isProgressNotification: Bool { self.events.isEmpty }
}

/// The batches of one watch. See ``EtcdClient/watch(_:options:)``.
public struct EtcdWatch: AsyncSequence, Sendable {
  public typealias Element = EtcdWatchBatch
  public typealias Failure = any Error

  let subscribe: @Sendable () -> AsyncThrowingStream<EtcdWatchBatch, any Error>

  public func makeAsyncIterator() -> AsyncThrowingStream<EtcdWatchBatch, any Error>.AsyncIterator {
    self.subscribe().makeAsyncIterator()
  }
}

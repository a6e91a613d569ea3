/// An asynchronous sequence of ``RegistryEvent``s for one service.
///
/// Each iteration is a new subscription: it starts with the complete current set
/// (``RegistryEvent/snapshot(_:)``), then yields every change. It ends (returns `nil`) when the
/// iterating task is cancelled or the registry shuts down, and throws only when the registry
/// cannot go on at all; transient backend failures are retried inside the registry and never
/// show up as an empty set.
///
/// ```swift
/// for try await event in registry.watch("user-server") {
///   print(event)
/// }
/// ```
public struct ServiceWatch: AsyncSequence, Sendable {
  public typealias Element = RegistryEvent
  public typealias Failure = any Error

  private let subscribe: @Sendable () -> AsyncThrowingStream<RegistryEvent, any Error>

  /// Creates a watch whose every iteration calls `subscribe` for a new stream of events.
  ///
  /// Registry implementations use this; the stream's `onTermination` is where a subscription
  /// is torn down.
  public init(subscribe: @escaping @Sendable () -> AsyncThrowingStream<RegistryEvent, any Error>) {
    self.subscribe = subscribe
  }

  public func makeAsyncIterator() -> AsyncIterator {
    AsyncIterator(base: self.subscribe().makeAsyncIterator())
  }

  /// Iterates the events of one subscription.
  public struct AsyncIterator: AsyncIteratorProtocol {
    var base: AsyncThrowingStream<RegistryEvent, any Error>.AsyncIterator

    public mutating func next() async throws -> RegistryEvent? {
      try await self.base.next()
    }

    public mutating func next(
      isolation actor: isolated (any Actor)?
    ) async throws(any Error) -> RegistryEvent? {
      try await self.base.next(isolation: actor)
    }
  }

  /// The complete set after every event, for consumers that want whole sets (such as a name
  /// resolver). Several changes that arrive together still produce one snapshot each.
  public var snapshots: ServiceSnapshots {
    ServiceSnapshots(watch: self)
  }
}

/// The sequence of whole sets behind ``ServiceWatch/snapshots``.
public struct ServiceSnapshots: AsyncSequence, Sendable {
  public typealias Element = RegistrySnapshot
  public typealias Failure = any Error

  let watch: ServiceWatch

  public func makeAsyncIterator() -> AsyncIterator {
    AsyncIterator(base: self.watch.makeAsyncIterator(), current: nil)
  }

  /// Iterates whole sets.
  public struct AsyncIterator: AsyncIteratorProtocol {
    var base: ServiceWatch.AsyncIterator
    var current: RegistrySnapshot?

    public mutating func next() async throws -> RegistrySnapshot? {
      guard let event = try await self.base.next() else { return nil }
      let next: RegistrySnapshot
      if let current = self.current {
        next = current.applying(event)
      } else if case .snapshot(let first) = event {
        next = first
      } else {
        throw RegistryError(
          code: .internalError,
          message:
            "a watch yielded a change before its first snapshot; this is a bug in the registry implementation"
        )
      }
      self.current = next
      return next
    }
  }
}

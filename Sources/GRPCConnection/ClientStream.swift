internal import GRPCCore
internal import NIOCore
internal import NIOHPACK
internal import NIOHTTP2
import RegistryPrimitives
internal import Synchronization

/// One RPC's state, shared by the calling task (writes, reads) and the connection's event loop
/// (frames). The calling side queues request parts and schedules at most one event-loop task per
/// burst; the event loop appends response parts and resumes at most one parked reader.
final class ClientStream: Sendable {
  typealias Part = RPCResponsePart<[UInt8]>

  /// A request part queued for the event loop.
  enum OutboundPart: Sendable {
    case headers(HPACKHeaders)
    case message(ByteBuffer)
    case end
  }

  enum InboundEnd: Sendable {
    case finished
    case failed(RPCError)
  }

  private struct State: Sendable {
    // Response side.
    var inbound = CircularBuffer<Part>(initialCapacity: 4)
    var inboundBytes = 0
    var inboundEnd: InboundEnd?
    var reader: UnsafeContinuation<Part?, any Error>?
    var windowUpdateDeferred = false

    // Request side.
    var outbound: [OutboundPart] = []
    var flushScheduled = false
    var finished = false
    var outboundBytes = 0
    var writer: UnsafeContinuation<Void, any Error>?

    /// Set once the RPC failed or was cancelled; writes throw it.
    var failure: RPCError?
    /// Set on the event loop once the HTTP/2 stream is gone (closed, reset, never opened).
    var transportClosed = false
    var streamID: HTTP2StreamID?
    /// Times the stream moved to another connection because its own closed or began draining
    /// before the stream could open.
    var moves = 0
    /// Between ``refused(_:error:)`` and ``moved(to:)``: no connection may take the parts.
    var moving = false
  }

  /// The connection the stream runs on; it changes only before the stream opens (``moved(to:)``).
  var connection: ActiveConnection { self.home.withLock { $0.connection } }
  private let home: Locked<Home>

  private struct Home {
    var connection: ActiveConnection
    /// The caller's reservation was given back (``releaseHome()``): a move must not take over.
    var released = false
  }
  let path: String
  let authority: String
  let timeout: Duration?
  let maxRequestBytes: Int
  let maxResponseBytes: Int
  private let state: Locked<State>

  /// Writers wait while more than this many request bytes are queued or unsent.
  private static let highWatermark = 1 << 20
  private static let lowWatermark = 1 << 19

  init(
    connection: ActiveConnection,
    path: String,
    authority: String,
    timeout: Duration?,
    maxRequestBytes: Int,
    maxResponseBytes: Int
  ) {
    self.home = Locked(Home(connection: connection))
    self.path = path
    self.authority = authority
    self.timeout = timeout
    self.maxRequestBytes = maxRequestBytes
    self.maxResponseBytes = maxResponseBytes
    self.state = Locked(State())
  }

  // MARK: - Calling task

  func write(_ part: RPCRequestPart<[UInt8]>) async throws {
    switch part {
    case .metadata(let metadata):
      let headers = try GRPCWire.makeRequestHeaders(
        path: self.path,
        scheme: self.connection.scheme,
        authority: self.authority,
        timeout: self.timeout,
        metadata: metadata
      )
      try await self.enqueue(.headers(headers), bytes: 0)

    case .message(let bytes):
      if bytes.count > self.maxRequestBytes {
        throw RPCError(
          code: .resourceExhausted,
          message: """
            The request message is \(bytes.count) bytes, more than the limit of \
            \(self.maxRequestBytes) bytes (raise maxRequestMessageBytes to send it).
            """
        )
      }
      let buffer = GRPCWire.frame(bytes)
      try await self.enqueue(.message(buffer), bytes: buffer.readableBytes)
    }
  }

  private enum EnqueueAction {
    case none
    case flush
    case wait
    case flushAndWait
    case fail(RPCError)
  }

  private func enqueue(_ part: OutboundPart, bytes: Int) async throws {
    let action = self.state.withLock { state -> EnqueueAction in
      if let failure = state.failure {
        return .fail(failure)
      }
      if state.finished || state.transportClosed {
        // The response is complete (or the request was closed): like grpc, further request
        // parts are dropped.
        return .none
      }
      state.outbound.append(part)
      state.outboundBytes += bytes
      let flush = !state.flushScheduled
      state.flushScheduled = true
      let wait = state.outboundBytes > Self.highWatermark
      switch (flush, wait) {
      case (true, true): return .flushAndWait
      case (true, false): return .flush
      case (false, true): return .wait
      case (false, false): return .none
      }
    }

    switch action {
    case .none:
      ()
    case .flush:
      self.scheduleFlush()
    case .wait:
      try await self.waitForWritable()
    case .flushAndWait:
      self.scheduleFlush()
      try await self.waitForWritable()
    case .fail(let error):
      throw error
    }
  }

  private func scheduleFlush() {
    self.connection.scheduleFlush(self)
  }

  private func waitForWritable() async throws {
    try await withUnsafeThrowingContinuation {
      (continuation: UnsafeContinuation<Void, any Error>) in
      let result = self.state.withLock { state -> Result<Void, RPCError>? in
        if let failure = state.failure {
          return .failure(failure)
        }
        if state.outboundBytes <= Self.lowWatermark || state.transportClosed {
          return .success(())
        }
        state.writer = continuation
        return nil
      }
      if let result {
        continuation.resume(with: result)
      }
    }
  }

  /// The request is complete: END_STREAM follows the queued parts.
  func finish() {
    let flush = self.state.withLock { state -> Bool in
      if state.finished || state.failure != nil || state.transportClosed {
        state.finished = true
        return false
      }
      state.finished = true
      state.outbound.append(.end)
      let flush = !state.flushScheduled
      state.flushScheduled = true
      return flush
    }
    if flush {
      self.scheduleFlush()
    }
  }

  /// Fails the RPC with `error` and resets the HTTP/2 stream (RST_STREAM CANCEL).
  func cancel(_ error: RPCError) {
    let (reader, writer, reset) = self.state.withLock {
      state -> (UnsafeContinuation<Part?, any Error>?, UnsafeContinuation<Void, any Error>?, Bool)
      in
      if state.failure != nil {
        return (nil, nil, false)
      }
      state.failure = error
      state.outbound.removeAll()
      if state.inboundEnd == nil {
        state.inboundEnd = .failed(error)
      }
      let reader = state.reader
      state.reader = nil
      let writer = state.writer
      state.writer = nil
      return (reader, writer, !state.transportClosed)
    }

    writer?.resume(throwing: error)
    reader?.resume(throwing: error)
    if reset {
      let connection = self.connection
      connection.eventLoop.execute {
        connection.handler.value.reset(self)
      }
    }
  }

  /// How many times a stream may move to another connection because the one it was given to
  /// was going away: enough for servers that rotate connections quickly (a short maximum age) on
  /// a slow machine, bounded so that a server refusing everything cannot keep a call forever.
  static let maxMoves = 4

  /// The connection could not open the stream (it had closed, or read a GOAWAY, after the stream
  /// was given to it): nothing was sent, so the stream moves to another connection with its
  /// queued parts, at most ``maxMoves`` times; after that, or without a way to move, it fails
  /// with `error`.
  func refused(_ parts: [OutboundPart], error: RPCError, resentBytes: Int = 0) {
    let move = self.state.withLock { state -> Bool in
      guard state.failure == nil, state.streamID == nil, state.moves < Self.maxMoves,
        !state.moving
      else {
        return false
      }
      state.moves += 1
      state.moving = true
      state.outbound = parts + state.outbound
      // Counted again: they leave the HTTP/2 layer a second time.
      state.outboundBytes += resentBytes
      // Set while moving, so that writes meanwhile schedule no flush on the old connection.
      state.flushScheduled = true
      return true
    }
    if move, let onRefused = self.connection.onRefusedStream {
      onRefused(self)
    } else {
      self.fail(error)
    }
  }

  /// Continues on `connection` (after ``refused(_:error:)``): the queued parts are flushed there.
  /// Returns false, and changes nothing, when the caller has already given its connection back
  /// (``releaseHome()``): the mover then releases `connection` itself.
  func moved(to connection: ActiveConnection) -> Bool {
    let taken = self.home.withLock { home -> Bool in
      if home.released { return false }
      home.connection = connection
      return true
    }
    guard taken else { return false }
    self.state.withLock { $0.moving = false }
    self.scheduleFlush()
    return true
  }

  /// The caller is done with the stream: the connection whose reservation it gives back (the
  /// reserved one, or the one the stream moved to). A move still under way then leaves it alone.
  func releaseHome() -> ActiveConnection {
    self.home.withLock { home in
      home.released = true
      return home.connection
    }
  }

  /// Called when the caller's closure has returned: an unfinished stream is reset.
  func close() {
    let open = self.state.withLock { !$0.transportClosed && $0.failure == nil }
    if open {
      self.cancel(RPCError(code: .cancelled, message: "The RPC was closed before it completed."))
    }
  }

  private enum NextAction {
    case part(Part, windowUpdate: Bool)
    case end
    case fail(RPCError)
    case park
  }

  private func pop(_ state: inout State) -> NextAction {
    if let part = state.inbound.popFirst() {
      if case .message(let bytes) = part {
        state.inboundBytes -= bytes.count
      }
      var windowUpdate = false
      if state.windowUpdateDeferred,
        state.inboundBytes <= self.connection.streamWindowSize / 2
      {
        state.windowUpdateDeferred = false
        windowUpdate = true
      }
      return .part(part, windowUpdate: windowUpdate)
    }
    switch state.inboundEnd {
    case .some(.finished):
      return .end
    case .some(.failed(let error)):
      return .fail(error)
    case .none:
      return .park
    }
  }

  func next() async throws -> Part? {
    let action = self.state.withLock { self.pop(&$0) }
    switch action {
    case .part(let part, let windowUpdate):
      if windowUpdate { self.scheduleWindowUpdate() }
      return part
    case .end:
      return nil
    case .fail(let error):
      throw error
    case .park:
      return try await withUnsafeThrowingContinuation { continuation in
        let action = self.state.withLock { state -> NextAction in
          let action = self.pop(&state)
          if case .park = action {
            state.reader = continuation
          }
          return action
        }
        switch action {
        case .part(let part, let windowUpdate):
          if windowUpdate { self.scheduleWindowUpdate() }
          continuation.resume(returning: part)
        case .end:
          continuation.resume(returning: nil)
        case .fail(let error):
          continuation.resume(throwing: error)
        case .park:
          ()
        }
      }
    }
  }

  private func scheduleWindowUpdate() {
    let connection = self.connection
    connection.eventLoop.execute {
      connection.handler.value.sendDeferredWindowUpdate(self)
    }
  }

  // MARK: - Event loop

  var streamID: HTTP2StreamID? {
    self.state.withLock { $0.streamID }
  }

  /// Takes the queued request parts; `nil` if the RPC already failed.
  func takeOutbound(on connection: ActiveConnection) -> [OutboundPart]? {
    // A flush queued on a connection the stream has left (or is leaving) takes nothing.
    guard self.home.withLock({ $0.connection === connection }) else { return nil }
    return self.state.withLock { state in
      if state.moving { return nil }
      state.flushScheduled = false
      if state.failure != nil {
        return nil
      }
      let parts = state.outbound
      state.outbound = []
      return parts
    }
  }

  func opened(streamID: HTTP2StreamID) {
    self.state.withLock { $0.streamID = streamID }
  }

  /// The server refused the stream without processing it (REFUSED_STREAM before any response,
  /// or a GOAWAY whose last stream ID is below it): what was `sent` (the connection keeps up to
  /// 64 KiB of it) goes again, with whatever is still queued, on another connection (at most
  /// ``maxMoves`` times, with ``refused(_:error:)``); without it the RPC fails with `error`,
  /// which says it is safe to retry.
  func retryUnprocessed(sent: [OutboundPart]?, error: RPCError) {
    guard let sent, !sent.isEmpty else {
      self.fail(error)
      return
    }
    let reopen = self.state.withLock { state -> Bool in
      guard state.failure == nil else { return false }
      state.streamID = nil
      return true
    }
    if reopen {
      var bytes = 0
      for part in sent {
        if case .message(let buffer) = part { bytes += buffer.readableBytes }
      }
      self.refused(sent, error: error, resentBytes: bytes)
    } else {
      self.fail(error)
    }
  }

  /// `bytes` of request data left the HTTP/2 layer (or were dropped).
  func outboundWritten(bytes: Int) {
    let writer = self.state.withLock { state -> UnsafeContinuation<Void, any Error>? in
      state.outboundBytes -= bytes
      guard state.outboundBytes <= Self.lowWatermark else { return nil }
      let writer = state.writer
      state.writer = nil
      return writer
    }
    writer?.resume()
  }

  /// Appends a response part (or hands it to a parked reader).
  func deliver(_ part: Part, final: Bool = false, transportClosed: Bool = false) {
    typealias Continuations = (
      reader: UnsafeContinuation<Part?, any Error>?, writer: UnsafeContinuation<Void, any Error>?
    )
    let (reader, writer) = self.state.withLock { state -> Continuations in
      var writer: UnsafeContinuation<Void, any Error>?
      if transportClosed {
        // The server ended the RPC (a status while the request was still being sent, say for
        // a message over its limit): the rest of the request is dropped and a writer waiting
        // for flow control goes on, so the caller reads that status rather than a cancellation.
        state.transportClosed = true
        state.outbound.removeAll()
        writer = state.writer
        state.writer = nil
      }
      guard state.inboundEnd == nil else { return (nil, writer) }
      if final {
        state.inboundEnd = .finished
      }
      if let reader = state.reader {
        // A parked reader means the buffer is empty: hand the part over directly.
        state.reader = nil
        return (reader, writer)
      }
      state.inbound.append(part)
      if case .message(let bytes) = part {
        state.inboundBytes += bytes.count
      }
      return (nil, writer)
    }
    writer?.resume()
    reader?.resume(returning: part)
  }

  /// Whether more than a window of response data is unread; if so, the event loop withholds
  /// WINDOW_UPDATEs and the reader schedules one once it has caught up.
  var isOverBuffered: Bool {
    self.state.withLock { state in
      if state.inboundBytes > self.connection.streamWindowSize {
        state.windowUpdateDeferred = true
        return true
      }
      return false
    }
  }

  /// Ends the response with `error` (no effect if it already ended) and marks the HTTP/2 stream
  /// closed.
  func fail(_ error: RPCError) {
    let (reader, writer) = self.state.withLock {
      state -> (UnsafeContinuation<Part?, any Error>?, UnsafeContinuation<Void, any Error>?) in
      state.transportClosed = true
      state.outbound.removeAll()
      if state.failure == nil {
        state.failure = error
      }
      if state.inboundEnd == nil {
        state.inboundEnd = .failed(error)
      }
      let reader = state.reader
      state.reader = nil
      let writer = state.writer
      state.writer = nil
      return (reader, writer)
    }
    writer?.resume(throwing: error)
    reader?.resume(throwing: error)
  }

  /// The HTTP/2 stream closed after the response completed.
  func markTransportClosed() {
    let writer = self.state.withLock { state -> UnsafeContinuation<Void, any Error>? in
      state.transportClosed = true
      state.outbound.removeAll()
      let writer = state.writer
      state.writer = nil
      return writer
    }
    writer?.resume()
  }
}

/// The response side of a ``ClientStream`` as an `AsyncSequence`.
struct ClientStreamInbound: AsyncSequence, Sendable {
  typealias Element = RPCResponsePart<[UInt8]>

  let stream: ClientStream

  func makeAsyncIterator() -> Iterator {
    Iterator(stream: self.stream)
  }

  struct Iterator: AsyncIteratorProtocol {
    let stream: ClientStream

    mutating func next() async throws -> Element? {
      try await self.stream.next()
    }
  }
}

/// The request side of a ``ClientStream`` as a closable RPC writer.
struct ClientStreamOutbound: ClosableRPCWriterProtocol {
  typealias Element = RPCRequestPart<[UInt8]>

  let stream: ClientStream

  func write(_ element: Element) async throws {
    try await self.stream.write(element)
  }

  func write(contentsOf elements: some Sequence<Element>) async throws {
    for element in elements {
      try await self.stream.write(element)
    }
  }

  func finish() async {
    self.stream.finish()
  }

  func finish(throwing error: any Error) async {
    let rpcError: RPCError
    if let error = error as? RPCError {
      rpcError = error
    } else {
      rpcError = RPCError(code: .unknown, message: "Writing the request failed.", cause: error)
    }
    self.stream.cancel(rpcError)
  }
}

internal import GRPCCore
internal import NIOCore
internal import NIOHPACK
internal import NIOHTTP2
import RegistryPrimitives
internal import Synchronization

/// One call's parts in flight between the connection's event loop and the task running the
/// call's handler. The event loop appends request parts and resumes at most one parked reader;
/// the handler's task queues response parts (headers encoded and messages framed there, off the
/// event loop) and schedules at most one event-loop task per burst of writes.
final class ServerStream: Sendable {
  typealias RequestPart = RPCRequestPart<[UInt8]>
  typealias ResponsePart = ServerStreamStateMachine.ResponsePart

  private struct State: Sendable {
    // Request side.
    var inbound = CircularBuffer<RequestPart>(initialCapacity: 2)
    var inboundBytes = 0
    var inboundEnded = false
    var reader: UnsafeContinuation<RequestPart?, any Error>?
    var windowUpdateDeferred = false

    // Response side.
    var outbound: [ResponsePart] = []
    var flushScheduled = false
    var outboundBytes = 0
    var writer: UnsafeContinuation<Void, any Error>?
    var wroteStatus = false

    /// Set once the call failed or was cancelled; reads after the buffered parts and writes
    /// throw it.
    var failure: RPCError?
    var cancellation: ServerContext.RPCCancellationHandle?
    var task: Task<Void, Never>?
    var cancelled = false
  }

  let id: HTTP2StreamID
  let handler: NIOLoopBound<ServerConnectionHandler>
  let eventLoop: any EventLoop
  /// The connection's hand-off of responses written off the loop.
  private let handOff: EventLoopHandOff<ServerStream>
  let streamWindowSize: Int
  private let state: Locked<State>

  /// Writers wait while more than this many response bytes (``ServerStreamStateMachine/ResponsePart/bytes``)
  /// are queued or held by flow control: a client that does not read (a zero window) makes the
  /// server hold at most about this much per call, 256 calls x 64 KiB = 16 MiB per connection
  /// by default. grpc-go's server limits a stream's unsent data the same way.
  private static let highWatermark = 64 * 1024
  private static let lowWatermark = 32 * 1024

  init(
    id: HTTP2StreamID,
    metadata: Metadata,
    handler: NIOLoopBound<ServerConnectionHandler>,
    handOff: EventLoopHandOff<ServerStream>,
    streamWindowSize: Int
  ) {
    self.id = id
    self.handler = handler
    self.handOff = handOff
    self.eventLoop = handler.eventLoop
    self.streamWindowSize = streamWindowSize
    var state = State()
    state.inbound.append(.metadata(metadata))
    self.state = Locked(state)
  }

  // MARK: - Handler task: request

  private enum NextAction {
    case part(RequestPart, windowUpdate: Bool)
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
      if state.windowUpdateDeferred, state.inboundBytes <= self.streamWindowSize / 2 {
        state.windowUpdateDeferred = false
        windowUpdate = true
      }
      return .part(part, windowUpdate: windowUpdate)
    }
    if let failure = state.failure { return .fail(failure) }
    if state.inboundEnded { return .end }
    return .park
  }

  func next() async throws -> RequestPart? {
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
          if case .park = action { state.reader = continuation }
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
    let id = self.id
    let handler = self.handler
    self.eventLoop.execute {
      handler.value.sendDeferredWindowUpdate(id)
    }
  }

  // MARK: - Handler task: response

  func write(_ part: RPCResponsePart<[UInt8]>) async throws {
    let prepared: ResponsePart
    let bytes: Int
    switch part {
    case .metadata(let metadata):
      prepared = .metadata(try GRPCWire.makeResponseHeaders(metadata: metadata))
      bytes = 0
    case .message(let message):
      prepared = .message(GRPCWire.frame(message))
      bytes = prepared.bytes
    case .status(let status, let metadata):
      prepared = .status(status, metadata)
      bytes = 0
    }
    try await self.enqueue(prepared, bytes: bytes)
  }

  private enum EnqueueAction {
    case none
    case flush
    case wait
    case flushAndWait
    case fail(RPCError)
  }

  private func enqueue(_ part: ResponsePart, bytes: Int) async throws {
    let action = self.state.withLock { state -> EnqueueAction in
      if let failure = state.failure {
        return .fail(failure)
      }
      if state.wroteStatus {
        // The response is over: later parts are dropped, as grpc does.
        return .none
      }
      if case .status = part { state.wroteStatus = true }
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
      if self.scheduleFlush() {
        // The handler runs on the event loop and has used up its time there: suspend, so that
        // it goes on on the global executor (`EventLoopHandlerSlot.overBudget()`).
        await Task.yield()
      }
    case .wait:
      try await self.waitForWritable()
    case .flushAndWait:
      let yield = self.scheduleFlush()
      try await self.waitForWritable()
      if yield { await Task.yield() }
    case .fail(let error):
      throw error
    }
  }

  /// Returns whether the handler should suspend: it runs on the event loop, wrote in place, and
  /// has used up its budget there.
  @discardableResult
  private func scheduleFlush() -> Bool {
    let handler = self.handler
    if self.eventLoop.inEventLoop {
      // The handler runs on the event loop (a task executor preference): write in place.
      handler.value.flush(self, inPlace: true)
      return handler.value.handlerOverBudget()
    } else {
      // Written off the loop: joins the responses of other handlers waiting for it.
      let handOff = self.handOff
      if handOff.add(self) {
        handOff.eventLoop.execute { handler.value.flushResponses(handOff.takeBatch()) }
      }
      return false
    }
  }

  private func waitForWritable() async throws {
    try await withUnsafeThrowingContinuation {
      (continuation: UnsafeContinuation<Void, any Error>) in
      let result = self.state.withLock { state -> Result<Void, RPCError>? in
        if let failure = state.failure { return .failure(failure) }
        if state.outboundBytes <= Self.lowWatermark { return .success(()) }
        state.writer = continuation
        return nil
      }
      if let result { continuation.resume(with: result) }
    }
  }

  /// The handler's writer was closed. A handler that returns without a status (only possible
  /// through a transport used directly) gets one, so the client is not left waiting.
  func finishResponse(error: (any Error)?) {
    let status: Status
    if let error = error as? RPCError {
      status = Status(code: Status.Code(error.code), message: error.message)
    } else if error != nil {
      status = Status(code: .unknown, message: "The server's handler failed.")
    } else {
      status = Status(code: .internalError, message: "The server's handler returned no status.")
    }
    let flush = self.state.withLock { state -> Bool in
      guard !state.wroteStatus, state.failure == nil else { return false }
      state.wroteStatus = true
      state.outbound.append(.status(status, [:]))
      defer { state.flushScheduled = true }
      return !state.flushScheduled
    }
    if flush { self.scheduleFlush() }
  }

  /// The task running the handler learns its cancellation handle.
  func setCancellationHandle(_ handle: ServerContext.RPCCancellationHandle) {
    let cancelled = self.state.withLock { state -> Bool in
      if state.cancelled { return true }
      state.cancellation = handle
      return false
    }
    if cancelled { handle.cancel() }
  }

  /// The task running the handler, cancelled with the call (a client's reset, the deadline,
  /// the connection's end) so that sleeps and other waits in the handler end too.
  func attach(_ task: Task<Void, Never>) {
    let cancelled = self.state.withLock { state -> Bool in
      if state.cancelled { return true }
      state.task = task
      return false
    }
    if cancelled { task.cancel() }
  }

  // MARK: - Event loop

  /// Takes the queued response parts.
  func takeOutbound() -> [ResponsePart] {
    self.state.withLock { state in
      state.flushScheduled = false
      let parts = state.outbound
      state.outbound = []
      return parts
    }
  }

  /// `bytes` of response data left the HTTP/2 layer (or were dropped).
  func outboundWritten(bytes: Int) {
    let writer = self.state.withLock { state -> UnsafeContinuation<Void, any Error>? in
      state.outboundBytes -= bytes
      guard state.outboundBytes <= Self.lowWatermark else { return nil }
      defer { state.writer = nil }
      return state.writer
    }
    writer?.resume()
  }

  /// Request messages arrived (`end`: the request is complete).
  func deliver(_ messages: [[UInt8]], end: Bool) {
    typealias Resume = (UnsafeContinuation<RequestPart?, any Error>, RequestPart?)
    let resume = self.state.withLock { state -> Resume? in
      guard !state.inboundEnded, state.failure == nil else { return nil }
      for message in messages {
        state.inbound.append(.message(message))
        state.inboundBytes += message.count
      }
      if end { state.inboundEnded = true }
      guard let reader = state.reader else { return nil }
      // A parked reader found the buffer empty: hand it the next part (or the end) now.
      switch self.pop(&state) {
      case .part(let part, _):
        state.reader = nil
        return (reader, part)
      case .end:
        state.reader = nil
        return (reader, nil)
      case .fail, .park:
        return nil
      }
    }
    if let (reader, part) = resume {
      reader.resume(returning: part)
    }
  }

  /// Whether more than a window of request data is unread; if so, the event loop withholds the
  /// stream's WINDOW_UPDATEs until the handler catches up.
  var isOverBuffered: Bool {
    self.state.withLock { state in
      if state.inboundBytes > self.streamWindowSize {
        state.windowUpdateDeferred = true
        return true
      }
      return false
    }
  }

  /// The call ends without the handler's say: the client reset or the connection closed, or the
  /// request was malformed. Reads throw `error` once the buffered parts are read, writes throw
  /// it, and the handler's cancellation handle fires.
  func fail(_ error: RPCError) {
    let (reader, writer, handle, task) = self.state.withLock {
      state -> (
        UnsafeContinuation<RequestPart?, any Error>?, UnsafeContinuation<Void, any Error>?,
        ServerContext.RPCCancellationHandle?, Task<Void, Never>?
      ) in
      if state.failure == nil { state.failure = error }
      state.cancelled = true
      state.outbound.removeAll()
      state.outboundBytes = 0
      defer {
        state.reader = nil
        state.writer = nil
      }
      let task = state.task
      state.task = nil
      return (state.reader, state.writer, state.cancellation, task)
    }
    writer?.resume(throwing: error)
    reader?.resume(throwing: error)
    handle?.cancel()
    task?.cancel()
  }
}

/// The request side of a ``ServerStream`` as an `AsyncSequence`.
struct ServerStreamInbound: AsyncSequence, Sendable {
  typealias Element = RPCRequestPart<[UInt8]>

  let stream: ServerStream

  func makeAsyncIterator() -> Iterator {
    Iterator(stream: self.stream)
  }

  struct Iterator: AsyncIteratorProtocol {
    let stream: ServerStream

    mutating func next() async throws -> Element? {
      try await self.stream.next()
    }
  }
}

/// The response side of a ``ServerStream`` as a closable RPC writer.
struct ServerStreamOutbound: ClosableRPCWriterProtocol {
  typealias Element = RPCResponsePart<[UInt8]>

  let stream: ServerStream

  func write(_ element: Element) async throws {
    try await self.stream.write(element)
  }

  func write(contentsOf elements: some Sequence<Element>) async throws {
    for element in elements {
      try await self.stream.write(element)
    }
  }

  func finish() async {
    self.stream.finishResponse(error: nil)
  }

  func finish(throwing error: any Error) async {
    self.stream.finishResponse(error: error)
  }
}

extension ServerStreamStateMachine.ResponsePart {
  /// What this part counts for in the writer's watermark: a message's bytes and a fixed cost for
  /// the frame and buffers it needs, so that many tiny messages are bounded too.
  var bytes: Int {
    if case .message(let buffer) = self { return buffer.readableBytes + 128 }
    return 0
  }
}

internal import GRPCCore
internal import Logging
internal import NIOCore
internal import NIOHPACK
internal import NIOHTTP2

/// The one handler after `NIOHTTP2Handler` on a server connection (no stream multiplexer, no
/// child channels). It feeds frames to the connection's and each stream's state machine and
/// performs what they return: starting calls, delivering request messages, writing response
/// frames, returning flow-control window, GOAWAY and closing.
final class ServerConnectionHandler: ChannelInboundHandler {
  typealias InboundIn = HTTP2Frame
  typealias OutboundOut = HTTP2Frame

  struct Settings: Sendable {
    var maxRequestBytes: Int
    var streamWindowSize: Int
    var connectionWindowSize: Int
    var policy: ServerConnectionStateMachine.Policy
    var maxIdleTime: TimeAmount?
    var maxAge: TimeAmount?
    var maxGraceTime: TimeAmount?
  }

  /// Starts a call's handler in a task of the server's: on the event loop of `slot` when there
  /// is one (the handler must then release it), on the global executor otherwise.
  typealias Launch =
    @Sendable (ServerStream, MethodDescriptor, _ slot: EventLoopHandlerSlot?) -> Void

  private struct StreamRecord: InboundWindowedStream {
    var machine: ServerStreamStateMachine
    let stream: ServerStream
    var window: InboundWindow
    var deadline: Scheduled<Void>?
    // A handler that does not read keeps its client's window closed: the request data it has not
    // read is bounded by one window.
    var readerIsBehind: Bool { self.stream.isOverBuffered }
  }

  private let settings: Settings
  private let knownMethods: [String: MethodDescriptor]
  private let launch: Launch
  /// This loop's place for a handler; `nil`: every handler runs on the global executor.
  private let handlerSlot: EventLoopHandlerSlot?
  private let logger: Logger
  private let onClosed: @Sendable () -> Void

  private var context: ChannelHandlerContext?
  private var loopBoundSelf: NIOLoopBound<ServerConnectionHandler>?
  /// Streams whose responses, written by handlers off the loop, wait for it: one task writes
  /// them all and flushes once (``flushResponses(_:)``).
  private var responseHandOff: EventLoopHandOff<ServerStream>?
  private var connection = ServerConnectionStateMachine()
  private var streams: [HTTP2StreamID: StreamRecord] = [:]
  private var flushes = FlushCoalescer()
  private var lastStreamEnded = NIODeadline.now()
  /// Trailers written but not yet out of the HTTP/2 layer (flow control may hold a call's last
  /// DATA frames and its trailers after the stream counts as closed); a drained connection
  /// closes only once they are out.
  private var unsentTrailers = 0
  private var closeWhenSent = false
  private var idleTimer: Scheduled<Void>?
  private var ageTimer: Scheduled<Void>?
  private var graceTimer: Scheduled<Void>?

  init(
    settings: Settings,
    knownMethods: [String: MethodDescriptor],
    logger: Logger,
    handlerSlot: EventLoopHandlerSlot? = nil,
    launch: @escaping Launch,
    onClosed: @escaping @Sendable () -> Void
  ) {
    self.settings = settings
    self.knownMethods = knownMethods
    self.handlerSlot = handlerSlot
    self.launch = launch
    self.logger = logger
    self.onClosed = onClosed
    self.connection = ServerConnectionStateMachine(policy: settings.policy)
  }

  // MARK: - Channel events

  func handlerAdded(context: ChannelHandlerContext) {
    self.context = context
    self.loopBoundSelf = NIOLoopBound(self, eventLoop: context.eventLoop)
    self.responseHandOff = EventLoopHandOff(eventLoop: context.eventLoop)
    if context.channel.isActive { self.started(context: context) }
  }

  func channelActive(context: ChannelHandlerContext) {
    self.started(context: context)
    context.fireChannelActive()
  }

  private var didStart = false

  private func started(context: ChannelHandlerContext) {
    guard !self.didStart else { return }
    self.didStart = true
    // The connection window starts at 65,535 whatever SETTINGS say: open it to the configured
    // size at once.
    let increment = self.settings.connectionWindowSize - 65_535
    if increment > 0 {
      let frame = HTTP2Frame(
        streamID: .rootStream,
        payload: .windowUpdate(windowSizeIncrement: increment)
      )
      context.writeAndFlush(self.wrapOutboundOut(frame), promise: nil)
    }
    let loop = context.eventLoop.assumeIsolated()
    if let idle = self.settings.maxIdleTime {
      self.idleTimer = loop.scheduleTask(in: idle) { self.idleTimerFired() }
    }
    if let age = self.settings.maxAge {
      // Jittered by up to 10% so connections opened together do not all close together.
      let jitter = Int64.random(in: 0 ... max(0, age.nanoseconds / 10))
      self.ageTimer = loop.scheduleTask(in: age + .nanoseconds(jitter)) {
        self.drain(reason: "max_age")
      }
    }
  }

  func handlerRemoved(context: ChannelHandlerContext) {
    self.context = nil
    // The streams hold the handler through this too; without them it must not outlive the
    // channel.
    self.loopBoundSelf = nil
  }

  func channelInactive(context: ChannelHandlerContext) {
    self.connection.channelClosed()
    self.idleTimer?.cancel()
    self.ageTimer?.cancel()
    self.graceTimer?.cancel()
    let records = self.streams
    self.streams.removeAll()
    let error = RPCError(
      code: .unavailable,
      message: "The client's connection closed before the call completed."
    )
    for (_, record) in records {
      record.deadline?.cancel()
      if !record.machine.isResponseClosed { record.stream.fail(error) }
    }
    self.onClosed()
    context.fireChannelInactive()
  }

  func errorCaught(context: ChannelHandlerContext, error: any Error) {
    // Stream-level errors (a frame on a closed stream, a content-length mismatch) are answered
    // by NIOHTTP2Handler with RST_STREAM; the stream's close event then ends the call. (Header
    // blocks are checked by the stream state machine: `HeaderBlock`.) Connection errors have
    // already sent GOAWAY: close.
    if error is NIOHTTP2Errors.StreamError {
      self.logger.debug("HTTP/2 stream error", metadata: ["grpc.error": "\(error)"])
      return
    }
    self.logger.debug("HTTP/2 connection error", metadata: ["grpc.error": "\(error)"])
    context.close(promise: nil)
  }

  func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
    switch event {
    case let event as NIOHTTP2WindowUpdatedEvent:
      self.windowUpdated(event, context: context)
    case let event as StreamClosedEvent:
      self.streamClosed(event.streamID, reason: event.reason)
    default:
      context.fireUserInboundEventTriggered(event)
    }
  }

  func channelReadComplete(context: ChannelHandlerContext) {
    if self.flushes.readLoopEnded() {
      context.flush()
    }
    context.fireChannelReadComplete()
  }

  private func flushSoon(context: ChannelHandlerContext) {
    if self.flushes.wrote() {
      context.flush()
    }
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    let frame = self.unwrapInboundIn(data)
    self.flushes.readStarted()
    switch frame.payload {
    case .headers(let headers):
      if self.streams[frame.streamID] == nil {
        self.openStream(frame.streamID, headers: headers, context: context)
      } else {
        self.receivedTrailers(frame.streamID, headers: headers, context: context)
      }
    case .data(let data):
      self.receivedData(frame.streamID, data: data, context: context)
    case .rstStream(let code):
      self.receivedReset(frame.streamID, code: code)
    case .ping(_, ack: false):
      self.perform(self.connection.receivedPing(at: .now()), context: context)
    case .settings(.settings):
      self.perform(self.connection.receivedSettings(at: .now()), context: context)
    default:
      ()
    }
  }

  // MARK: - Streams

  private func openStream(
    _ id: HTTP2StreamID,
    headers: HTTP2Frame.FramePayload.Headers,
    context: ChannelHandlerContext
  ) {
    switch self.connection.streamOpened(id) {
    case .accept:
      ()
    case .refuse:
      self.write(id, .rstStream(.refusedStream), context: context)
      self.flushSoon(context: context)
      return
    }
    let (machine, action) = ServerStreamStateMachine.open(
      headers: headers.headers,
      endStream: headers.endStream,
      maxRequestBytes: self.settings.maxRequestBytes,
      knownMethods: self.knownMethods
    )
    switch action {
    case .start(let descriptor, let metadata, let timeout):
      guard let handler = self.loopBoundSelf, let handOff = self.responseHandOff else { return }
      let stream = ServerStream(
        id: id,
        metadata: metadata,
        handler: handler,
        handOff: handOff,
        streamWindowSize: self.settings.streamWindowSize
      )
      if headers.endStream { stream.deliver([], end: true) }
      var record = StreamRecord(
        machine: machine,
        stream: stream,
        window: InboundWindow(target: self.settings.streamWindowSize)
      )
      if let timeout {
        record.deadline = context.eventLoop.assumeIsolated().scheduleTask(in: TimeAmount(timeout)) {
          self.deadlineExpired(id)
        }
      }
      self.streams[id] = record
      // The connection's only call runs on this event loop if no other handler does: no hand-off
      // to the pool and back (see `HTTP2Server.HandlerExecution`).
      var slot: EventLoopHandlerSlot?
      if self.streams.count == 1, let handlerSlot = self.handlerSlot, handlerSlot.take() {
        slot = handlerSlot
      }
      self.launch(stream, descriptor, slot)
    case .reject(let response, let reset):
      self.write(id, .headers(.init(headers: response, endStream: true)), context: context)
      if reset { self.write(id, .rstStream(.noError), context: context) }
      self.flushSoon(context: context)
      self.streamEnded(context: context)
    case .malformed(let problem):
      self.logger.debug(
        "Malformed request; stream reset with PROTOCOL_ERROR",
        metadata: ["grpc.error": "\(problem)", "http2.stream_id": "\(id)"]
      )
      self.write(id, .rstStream(.protocolError), context: context)
      self.flushSoon(context: context)
      self.streamEnded(context: context)
      self.perform(self.connection.receivedMalformedStream(at: .now()), context: context)
    }
  }

  private func receivedData(
    _ id: HTTP2StreamID,
    data: HTTP2Frame.FramePayload.Data,
    context: ChannelHandlerContext
  ) {
    guard let index = self.streams.index(forKey: id),
      case .byteBuffer(let buffer) = data.data
    else { return }
    let action = self.streams.values[index].machine.receivedData(buffer, endStream: data.endStream)
    self.perform(action, index: index, id: id, context: context)
  }

  private func receivedTrailers(
    _ id: HTTP2StreamID,
    headers: HTTP2Frame.FramePayload.Headers,
    context: ChannelHandlerContext
  ) {
    guard let index = self.streams.index(forKey: id) else { return }
    let action = self.streams.values[index].machine.receivedTrailers(
      headers.headers,
      endStream: headers.endStream
    )
    self.perform(action, index: index, id: id, context: context)
  }

  private func perform(
    _ action: ServerStreamStateMachine.DataAction,
    index: Dictionary<HTTP2StreamID, StreamRecord>.Index,
    id: HTTP2StreamID,
    context: ChannelHandlerContext
  ) {
    switch action {
    case .none:
      ()
    case .deliver(let messages, let end):
      if !messages.isEmpty || end {
        self.streams.values[index].stream.deliver(messages, end: end)
      }
    case .fail(let trailers, let reset, let error):
      let record = self.streams.values[index]
      if let trailers {
        self.write(id, .headers(.init(headers: trailers, endStream: true)), context: context)
        self.connection.wroteHeadersOrData()
      }
      if let reset { self.write(id, .rstStream(reset), context: context) }
      self.flushSoon(context: context)
      record.stream.fail(error)
      self.removeStream(id, context: context)
    }
  }

  private func deadlineExpired(_ id: HTTP2StreamID) {
    guard let context = self.context, let index = self.streams.index(forKey: id) else { return }
    let action = self.streams.values[index].machine.deadlineExpired()
    self.perform(action, index: index, id: id, context: context)
  }

  private func receivedReset(_ id: HTTP2StreamID, code: HTTP2ErrorCode) {
    guard let record = self.streams[id] else { return }
    if !record.machine.isResponseClosed {
      record.stream.fail(
        RPCError(code: .cancelled, message: "The client cancelled the call (RST_STREAM \(code)).")
      )
    }
    if let context = self.context { self.removeStream(id, context: context) }
  }

  private func streamClosed(_ id: HTTP2StreamID, reason: HTTP2ErrorCode?) {
    guard let record = self.streams[id] else { return }
    if !record.machine.isResponseClosed {
      record.stream.fail(
        RPCError(code: .cancelled, message: "The stream closed before the call completed.")
      )
    }
    if let context = self.context { self.removeStream(id, context: context) }
  }

  private func removeStream(_ id: HTTP2StreamID, context: ChannelHandlerContext) {
    guard let record = self.streams.removeValue(forKey: id) else { return }
    record.deadline?.cancel()
    self.streamEnded(context: context)
  }

  private func streamEnded(context: ChannelHandlerContext) {
    self.lastStreamEnded = .now()
    switch self.connection.streamClosed() {
    case .none, .startIdleTimer:
      ()
    case .close:
      self.logger.debug("Drained: the last call ended; closing the connection")
      self.flushSoon(context: context)
      self.closeOnceSent(context: context)
    }
  }

  private func closeOnceSent(context: ChannelHandlerContext) {
    if self.unsentTrailers == 0 {
      context.close(promise: nil)
    } else {
      self.closeWhenSent = true
    }
  }

  private func trailersSent() {
    self.unsentTrailers -= 1
    if self.unsentTrailers == 0, self.closeWhenSent, let context = self.context {
      context.close(promise: nil)
    }
  }

  // MARK: - Responses (on the event loop, from ServerStream)

  /// The most response bytes one DATA write carries: HTTP/2's default SETTINGS_MAX_FRAME_SIZE
  /// (16 KiB), which every peer accepts. Small messages are gathered up to it; larger ones are
  /// sliced to it.
  static let dataFrameBytes = 16 * 1024

  /// On the loop, from a handler that runs there and wrote in place: whether it has used up its
  /// time on the loop (see `EventLoopHandlerSlot`).
  func handlerOverBudget() -> Bool {
    self.handlerSlot?.overBudget() ?? false
  }

  /// Writes what the handlers of `streams` queued off the loop (handed off together,
  /// ``EventLoopHandOff``), and flushes once.
  func flushResponses(_ streams: [ServerStream]) {
    for stream in streams {
      self.flush(stream, inPlace: false)
    }
    if let context = self.context {
      self.flushSoon(context: context)
    }
  }

  /// Writes what `stream`'s handler queued. `inPlace`: the handler runs on this loop and called
  /// this itself (so the frames are flushed at once); otherwise the caller flushes.
  func flush(_ stream: ServerStream, inPlace: Bool) {
    let parts = stream.takeOutbound()
    let accounted = parts.reduce(0) { $0 + $1.bytes }
    guard let context = self.context, let index = self.streams.index(forKey: stream.id) else {
      // The stream is gone (reset, closed): what was queued is dropped.
      stream.outboundWritten(bytes: accounted)
      return
    }
    let id = stream.id
    var ended = false
    var wroteStreamFrames = false
    // Small messages written in one burst go out as one DATA frame: a stream of tiny messages
    // costs one frame per burst, not one per message, in the HTTP/2 layer's buffers.
    var pending: ByteBuffer?
    func addData(_ buffer: ByteBuffer) {
      if var gathered = pending,
        gathered.readableBytes + buffer.readableBytes <= Self.dataFrameBytes
      {
        pending = nil  // so that the buffer is not copied on write
        gathered.writeImmutableBuffer(buffer)
        pending = gathered
        return
      }
      writePending(promise: nil)
      pending = buffer
    }
    func writePending(promise: EventLoopPromise<Void>?) {
      guard var buffer = pending else {
        promise?.succeed()
        return
      }
      pending = nil
      // A message larger than a frame leaves as flow control lets it, long after this write. Its
      // frame-sized slices each count as data sent when they leave, as grpc-go's server resets
      // ping strikes per DATA frame written: a grpc-go client's BDP pings (one per window of
      // data it receives) are otherwise strikes, and a 300 KB response got the client
      // GOAWAY(too_many_pings) about every other time (grpc-go's large_unary interop case).
      while buffer.readableBytes > Self.dataFrameBytes,
        let slice = buffer.readSlice(length: Self.dataFrameBytes)
      {
        let sent = context.eventLoop.makePromise(of: Void.self)
        sent.futureResult.assumeIsolated().whenSuccess { self.connection.wroteHeadersOrData() }
        self.write(id, .data(.init(data: .byteBuffer(slice))), promise: sent, context: context)
      }
      self.write(id, .data(.init(data: .byteBuffer(buffer))), promise: promise, context: context)
      wroteStreamFrames = true
    }
    for part in parts {
      switch self.streams.values[index].machine.write(part) {
      case .headers(let headers):
        writePending(promise: nil)
        self.write(id, .headers(.init(headers: headers)), context: context)
        wroteStreamFrames = true
      case .data(let buffer):
        addData(buffer)
      case .headersAndData(let headers, let buffer):
        writePending(promise: nil)
        self.write(id, .headers(.init(headers: headers)), context: context)
        wroteStreamFrames = true
        addData(buffer)
      case .trailers(let trailers, let reset):
        writePending(promise: nil)
        let sent = context.eventLoop.makePromise(of: Void.self)
        self.unsentTrailers += 1
        sent.futureResult.assumeIsolated().whenComplete { result in
          // The client is still sending: tell it to stop (RST_STREAM NO_ERROR), but only once
          // the trailers, and the DATA that flow control may hold before them, are out; a reset
          // sent earlier would discard them.
          if reset, case .success = result, let context = self.context {
            self.write(id, .rstStream(.noError), context: context)
            self.flushSoon(context: context)
          }
          self.trailersSent()
        }
        self.write(
          id,
          .headers(.init(headers: trailers, endStream: true)),
          promise: sent,
          context: context
        )
        ended = true
        wroteStreamFrames = true
      case .drop:
        ()
      }
    }
    if pending != nil, !ended {
      // When the burst's last DATA frame leaves the HTTP/2 layer (flow control may hold it
      // there), the writer held back by the watermark may go on.
      let written = context.eventLoop.makePromise(of: Void.self)
      written.futureResult.whenComplete { _ in stream.outboundWritten(bytes: accounted) }
      writePending(promise: written)
    } else {
      writePending(promise: nil)
      stream.outboundWritten(bytes: accounted)
    }
    if wroteStreamFrames { self.connection.wroteHeadersOrData() }
    if inPlace {
      self.flushSoon(context: context)
    }
  }

  private func write(
    _ id: HTTP2StreamID,
    _ payload: HTTP2Frame.FramePayload,
    promise: EventLoopPromise<Void>? = nil,
    context: ChannelHandlerContext
  ) {
    context.write(
      self.wrapOutboundOut(HTTP2Frame(streamID: id, payload: payload)),
      promise: promise
    )
  }

  // MARK: - Flow control

  private func windowUpdated(_ event: NIOHTTP2WindowUpdatedEvent, context: ChannelHandlerContext) {
    let target = self.settings.connectionWindowSize
    if let update = InboundWindow.update(
      for: event,
      connectionTarget: target,
      streams: &self.streams
    ) {
      self.sendWindowUpdate(update.streamID, increment: update.increment, context: context)
    }
  }

  func sendDeferredWindowUpdate(_ id: HTTP2StreamID) {
    guard let context = self.context, let index = self.streams.index(forKey: id),
      let increment = self.streams.values[index].window.readerCaughtUp()
    else { return }
    self.sendWindowUpdate(id, increment: increment, context: context)
  }

  private func sendWindowUpdate(
    _ id: HTTP2StreamID,
    increment: Int,
    context: ChannelHandlerContext
  ) {
    guard increment > 0 else { return }
    self.write(
      id,
      .windowUpdate(windowSizeIncrement: min(increment, Int(Int32.max))),
      context: context
    )
    self.flushSoon(context: context)
  }

  // MARK: - Draining and policy

  /// Graceful shutdown (or maximum age): GOAWAY, finish the open calls, close.
  func drain(reason: String) {
    guard let context = self.context else { return }
    self.perform(self.connection.beginDraining(reason: reason), context: context)
  }

  /// Closes the connection at once (the server's task was cancelled); its calls fail.
  func closeNow() {
    self.context?.close(promise: nil)
  }

  private func idleTimerFired() {
    guard let context = self.context, let idle = self.settings.maxIdleTime else { return }
    let loop = context.eventLoop.assumeIsolated()
    let idleSince = self.lastStreamEnded
    if self.connection.openStreams == 0, NIODeadline.now() - idleSince >= idle {
      self.perform(self.connection.idleTimeout(), context: context)
      return
    }
    // Busy, or a call ended since: check again when the connection could next be idle long
    // enough.
    let next = max(idleSince + idle, NIODeadline.now() + .milliseconds(10))
    self.idleTimer = loop.scheduleTask(deadline: next) { self.idleTimerFired() }
  }

  private func perform(
    _ action: ServerConnectionStateMachine.DrainAction,
    context: ChannelHandlerContext
  ) {
    switch action {
    case .none:
      ()
    case .goAway(let lastStreamID, let code, let debug, let close):
      self.logger.debug(
        "Draining connection",
        metadata: ["grpc.reason": "\(debug)", "http2.last_stream_id": "\(lastStreamID)"]
      )
      self.writeGoAway(lastStreamID: lastStreamID, code: code, debug: debug, context: context)
      if close {
        self.logger.debug("No call in flight; closing the connection")
        self.closeOnceSent(context: context)
      } else if let grace = self.settings.maxGraceTime {
        self.graceTimer = context.eventLoop.assumeIsolated().scheduleTask(in: grace) {
          // Calls still running, or the last trailers still waiting for a client that does not
          // read: either way the grace time is over.
          guard let context = self.context,
            self.connection.graceTimeExpired() || self.closeWhenSent
          else { return }
          self.logger.debug("Grace time over; closing the connection")
          context.close(promise: nil)
        }
      }
    }
  }

  private func perform(
    _ action: ServerConnectionStateMachine.PolicyAction,
    context: ChannelHandlerContext
  ) {
    switch action {
    case .none:
      ()
    case .goAwayAndClose(let lastStreamID, let debug):
      self.logger.info(
        "Closing a client connection that broke the server's policy",
        metadata: ["grpc.reason": "\(debug)"]
      )
      self.writeGoAway(
        lastStreamID: lastStreamID,
        code: .enhanceYourCalm,
        debug: debug,
        context: context
      )
      context.close(promise: nil)
    }
  }

  private func writeGoAway(
    lastStreamID: HTTP2StreamID,
    code: HTTP2ErrorCode,
    debug: String,
    context: ChannelHandlerContext
  ) {
    let frame = HTTP2Frame(
      streamID: .rootStream,
      payload: .goAway(
        lastStreamID: lastStreamID,
        errorCode: code,
        opaqueData: ByteBuffer(string: debug)
      )
    )
    context.writeAndFlush(self.wrapOutboundOut(frame), promise: nil)
  }
}

internal import GRPCCore
internal import Logging
internal import NIOCore
internal import NIOHPACK
internal import NIOHTTP2

/// Events the connection handler reports to its ``HTTP2Connection`` (on the event loop).
enum ConnectionEvent: Sendable {
  /// No new streams may start (GOAWAY received, stream IDs exhausted, keep-alive failed).
  case draining(reason: String)
  /// The channel closed; every stream has been failed.
  case closed(error: (any Error)?)
}

/// The one connection-level handler after `NIOHTTP2Handler` (no stream multiplexer, no child
/// channels): it allocates stream IDs, writes request frames, demultiplexes response frames into
/// ``ClientStream``s, returns flow-control window, and runs keep-alive.
final class ConnectionHandler: ChannelInboundHandler {
  typealias InboundIn = HTTP2Frame
  typealias OutboundOut = HTTP2Frame

  /// One open stream (internal for the liveness extension, which counts waiting calls).
  struct StreamRecord: InboundWindowedStream {
    let stream: ClientStream
    var machine: ClientStreamStateMachine
    var deadline: Scheduled<Void>?
    var window: InboundWindow
    // A reader more than a window behind gets its update when it drains (ClientStream schedules
    // sendDeferredWindowUpdate).
    var readerIsBehind: Bool { self.stream.isOverBuffered }
  }

  struct Settings {
    var streamWindowSize: Int
    var connectionWindowSize: Int
    var keepalive: HTTP2Connection.Keepalive?
    var stallDetection: HTTP2Connection.StallDetection?
  }

  private let settings: Settings
  let logger: Logger
  private let onEvent: @Sendable (ConnectionEvent) -> Void
  private var readyPromise: EventLoopPromise<NIOLoopBound<ConnectionHandler>>?

  var context: ChannelHandlerContext?
  var streams: [HTTP2StreamID: StreamRecord] = [:]
  private var nextStreamID: Int32 = 1
  var draining = false
  var closed = false
  var closeError: (any Error)?
  private var goAwayLastStreamID: HTTP2StreamID?
  private var receivedSettings = false
  private var flushes = FlushCoalescer()

  // Keep-alive.
  let pingData = HTTP2PingData(withInteger: .random(in: .min ... .max))
  var keepaliveTimer: Scheduled<Void>?
  var keepaliveTimeout: Scheduled<Void>?

  // Stall detection.
  var stallTimer: Scheduled<Void>?
  var stallPingTimeout: Scheduled<Void>?
  /// When to PING and what an unacknowledged PING means (keep-alive, stall detection).
  var liveness: ConnectionLiveness

  init(
    settings: Settings,
    readyPromise: EventLoopPromise<NIOLoopBound<ConnectionHandler>>,
    logger: Logger,
    onEvent: @escaping @Sendable (ConnectionEvent) -> Void
  ) {
    self.settings = settings
    self.liveness = ConnectionLiveness(
      keepalive: settings.keepalive,
      stallDetection: settings.stallDetection,
      now: .now()
    )
    self.readyPromise = readyPromise
    self.logger = logger
    self.onEvent = onEvent
  }

  // MARK: - Channel events

  func handlerAdded(context: ChannelHandlerContext) {
    self.context = context
    if context.channel.isActive {
      self.openConnectionWindow(context: context)
    }
  }

  func handlerRemoved(context: ChannelHandlerContext) {
    self.context = nil
  }

  func channelActive(context: ChannelHandlerContext) {
    self.openConnectionWindow(context: context)
    context.fireChannelActive()
  }

  private func openConnectionWindow(context: ChannelHandlerContext) {
    // The connection window starts at 65,535 regardless of SETTINGS; grpc-go servers send a lot
    // at once, so open it to the configured size right after the preface.
    let increment = self.settings.connectionWindowSize - 65_535
    if increment > 0 {
      let frame = HTTP2Frame(
        streamID: .rootStream,
        payload: .windowUpdate(windowSizeIncrement: increment)
      )
      context.writeAndFlush(self.wrapOutboundOut(frame), promise: nil)
    }
  }

  func channelInactive(context: ChannelHandlerContext) {
    self.closed = true
    self.draining = true
    self.keepaliveTimer?.cancel()
    self.keepaliveTimeout?.cancel()
    self.stallTimer?.cancel()
    self.stallPingTimeout?.cancel()

    let error = RPCError(
      code: .unavailable,
      message: "The connection to the server was lost.",
      cause: self.closeError
    )
    let records = self.streams
    self.streams.removeAll()
    for (id, var record) in records {
      record.deadline?.cancel()
      let action = record.machine.connectionClosed(
        beyondGoAway: self.isBeyondGoAway(id),
        error: error
      )
      self.run(action, for: record.stream)
    }

    if let readyPromise = self.readyPromise {
      self.readyPromise = nil
      readyPromise.fail(
        self.closeError
          ?? HTTP2ConnectionError(
            code: .connectFailed,
            message: "The connection closed before the server's HTTP/2 SETTINGS arrived."
          )
      )
    }
    self.onEvent(.closed(error: self.closeError))
    context.fireChannelInactive()
  }

  func errorCaught(context: ChannelHandlerContext, error: any Error) {
    if Self.isStreamLevel(error) {
      self.logger.debug("HTTP/2 stream error", metadata: ["grpc.error": "\(error)"])
      return
    }
    self.logger.debug("HTTP/2 connection error", metadata: ["grpc.error": "\(error)"])
    if self.closeError == nil {
      self.closeError = error
    }
    context.close(promise: nil)
  }

  private static func isStreamLevel(_ error: any Error) -> Bool {
    switch error {
    case is NIOHTTP2Errors.StreamError, is NIOHTTP2Errors.StreamClosed,
      is NIOHTTP2Errors.NoSuchStream, is NIOHTTP2Errors.BadStreamStateTransition,
      is NIOHTTP2Errors.MissingPseudoHeader, is NIOHTTP2Errors.DuplicatePseudoHeader,
      is NIOHTTP2Errors.PseudoHeaderAfterRegularHeader, is NIOHTTP2Errors.UnknownPseudoHeader,
      is NIOHTTP2Errors.UnsupportedPseudoHeader, is NIOHTTP2Errors.InvalidPseudoHeaders,
      is NIOHTTP2Errors.InvalidStatusValue, is NIOHTTP2Errors.TrailersWithoutEndStream,
      is NIOHTTP2Errors.ForbiddenHeaderField, is NIOHTTP2Errors.InvalidPseudoHeaderValue,
      is NIOHTTP2Errors.ContentLengthViolated, is NIOHTTP2Errors.ContentLengthHeadersMismatch,
      is NIOHTTP2Errors.ContentLengthHeaderNegative,
      is NIOHTTP2Errors.ContentLengthHeaderMalformedValue,
      is NIOHTTP2Errors.InvalidHTTP2HeaderFieldName,
      is NIOHTTP2Errors.InvalidHTTP2HeaderFieldValue:
      return true
    default:
      return false
    }
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

  /// Flushes now, or at the end of the read loop when frames are written while reading.
  private func flushSoon(context: ChannelHandlerContext) {
    if self.flushes.wrote() {
      context.flush()
    }
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    let frame = self.unwrapInboundIn(data)
    self.flushes.readStarted()
    if self.liveness.tracksReads {
      let streamFrame: Bool
      switch frame.payload {
      case .headers, .data: streamFrame = true
      default: streamFrame = false
      }
      self.liveness.frameRead(at: .now(), streamFrame: streamFrame)
    }

    switch frame.payload {
    case .headers(let headers):
      self.receivedHeaders(headers, streamID: frame.streamID, context: context)
    case .data(let data):
      self.receivedData(data, streamID: frame.streamID, context: context)
    case .rstStream(let code):
      self.receivedReset(code, streamID: frame.streamID)
    case .settings(.settings):
      if !self.receivedSettings {
        self.receivedSettings = true
        self.scheduleKeepalive(context: context)
        if let readyPromise = self.readyPromise {
          self.readyPromise = nil
          readyPromise.succeed(NIOLoopBound(self, eventLoop: context.eventLoop))
        }
      }
    case .ping(let data, ack: true):
      if data == self.pingData {
        self.liveness.pingAcknowledged()
        self.keepaliveTimeout?.cancel()
        self.keepaliveTimeout = nil
        self.stallPingTimeout?.cancel()
        self.stallPingTimeout = nil
      }
    case .goAway(let lastStreamID, let errorCode, let opaqueData):
      self.receivedGoAway(lastStreamID: lastStreamID, errorCode: errorCode, opaqueData: opaqueData)
    default:
      ()
    }
  }

  // MARK: - Requests (called on the event loop by ClientStream)

  /// Writes the queued request parts of `streams` and flushes them together.
  func flush(_ streams: [ClientStream], on connection: ActiveConnection) {
    var wrote = false
    for stream in streams {
      wrote = self.write(stream, on: connection) || wrote
    }
    if wrote, let context = self.context {
      context.flush()
    }
  }

  /// Writes `stream`'s queued request parts without flushing; returns whether it wrote any.
  private func write(_ stream: ClientStream, on connection: ActiveConnection) -> Bool {
    guard let context = self.context else {
      // The handler left the pipeline: the channel is gone. A stream that never opened moves to
      // another connection.
      let error = RPCError(code: .unavailable, message: "The connection to the server was lost.")
      if stream.streamID == nil, let parts = stream.takeOutbound(on: connection), !parts.isEmpty {
        stream.refused(parts, error: error)
      } else {
        stream.fail(error)
      }
      return false
    }
    guard let parts = stream.takeOutbound(on: connection), !parts.isEmpty else {
      return false
    }

    var streamID = stream.streamID
    var batchBytes = 0
    var lastDataPromise: EventLoopPromise<Void>?
    var endsStream = false
    let lastMessageIndex = parts.lastIndex { part in
      if case .message = part { return true }
      return false
    }

    var index = 0
    while index < parts.count {
      let part = parts[index]
      let nextIsEnd: Bool
      if index + 1 < parts.count, case .end = parts[index + 1] {
        nextIsEnd = true
      } else {
        nextIsEnd = false
      }

      switch part {
      case .headers(let headers):
        guard streamID == nil else { break }
        guard let id = self.openStream(stream, context: context) else {
          // Nothing of this stream was sent: it may go to another connection.
          stream.refused(
            Array(parts[index...]),
            error: RPCError(
              code: .unavailable,
              message: "The connection began closing before the RPC started; it is safe to retry."
            )
          )
          return index > 0
        }
        streamID = id
        // Never END_STREAM on the HEADERS, even for a request without messages: gRPC's HTTP/2
        // protocol ends a request on a DATA frame (an empty one when nothing is left to send),
        // and grpc-go's servers before 1.84 never tell a streaming handler about an END_STREAM
        // on HEADERS, so its Recv() waits forever (grpc/grpc-go#2867). `.end` sends that frame.
        let frame = HTTP2Frame(streamID: id, payload: .headers(.init(headers: headers)))
        context.write(self.wrapOutboundOut(frame), promise: nil)

      case .message(let buffer):
        guard let id = streamID, self.isWritable(id) else { break }
        // Only the burst's last DATA frame carries a promise (see below).
        let promise =
          (index == lastMessageIndex && !nextIsEnd)
          ? context.eventLoop.makePromise(of: Void.self) : nil
        let frame = HTTP2Frame(
          streamID: id,
          payload: .data(.init(data: .byteBuffer(buffer), endStream: nextIsEnd))
        )
        batchBytes += buffer.readableBytes
        context.write(self.wrapOutboundOut(frame), promise: promise)
        if nextIsEnd {
          index += 1
          endsStream = true
        } else if let promise {
          lastDataPromise = promise
        }

      case .end:
        guard let id = streamID, self.isWritable(id) else { break }
        let frame = HTTP2Frame(
          streamID: id,
          payload: .data(.init(data: .byteBuffer(ByteBuffer()), endStream: true))
        )
        context.write(self.wrapOutboundOut(frame), promise: nil)
        endsStream = true
      }
      index += 1
    }

    if let id = streamID, let record = self.streams.index(forKey: id) {
      self.streams.values[record].machine.sent(parts, bytes: batchBytes, endsRequest: endsStream)
    }

    // One promise per burst tracks when queued request bytes leave the HTTP/2 layer, which is
    // what resumes writers held back by the high watermark. A burst that ends the request needs
    // none: nothing can be written after it.
    if batchBytes > 0 {
      if let promise = lastDataPromise, !endsStream {
        let bytes = batchBytes
        promise.futureResult.whenComplete { _ in
          stream.outboundWritten(bytes: bytes)
        }
      } else {
        stream.outboundWritten(bytes: batchBytes)
      }
    }
    return true
  }

  private func isWritable(_ id: HTTP2StreamID) -> Bool {
    guard let record = self.streams[id] else { return false }
    return !record.machine.requestClosed
  }

  /// Opens the stream; `nil` when this connection takes no new streams (the caller moves it).
  private func openStream(
    _ stream: ClientStream,
    context: ChannelHandlerContext
  ) -> HTTP2StreamID? {
    if self.closed || self.draining {
      return nil
    }

    let id = HTTP2StreamID(self.nextStreamID)
    if self.nextStreamID > Int32.max - 2 {
      // Client stream IDs are odd and may not be reused: this connection is used up.
      self.beginDraining(reason: "HTTP/2 stream IDs exhausted", context: context)
    } else {
      self.nextStreamID += 2
    }

    var record = StreamRecord(
      stream: stream,
      machine: ClientStreamStateMachine(maxResponseBytes: stream.maxResponseBytes),
      window: InboundWindow(target: self.settings.streamWindowSize)
    )
    if let timeout = stream.timeout {
      record.deadline = context.eventLoop.assumeIsolated().scheduleTask(in: TimeAmount(timeout)) {
        self.deadlineExpired(id)
      }
    }
    self.streams[id] = record
    stream.opened(streamID: id)
    if self.stallTimer == nil {
      self.scheduleStallCheck(context: context)
    }
    return id
  }

  /// Resets the stream (RST_STREAM CANCEL) after the caller cancelled or failed it.
  func reset(_ stream: ClientStream) {
    guard let id = stream.streamID, let record = self.removeStream(id) else {
      stream.markTransportClosed()
      return
    }
    record.stream.markTransportClosed()
    guard let context = self.context else { return }
    self.writeReset(.cancel, streamID: id, context: context)
  }

  private func deadlineExpired(_ id: HTTP2StreamID) {
    guard let record = self.removeStream(id) else { return }
    record.stream.fail(
      RPCError(code: .deadlineExceeded, message: "The RPC's deadline passed before it completed.")
    )
    guard let context = self.context else { return }
    self.writeReset(.cancel, streamID: id, context: context)
  }

  @discardableResult
  private func removeStream(_ id: HTTP2StreamID) -> StreamRecord? {
    guard let record = self.streams.removeValue(forKey: id) else { return nil }
    record.deadline?.cancel()
    if self.draining, self.streams.isEmpty, !self.closed, let context = self.context {
      // A draining connection closes once its last stream is done.
      context.eventLoop.assumeIsolated().execute {
        if self.streams.isEmpty, !self.closed, let context = self.context {
          context.close(promise: nil)
        }
      }
    }
    return record
  }

  // MARK: - Responses

  private func receivedHeaders(
    _ payload: HTTP2Frame.FramePayload.Headers,
    streamID id: HTTP2StreamID,
    context: ChannelHandlerContext
  ) {
    guard let index = self.streams.index(forKey: id) else { return }
    let action = self.streams.values[index].machine.receivedHeaders(
      payload.headers,
      endStream: payload.endStream
    )
    switch action {
    case .none:
      ()
    case .deliverMetadata(let metadata):
      self.streams.values[index].stream.deliver(.metadata(metadata))
    case .finish(let status, let metadata, let reset):
      // The final part; the stream is forgotten before the caller sees it.
      let stream = self.streams.values[index].stream
      self.removeStream(id)
      stream.deliver(.status(status, metadata), final: true, transportClosed: true)
      if let reset {
        self.writeReset(reset, streamID: id, context: context)
      }
    case .fail(let error, let reset):
      self.failStream(id, error: error, reset: reset, context: context)
    }
  }

  private func receivedData(
    _ payload: HTTP2Frame.FramePayload.Data,
    streamID id: HTTP2StreamID,
    context: ChannelHandlerContext
  ) {
    guard let index = self.streams.index(forKey: id),
      case .byteBuffer(let buffer) = payload.data
    else { return }
    let stream = self.streams.values[index].stream
    let action = self.streams.values[index].machine.receivedData(
      buffer,
      endStream: payload.endStream
    ) { message in
      stream.deliver(.message(message))
    }
    if case .fail(let error, let reset) = action {
      self.failStream(id, error: error, reset: reset, context: context)
    }
  }

  private func failStream(
    _ id: HTTP2StreamID,
    error: RPCError,
    reset: HTTP2ErrorCode?,
    context: ChannelHandlerContext
  ) {
    guard let record = self.removeStream(id) else { return }
    record.stream.fail(error)
    if let reset {
      self.writeReset(reset, streamID: id, context: context)
    }
  }

  private func writeReset(
    _ code: HTTP2ErrorCode,
    streamID id: HTTP2StreamID,
    context: ChannelHandlerContext
  ) {
    let frame = HTTP2Frame(streamID: id, payload: .rstStream(code))
    context.write(self.wrapOutboundOut(frame), promise: nil)
    self.flushSoon(context: context)
  }

  private func receivedReset(_ code: HTTP2ErrorCode, streamID id: HTTP2StreamID) {
    guard var record = self.removeStream(id) else { return }
    self.run(record.machine.receivedReset(code), for: record.stream)
  }

  private func streamClosed(_ id: HTTP2StreamID, reason: HTTP2ErrorCode?) {
    guard var record = self.removeStream(id) else { return }
    let action = record.machine.closed(reason: reason, beyondGoAway: self.isBeyondGoAway(id))
    self.run(action, for: record.stream)
  }

  private func run(_ action: ClientStreamStateMachine.EndAction, for stream: ClientStream) {
    switch action {
    case .retryUnprocessed(let sent, let error):
      stream.retryUnprocessed(sent: sent, error: error)
    case .fail(let error):
      stream.fail(error)
    }
  }

  /// Whether the server's GOAWAY said it will not process stream `id`.
  private func isBeyondGoAway(_ id: HTTP2StreamID) -> Bool {
    guard let lastStreamID = self.goAwayLastStreamID else { return false }
    return id > lastStreamID
  }

  // MARK: - Flow control

  private func windowUpdated(_ event: NIOHTTP2WindowUpdatedEvent, context: ChannelHandlerContext) {
    let target = self.settings.connectionWindowSize
    if let update = InboundWindow.update(
      for: event,
      connectionTarget: target,
      streams: &self.streams
    ) {
      self.sendWindowUpdate(
        streamID: update.streamID,
        increment: update.increment,
        context: context
      )
    }
  }

  func sendDeferredWindowUpdate(_ stream: ClientStream) {
    guard let context = self.context, let id = stream.streamID,
      let index = self.streams.index(forKey: id),
      let increment = self.streams.values[index].window.readerCaughtUp()
    else { return }
    self.sendWindowUpdate(streamID: id, increment: increment, context: context)
  }

  private func sendWindowUpdate(
    streamID: HTTP2StreamID,
    increment: Int,
    context: ChannelHandlerContext
  ) {
    guard increment > 0 else { return }
    let frame = HTTP2Frame(
      streamID: streamID,
      payload: .windowUpdate(windowSizeIncrement: min(increment, Int(Int32.max)))
    )
    context.write(self.wrapOutboundOut(frame), promise: nil)
    self.flushSoon(context: context)
  }

  // MARK: - GOAWAY, draining, keep-alive

  private func receivedGoAway(
    lastStreamID: HTTP2StreamID,
    errorCode: HTTP2ErrorCode,
    opaqueData: ByteBuffer?
  ) {
    self.goAwayLastStreamID = lastStreamID
    let detail = opaqueData.map { String(buffer: $0) } ?? ""
    self.logger.info(
      "Server sent GOAWAY",
      metadata: [
        "http2.error_code": "\(errorCode)",
        "http2.last_stream_id": "\(lastStreamID)",
        "http2.goaway_data": "\(detail)",
      ]
    )
    if let context = self.context {
      self.beginDraining(reason: "GOAWAY (\(errorCode)) \(detail)", context: context)
    }
  }

  func beginDraining(reason: String, context: ChannelHandlerContext) {
    guard !self.draining else { return }
    self.draining = true
    self.onEvent(.draining(reason: reason))
    if self.streams.isEmpty {
      context.close(promise: nil)
    }
  }

  /// Stops new streams and closes once the open ones are done.
  func drain() {
    guard let context = self.context else { return }
    self.beginDraining(reason: "client shutdown", context: context)
  }
}

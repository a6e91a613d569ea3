package import NIOCore
import NIOHTTP2

/// Answers a peer's HTTP/2 PINGs that follow real traffic itself, in front of `NIOHTTP2Handler`,
/// so that swift-nio-http2's control-frame limit counts only the other PINGs.
///
/// grpc-go clients send a PING (for their bandwidth-delay estimate) with nearly every response
/// they receive. `NIOHTTP2Handler` allows 200 inbound PING, SETTINGS and PRIORITY frames per 30 s
/// and then closes the connection with GOAWAY(ENHANCE_YOUR_CALM), so a server built on it, such as
/// grpc-swift's `HTTP2ServerTransport.Posix`, drops a busy grpc-go client about every 200 calls.
/// The transport does not let the limit be configured.
///
/// This handler reads the connection's bytes before `NIOHTTP2Handler` does. A PING that arrives
/// after at least one frame of real traffic (HEADERS, CONTINUATION, DATA, RST_STREAM or
/// WINDOW_UPDATE) since the last PING it answered is answered here (a PING ACK with the same
/// payload) and not passed on. Every other frame passes on unchanged, including PINGs that follow
/// no traffic, which `NIOHTTP2Handler` answers and counts as before: a peer that sends PINGs
/// without doing anything else is still disconnected after 200 of them in 30 s, while a peer that
/// pings once per exchange, as grpc-go does, is never counted. Each answered PING needs a frame of
/// traffic before it, so a peer cannot get more than one answer per frame it sends, and while the
/// connection is not writable (a peer that does not read its answers) every PING goes to
/// `NIOHTTP2Handler`, whose limit and bounded buffer then apply: the answers written here can
/// never pile up beyond the channel's write buffer.
///
/// The PINGs answered here also bypass grpc-swift's keepalive policy for clients
/// (`too_many_pings`), which is what grpc-go's BDP pings need; a ping flood is bounded by the
/// rules above.
///
/// Add it directly before `NIOHTTP2Handler` (after any TLS handler) on a server connection, before
/// the connection reads its first byte: ``install(in:)``.
package final class TrafficPingResponder: ChannelInboundHandler {
  package typealias InboundIn = ByteBuffer
  package typealias InboundOut = ByteBuffer
  package typealias OutboundOut = IOData

  /// The client's connection preface ("PRI * HTTP/2.0…"), which precedes its first frame.
  private static let prefaceLength = 24
  private static let frameHeaderLength = 9
  private static let pingPayloadLength = 8

  private var prefaceRemaining = TrafficPingResponder.prefaceLength
  /// Payload bytes of the current frame still to pass on without looking at them.
  private var payloadRemaining = 0
  /// The start of a frame (header, or a whole PING) that has not fully arrived yet.
  private var partial: ByteBuffer?
  /// Whether a frame of real traffic arrived since the last PING this handler answered.
  private var sawTraffic = false
  private var wroteAcks = false

  package init() {}

  /// Adds a responder directly before the pipeline's `NIOHTTP2Handler`. Call it on the channel's
  /// event loop, before the channel reads (for a grpc-swift server, from the transport's
  /// `onAcceptTCPConnection` callback, which runs there after the pipeline is built).
  /// Does nothing if the pipeline has one already.
  package static func install(in pipeline: ChannelPipeline.SynchronousOperations) throws {
    if (try? pipeline.handler(type: TrafficPingResponder.self)) != nil { return }
    let http2 = try pipeline.handler(type: NIOHTTP2Handler.self)
    try pipeline.addHandler(TrafficPingResponder(), position: .before(http2))
  }

  package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    var input = self.unwrapInboundIn(data)
    // Complete a held header or PING with at most the bytes it can need from this read (the rest
    // of the read is scanned, and passed on, as it is, without copying it). Each round takes at
    // least one byte, and a round that leaves bytes over either ran out of input or ended with
    // the start of another frame.
    while var partial = self.partial {
      self.partial = nil
      let wanted = Self.frameHeaderLength + Self.pingPayloadLength - partial.readableBytes
      if var head = input.readSlice(length: min(wanted, input.readableBytes)) {
        partial.writeBuffer(&head)
      }
      self.scan(&partial, context: context)
      if partial.readableBytes > 0 {
        guard input.readableBytes > 0 else {
          self.hold(partial, context: context)
          return
        }
        self.partial = partial
      }
    }
    self.scan(&input, context: context)
    if input.readableBytes > 0 {
      self.hold(input, context: context)
    }
  }

  /// Passes on or answers everything in `input` up to an incomplete frame header or PING at its
  /// end, which is left unread.
  private func scan(_ input: inout ByteBuffer, context: ChannelHandlerContext) {
    // Bytes from `passStart` to the reader index are passed on as one slice.
    var passStart = input.readerIndex
    scan: while input.readableBytes > 0 {
      if self.prefaceRemaining > 0 {
        let count = min(self.prefaceRemaining, input.readableBytes)
        input.moveReaderIndex(forwardBy: count)
        self.prefaceRemaining -= count
        continue
      }
      if self.payloadRemaining > 0 {
        let count = min(self.payloadRemaining, input.readableBytes)
        input.moveReaderIndex(forwardBy: count)
        self.payloadRemaining -= count
        continue
      }
      // At the start of a frame: length (24 bits), type, flags, stream ID (31 bits).
      guard input.readableBytes >= Self.frameHeaderLength,
        let lengthHigh = input.getInteger(at: input.readerIndex, as: UInt8.self),
        let lengthLow = input.getInteger(at: input.readerIndex + 1, as: UInt16.self),
        let type = input.getInteger(at: input.readerIndex + 3, as: UInt8.self),
        let flags = input.getInteger(at: input.readerIndex + 4, as: UInt8.self),
        let streamID = input.getInteger(at: input.readerIndex + 5, as: UInt32.self)
      else { break scan }
      let length = Int(lengthHigh) << 16 | Int(lengthLow)

      let isPing = type == 0x6 && flags & 0x1 == 0 && length == Self.pingPayloadLength
      if isPing && streamID & 0x7FFF_FFFF == 0 && self.sawTraffic && context.channel.isWritable {
        guard input.readableBytes >= Self.frameHeaderLength + Self.pingPayloadLength else {
          break scan
        }
        self.pass(input, from: passStart, context: context)
        input.moveReaderIndex(forwardBy: Self.frameHeaderLength)
        if let payload = input.readSlice(length: Self.pingPayloadLength) {
          self.acknowledge(payload, context: context)
        }
        passStart = input.readerIndex
        self.sawTraffic = false
        continue
      }
      switch type {
      case 0x0, 0x1, 0x3, 0x8, 0x9:  // DATA, HEADERS, RST_STREAM, WINDOW_UPDATE, CONTINUATION
        self.sawTraffic = true
      default:
        break
      }
      input.moveReaderIndex(forwardBy: Self.frameHeaderLength)
      self.payloadRemaining = length
    }
    self.pass(input, from: passStart, context: context)
  }

  /// Keeps an incomplete frame header or PING (at most 16 bytes) until the rest arrives, in a
  /// buffer of its own so that the read it came from is not kept alive.
  private func hold(_ bytes: ByteBuffer, context: ChannelHandlerContext) {
    var copy = context.channel.allocator.buffer(
      capacity: Self.frameHeaderLength + Self.pingPayloadLength
    )
    copy.writeImmutableBuffer(bytes)
    self.partial = copy
  }

  package func channelReadComplete(context: ChannelHandlerContext) {
    if self.wroteAcks {
      self.wroteAcks = false
      context.flush()
    }
    context.fireChannelReadComplete()
  }

  /// Passes on the bytes from `start` up to the buffer's reader index, if any.
  private func pass(_ buffer: ByteBuffer, from start: Int, context: ChannelHandlerContext) {
    let count = buffer.readerIndex - start
    guard count > 0 else { return }
    // (`getSlice(at:)` refuses indices before the reader index, so move a copy's back.)
    var bytes = buffer
    bytes.moveReaderIndex(to: start)
    guard let slice = bytes.readSlice(length: count) else { return }
    context.fireChannelRead(self.wrapInboundOut(slice))
  }

  private func acknowledge(_ payload: ByteBuffer, context: ChannelHandlerContext) {
    var frame = context.channel.allocator.buffer(
      capacity: Self.frameHeaderLength + Self.pingPayloadLength
    )
    frame.writeInteger(UInt8(0))
    frame.writeInteger(UInt16(Self.pingPayloadLength))
    frame.writeInteger(UInt8(0x6))  // PING
    frame.writeInteger(UInt8(0x1))  // ACK
    frame.writeInteger(UInt32(0))  // stream 0
    frame.writeImmutableBuffer(payload)
    // NIOHTTP2Handler writes each of its frames whole within one call on this event loop, so a
    // frame written here always lands between two of its frames.
    context.write(self.wrapOutboundOut(.byteBuffer(frame)), promise: nil)
    self.wroteAcks = true
  }
}

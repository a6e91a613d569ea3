import GRPCConnection
import GRPCCore
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import RegistryPrimitives
import Testing

/// A raw HTTP/2 client that behaves like grpc-go's: it sends one unary call and, like its
/// bandwidth-delay-product estimator, a PING whenever DATA arrives and no PING is outstanding,
/// and it opens the windows again as it reads (64 KiB at a time: many flow-controlled rounds).
final class BDPProbingClient: ChannelInboundHandler, Sendable {
  typealias InboundIn = HTTP2Frame
  typealias OutboundOut = HTTP2Frame

  /// What the call ended with, once it ended.
  struct Outcome: Sendable {
    var grpcStatus: String?
    var goAway: HTTP2ErrorCode?
    var responseBytes = 0
    var pingsSent = 0
  }

  private let request: ByteBuffer
  private let state = Locked((outcome: Outcome(), pingOutstanding: false, finished: false))
  let done: EventLoopPromise<Outcome>

  init(message: [UInt8], eventLoop: any EventLoop) {
    var framed = ByteBuffer()
    framed.writeInteger(UInt8(0))
    framed.writeInteger(UInt32(message.count))
    framed.writeBytes(message)
    self.request = framed
    self.done = eventLoop.makePromise()
  }

  func channelActive(context: ChannelHandlerContext) {
    let stream = HTTP2StreamID(1)
    let headers: HPACKHeaders = [
      ":method": "POST", ":scheme": "http", ":path": "/test.Echo/Unary",
      ":authority": "localhost", "content-type": "application/grpc", "te": "trailers",
    ]
    context.write(
      self.wrapOutboundOut(
        HTTP2Frame(streamID: stream, payload: .headers(.init(headers: headers)))
      ),
      promise: nil
    )
    let data = HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(self.request), endStream: true))
    context.writeAndFlush(
      self.wrapOutboundOut(HTTP2Frame(streamID: stream, payload: data)),
      promise: nil
    )
    context.fireChannelActive()
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    let frame = self.unwrapInboundIn(data)
    switch frame.payload {
    case .data(let payload):
      let bytes = payload.data.readableBytes
      let ping = self.state.withLock { state -> Bool in
        state.outcome.responseBytes += bytes
        guard !state.pingOutstanding else { return false }
        state.pingOutstanding = true
        state.outcome.pingsSent += 1
        return true
      }
      if ping {
        let probe = HTTP2Frame(streamID: .rootStream, payload: .ping(HTTP2PingData(), ack: false))
        context.write(self.wrapOutboundOut(probe), promise: nil)
      }
      if bytes > 0 {
        for id in [frame.streamID, .rootStream] {
          let update = HTTP2Frame(streamID: id, payload: .windowUpdate(windowSizeIncrement: bytes))
          context.write(self.wrapOutboundOut(update), promise: nil)
        }
      }
      context.flush()
    case .ping(_, ack: true):
      self.state.withLock { $0.pingOutstanding = false }
    case .headers(let headers) where headers.endStream:
      self.finish { $0.grpcStatus = headers.headers.first(name: "grpc-status") }
    case .goAway(_, let errorCode, _):
      self.finish { $0.goAway = errorCode }
    default:
      ()
    }
  }

  func channelInactive(context: ChannelHandlerContext) {
    self.finish { _ in }
    context.fireChannelInactive()
  }

  /// Records the end and completes ``done``, once.
  private func finish(_ update: (inout Outcome) -> Void) {
    let outcome = self.state.withLock { state -> Outcome? in
      guard !state.finished else { return nil }
      state.finished = true
      update(&state.outcome)
      return state.outcome
    }
    if let outcome { self.done.succeed(outcome) }
  }
}

@Suite("HTTP2Server and a grpc-go client's BDP pings", .timeLimit(.minutes(1)))
struct LargeResponsePingTests {
  @Test("PINGs that follow each window of a large response are never strikes")
  func largeResponse() async throws {
    try await withOwnServer(client: .ours) { _, server in
      let port = try await server.listeningAddress.port
      let message = [UInt8](repeating: 7, count: 512 * 1024)
      let group = MultiThreadedEventLoopGroup.singleton
      let client = BDPProbingClient(message: message, eventLoop: group.next())
      let channel = try await ClientBootstrap(group: group)
        .channelInitializer { channel in
          channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(NIOHTTP2Handler(mode: .client))
            try channel.pipeline.syncOperations.addHandler(client)
          }
        }
        .connect(host: "127.0.0.1", port: port)
        .get()
      defer { channel.close(promise: nil) }
      let outcome = try await client.done.futureResult.get()
      #expect(outcome.goAway == nil, "the server sent GOAWAY: \(outcome)")
      #expect(outcome.grpcStatus == "0", "\(outcome)")
      #expect(outcome.responseBytes == message.count + 5)
      // Enough PINGs that, counted as strikes, they would have closed the connection.
      #expect(outcome.pingsSent >= 4, "\(outcome)")
    }
  }
}

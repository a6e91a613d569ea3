import GRPCConnection
import GRPCCore
import NIOCore
import NIOHTTP2
import NIOPosix
import RegistryPrimitives
import Testing

/// A raw HTTP/2 server that, like grpc-go's servers before 1.84 (grpc/grpc-go#2867), learns that a
/// request ended only from END_STREAM on a DATA frame, as gRPC's HTTP/2 protocol says a client
/// ends it; an END_STREAM on the request's HEADERS goes unnoticed. It records every request frame
/// and answers, without messages, once the request has ended.
final class DataEndStreamServer: ChannelInboundHandler, Sendable {
  typealias InboundIn = HTTP2Frame
  typealias OutboundOut = HTTP2Frame

  private let frames = Locked<[String]>([])
  /// The request frames received, in order: `HEADERS end=…`, `DATA <bytes> end=…`.
  var received: [String] { self.frames.withLock { $0 } }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    let frame = self.unwrapInboundIn(data)
    switch frame.payload {
    case .headers(let headers):
      self.frames.withLock { $0.append("HEADERS end=\(headers.endStream)") }
    case .data(let payload):
      self.frames.withLock {
        $0.append("DATA \(payload.data.readableBytes) end=\(payload.endStream)")
      }
      guard payload.endStream else { return }
      let headers = HTTP2Frame(
        streamID: frame.streamID,
        payload: .headers(.init(headers: [":status": "200", "content-type": "application/grpc"]))
      )
      let trailers = HTTP2Frame(
        streamID: frame.streamID,
        payload: .headers(.init(headers: ["grpc-status": "0"], endStream: true))
      )
      context.write(self.wrapOutboundOut(headers), promise: nil)
      context.writeAndFlush(self.wrapOutboundOut(trailers), promise: nil)
    default:
      ()
    }
  }
}

@Suite("How a request ends", .timeLimit(.minutes(1)))
struct RequestEndTests {
  @Test("a streaming request without messages ends on an empty DATA frame, not on its HEADERS")
  func emptyRequestEndsOnData() async throws {
    let recorder = DataEndStreamServer()
    let server = try await startRawHTTP2Server(recorder)
    defer { server.close(promise: nil) }
    let port = try #require(server.localAddress?.port)
    let connection = HTTP2Connection(
      target: .ipv4(host: "127.0.0.1", port: port),
      logger: makeLogger()
    )
    // Bounded: before the fix the call waited forever for a server that never saw the end.
    let neverEnded: @Sendable () -> any Error = {
      TestFailure("the call did not end: the server never saw its request end")
    }
    let responses = try await withTimeout(.seconds(10), onTimeout: neverEnded) {
      try await withGRPCClient(transport: connection) { client in
        try await client.bidirectionalStreaming(
          request: StreamingClientRequest(of: [UInt8].self) { _ in },
          descriptor: EchoMethod.collect,
          serializer: BytesSerializer(),
          deserializer: BytesDeserializer(),
          options: .defaults
        ) { response in
          try await response.messages.reduce(0) { count, _ in count + 1 }
        }
      }
    }
    #expect(responses == 0)
    #expect(recorder.received == ["HEADERS end=false", "DATA 0 end=true"])
  }
}

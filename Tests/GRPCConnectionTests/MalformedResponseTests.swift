import GRPCConnection
import GRPCCore
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import RegistryPrimitives
import Testing

/// A raw HTTP/2 server whose answer depends on the method called: `Good` answers one empty
/// message and status OK; every other method's name is a header block it gets wrong, in the
/// response headers (`Headers…`) or the trailers (`Trailers…`). Its own HTTP/2 layer does not
/// validate what it sends. It records the RST_STREAM codes it receives.
final class MalformedResponseServer: ChannelInboundHandler, Sendable {
  typealias InboundIn = HTTP2Frame
  typealias OutboundOut = HTTP2Frame

  private let paths = Locked<[HTTP2StreamID: String]>([:])
  private let resetsReceived = Locked<[HTTP2ErrorCode]>([])
  var resets: [HTTP2ErrorCode] { self.resetsReceived.withLock { $0 } }

  static let service = "test.Malformed"

  /// Each malformed block by method, and what the client's error should name.
  static let cases: [(method: String, names: String)] = [
    ("HeadersUppercaseName", "\"X-Upper\""),
    ("HeadersConnectionField", "'connection'"),
    ("HeadersCRLFValue", "CR, LF or NUL in the value of 'x-value'"),
    ("HeadersRequestPseudoHeader", "\":path\""),
    ("HeadersStatusTwice", "':status' twice"),
    ("HeadersStatusAfterRegular", "':status' after regular fields"),
    ("TrailersPseudoHeader", "\":status\""),
    ("TrailersNULValue", "CR, LF or NUL in the value of 'x-value'"),
  ]

  private static let good: HPACKHeaders = [":status": "200", "content-type": "application/grpc"]

  private static func responseHeaders(for method: String) -> HPACKHeaders {
    var headers = Self.good
    switch method {
    case "HeadersUppercaseName": headers.add(name: "X-Upper", value: "1")
    case "HeadersConnectionField": headers.add(name: "connection", value: "close")
    case "HeadersCRLFValue": headers.add(name: "x-value", value: "a\r\nb")
    case "HeadersRequestPseudoHeader": headers = [":status": "200", ":path": "/"]
    case "HeadersStatusTwice":
      headers = [":status": "200"]
      headers.add(name: ":status", value: "200")
    case "HeadersStatusAfterRegular":
      headers = ["content-type": "application/grpc", ":status": "200"]
    default: ()
    }
    return headers
  }

  private static func trailers(for method: String) -> HPACKHeaders {
    var trailers: HPACKHeaders = ["grpc-status": "0"]
    switch method {
    case "TrailersPseudoHeader": trailers.add(name: ":status", value: "200")
    case "TrailersNULValue": trailers.add(name: "x-value", value: "a\u{0}b")
    default: ()
    }
    return trailers
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    let frame = self.unwrapInboundIn(data)
    switch frame.payload {
    case .headers(let headers):
      let path = headers.headers.first(name: ":path") ?? ""
      self.paths.withLock { $0[frame.streamID] = path }
    case .rstStream(let code):
      self.resetsReceived.withLock { $0.append(code) }
    case .data(let payload) where payload.endStream:
      let path = self.paths.withLock { $0.removeValue(forKey: frame.streamID) } ?? ""
      let method = String(path.split(separator: "/").last ?? "")
      let headers = Self.responseHeaders(for: method)
      context.write(
        self.wrapOutboundOut(
          HTTP2Frame(streamID: frame.streamID, payload: .headers(.init(headers: headers)))
        ),
        promise: nil
      )
      if method.hasPrefix("Headers") {
        context.flush()
        return  // The client resets the stream.
      }
      var message = context.channel.allocator.buffer(capacity: 5)
      message.writeInteger(UInt8(0))
      message.writeInteger(UInt32(0))
      context.write(
        self.wrapOutboundOut(
          HTTP2Frame(streamID: frame.streamID, payload: .data(.init(data: .byteBuffer(message))))
        ),
        promise: nil
      )
      let trailers = HTTP2Frame.FramePayload.Headers(
        headers: Self.trailers(for: method),
        endStream: true
      )
      context.writeAndFlush(
        self.wrapOutboundOut(HTTP2Frame(streamID: frame.streamID, payload: .headers(trailers))),
        promise: nil
      )
    default:
      ()
    }
  }
}

@Suite("Malformed responses", .timeLimit(.minutes(1)))
struct MalformedResponseTests {
  /// The client's HTTP/2 layer does not validate header blocks (the client does, once per block:
  /// `HeaderBlock`). Each malformed block must fail its call with
  /// `internalError` naming the problem, reset the stream with PROTOCOL_ERROR when the server
  /// had not ended it, and leave the connection serving.
  @Test("a malformed response header block or trailers fails the call; the connection goes on")
  func malformedBlocks() async throws {
    let recorder = MalformedResponseServer()
    let server = try await startRawHTTP2Server(recorder, validating: false)
    defer { server.close(promise: nil) }
    let port = try #require(server.localAddress?.port)
    let connection = HTTP2Connection(
      target: .ipv4(host: "127.0.0.1", port: port),
      logger: makeLogger()
    )
    let options = {
      var options = CallOptions.defaults
      options.timeout = .seconds(10)
      return options
    }()

    try await withGRPCClient(transport: connection) { client in
      @Sendable func call(_ method: String) async throws -> [UInt8] {
        try await client.unary(
          request: ClientRequest(message: [1]),
          descriptor: MethodDescriptor(
            fullyQualifiedService: MalformedResponseServer.service,
            method: method
          ),
          serializer: BytesSerializer(),
          deserializer: BytesDeserializer(),
          options: options
        ) { try $0.message }
      }

      let first = try await call("Good")
      #expect(first == [])
      for (method, names) in MalformedResponseServer.cases {
        let error = await #expect(throws: RPCError.self, "\(method)") {
          _ = try await call(method)
        }
        #expect(error?.code == .internalError, "\(method): \(String(describing: error))")
        #expect(
          error?.message.contains(names) == true,
          "\(method): \(String(describing: error?.message))"
        )
        // The same connection still serves.
        let after = try await call("Good")
        #expect(after == [], "after \(method)")
      }
    }
    // One PROTOCOL_ERROR for each malformed response header block (the server had not ended
    // those streams); none for trailers, which end the stream.
    let headerCases = MalformedResponseServer.cases.filter { $0.method.hasPrefix("Headers") }
    #expect(recorder.resets == Array(repeating: .protocolError, count: headerCases.count))
  }
}

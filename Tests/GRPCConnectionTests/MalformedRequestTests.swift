import GRPCCore
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import RegistryPrimitives
import Testing

@testable import GRPCConnection

/// A raw HTTP/2 client connection whose HTTP/2 layer sends header blocks unchecked, and records
/// what the server answers.
final class RawHTTP2Client: ChannelInboundHandler, Sendable {
  typealias InboundIn = HTTP2Frame
  typealias OutboundOut = HTTP2Frame

  enum Event: Equatable {
    case reset(HTTP2StreamID, HTTP2ErrorCode)
    case status(HTTP2StreamID, String)
    case goAway(HTTP2ErrorCode, debug: String)
    case closed
  }

  private let recorded = Locked<[Event]>([])
  var events: [Event] { self.recorded.withLock { $0 } }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    let frame = self.unwrapInboundIn(data)
    switch frame.payload {
    case .rstStream(let code):
      self.recorded.withLock { $0.append(.reset(frame.streamID, code)) }
    case .headers(let headers):
      if let status = headers.headers.first(name: "grpc-status") {
        self.recorded.withLock { $0.append(.status(frame.streamID, status)) }
      }
    case .goAway(_, let code, let opaque):
      let debug = opaque.map { String(buffer: $0) } ?? ""
      self.recorded.withLock { $0.append(.goAway(code, debug: debug)) }
    default:
      ()
    }
  }

  func channelInactive(context: ChannelHandlerContext) {
    self.recorded.withLock { $0.append(.closed) }
    context.fireChannelInactive()
  }

  /// Connects to `port` on 127.0.0.1.
  static func connect(port: Int) async throws -> (RawHTTP2Client, any Channel) {
    let recorder = RawHTTP2Client()
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .channelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.addHandler(NIOHTTP2Handler.unvalidated(mode: .client))
          try channel.pipeline.syncOperations.addHandler(recorder)
        }
      }
      .connect(host: "127.0.0.1", port: port)
      .get()
    return (recorder, channel)
  }

  /// Sends `headers` on stream `id`, then one empty message ending the request.
  static func send(_ headers: HPACKHeaders, on id: Int, _ channel: any Channel) async throws {
    let streamID = HTTP2StreamID(id)
    channel.write(HTTP2Frame(streamID: streamID, payload: .headers(.init(headers: headers))))
      .whenComplete { _ in }
    let message = GRPCWire.frame([])
    try await channel.writeAndFlush(
      HTTP2Frame(
        streamID: streamID,
        payload: .data(.init(data: .byteBuffer(message), endStream: true))
      )
    ).get()
  }

  /// Polls until `condition` holds for the events, for at most `timeout`.
  func waitFor(
    _ what: String,
    within timeout: Duration = .seconds(10),
    _ condition: ([Event]) -> Bool
  ) async throws {
    let deadline = ContinuousClock.now + timeout
    while !condition(self.events) {
      if ContinuousClock.now >= deadline {
        throw TestFailure("\(what) did not happen within \(timeout); events: \(self.events)")
      }
      try await Task.sleep(for: .milliseconds(10))
    }
  }
}

/// The server's HTTP/2 layer does not validate header blocks; `ServerStreamStateMachine` does,
/// once per block (`HeaderBlock`). These drive it from a client whose HTTP/2 layer checks nothing.
@Suite("Malformed requests", .timeLimit(.minutes(1)))
struct MalformedRequestTests {
  @Test("each malformed request block is reset with PROTOCOL_ERROR; the connection goes on")
  func malformedRequests() async throws {
    try await withOwnServer(client: .ours) { _, transport in
      let port = try await transport.listeningAddress.port
      let (recorder, channel) = try await RawHTTP2Client.connect(port: port)
      defer { channel.close(promise: nil) }

      let cases = ServerStateMachineTests.malformedRequests
      for (index, (headers, _)) in cases.enumerated() {
        try await RawHTTP2Client.send(headers, on: 1 + 2 * index, channel)
      }
      let good = HTTP2StreamID(1 + 2 * cases.count)
      try await RawHTTP2Client.send(
        ServerStateMachineTests.requestHeaders(),
        on: 1 + 2 * cases.count,
        channel
      )

      try await recorder.waitFor("the good call's status") { $0.contains(.status(good, "0")) }
      var resets: Set<HTTP2StreamID> = []
      var answered: [HTTP2StreamID] = []
      for event in recorder.events {
        switch event {
        case .reset(let id, .protocolError): resets.insert(id)
        case .status(let id, _) where id != good: answered.append(id)
        default: ()
        }
      }
      let malformed = Set((0 ..< cases.count).map { HTTP2StreamID(1 + 2 * $0) })
      #expect(resets == malformed)
      #expect(answered.isEmpty, "malformed requests were answered: \(recorder.events)")
      #expect(!recorder.events.contains(.closed))
    }
  }

  @Test("a flood of malformed streams is closed with GOAWAY ENHANCE_YOUR_CALM")
  func malformedFlood() async throws {
    let config = HTTP2Server.Config.defaults {
      $0.maxResetsPerWindow = 20
      $0.resetWindow = .seconds(60)
    }
    try await withOwnServer(client: .ours, config: config) { caller, transport in
      let port = try await transport.listeningAddress.port
      let (recorder, channel) = try await RawHTTP2Client.connect(port: port)
      defer { channel.close(promise: nil) }
      let upper = ServerStateMachineTests.requestHeaders(extra: [("X-Upper", "1")])
      for index in 0 ..< 25 {
        try? await RawHTTP2Client.send(upper, on: 1 + 2 * index, channel)
      }
      try await recorder.waitFor("GOAWAY and close") {
        $0.contains(.goAway(.enhanceYourCalm, debug: "too_many_malformed_streams"))
          && $0.contains(.closed)
      }
      // Other clients are served.
      let echoed = try await caller.echoCall(
        [7],
        method: EchoMethod.unary,
        metadata: [:],
        options: .defaults
      )
      #expect(try echoed.message == [7])
    }
  }
}

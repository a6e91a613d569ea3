import GRPCConnection
import GRPCCore
import GRPCNIOTransportHTTP2
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import RegistryPrimitives
import Synchronization
import Testing

/// A minimal gRPC echo server on raw swift-nio-http2 that behaves like grpc-go's BDP estimator:
/// it sends a PING with every response. swift-nio-http2's default DoS limit (200 PING/SETTINGS
/// per 30 s) makes a client close the connection after ~200 such responses.
final class PingingEchoHandler: ChannelInboundHandler {
  typealias InboundIn = HTTP2Frame
  typealias OutboundOut = HTTP2Frame

  private var requests: [HTTP2StreamID: ByteBuffer] = [:]
  private let counter: PingCounter
  private let sendPings: Bool

  init(counter: PingCounter, sendPings: Bool = true) {
    self.counter = counter
    self.sendPings = sendPings
  }

  /// The server receives a PING ACK per response; unlike grpc-go, swift-nio-http2 counts those
  /// against its own control-frame limit, so the test server raises it.
  static var serverConfiguration: NIOHTTP2Handler.ConnectionConfiguration {
    var configuration = NIOHTTP2Handler.ConnectionConfiguration()
    configuration.controlFrameRateLimit.maximumCount = 100_000
    return configuration
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    let frame = self.unwrapInboundIn(data)
    switch frame.payload {
    case .headers(let headers):
      self.requests[frame.streamID] = ByteBuffer()
      if headers.endStream {
        self.respond(streamID: frame.streamID, context: context)
      }
    case .data(let payload):
      if case .byteBuffer(var buffer) = payload.data {
        let count = buffer.readableBytes
        self.requests[frame.streamID, default: ByteBuffer()].writeBuffer(&buffer)
        if count > 0 {
          let update = HTTP2Frame(
            streamID: .rootStream,
            payload: .windowUpdate(windowSizeIncrement: count)
          )
          context.write(self.wrapOutboundOut(update), promise: nil)
        }
      }
      if payload.endStream {
        self.respond(streamID: frame.streamID, context: context)
      }
    default:
      ()
    }
  }

  private func respond(streamID: HTTP2StreamID, context: ChannelHandlerContext) {
    let body = self.requests.removeValue(forKey: streamID) ?? ByteBuffer()
    self.counter.increment()
    let ping = HTTP2Frame(
      streamID: .rootStream,
      payload: .ping(HTTP2PingData(withInteger: UInt64(self.counter.value)), ack: false)
    )
    let headers = HTTP2Frame(
      streamID: streamID,
      payload: .headers(.init(headers: [":status": "200", "content-type": "application/grpc"]))
    )
    let data = HTTP2Frame(streamID: streamID, payload: .data(.init(data: .byteBuffer(body))))
    let trailers = HTTP2Frame(
      streamID: streamID,
      payload: .headers(.init(headers: ["grpc-status": "0"], endStream: true))
    )
    for frame in self.sendPings ? [ping, headers, data, trailers] : [headers, data, trailers] {
      context.write(self.wrapOutboundOut(frame), promise: nil)
    }
    context.flush()
  }
}

final class PingCounter: Sendable {
  private let count = Locked(0)
  private let connections = Locked(0)
  var value: Int { self.count.withLock { $0 } }
  var accepted: Int { self.connections.withLock { $0 } }
  func increment() { self.count.withLock { $0 += 1 } }
  func accept() { self.connections.withLock { $0 += 1 } }
}

/// Starts a raw swift-nio-http2 echo server on 127.0.0.1.
func startRawEchoServer(counter: PingCounter, sendPings: Bool) async throws -> any Channel {
  try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
    .childChannelInitializer { channel in
      counter.accept()
      return channel.eventLoop.makeCompletedFuture {
        try channel.pipeline.syncOperations.addHandler(
          NIOHTTP2Handler(
            mode: .server,
            connectionConfiguration: PingingEchoHandler.serverConfiguration
          )
        )
        try channel.pipeline.syncOperations.addHandler(
          PingingEchoHandler(counter: counter, sendPings: sendPings)
        )
      }
    }
    .bind(host: "127.0.0.1", port: 0)
    .get()
}

@Suite("grpc-go style BDP pings", .timeLimit(.minutes(2)))
struct BDPPingTests {
  @Test("1,000 calls with a server PING per response on one connection")
  func survivesBDPPings() async throws {
    let counter = PingCounter()
    let serverChannel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .childChannelInitializer { channel in
        counter.accept()
        return channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.addHandler(
            NIOHTTP2Handler(
              mode: .server,
              connectionConfiguration: PingingEchoHandler.serverConfiguration
            )
          )
          try channel.pipeline.syncOperations.addHandler(PingingEchoHandler(counter: counter))
        }
      }
      .bind(host: "127.0.0.1", port: 0)
      .get()
    let port = try #require(serverChannel.localAddress?.port)

    let connection = HTTP2Connection(
      target: .ipv4(host: "127.0.0.1", port: port),
      logger: makeLogger()
    )
    try await withThrowingDiscardingTaskGroup { group in
      let client = GRPCClient(transport: connection)
      group.addTask { try await client.runConnections() }
      for i in 0 ..< 1000 {
        let message = [UInt8(truncatingIfNeeded: i), 1, 2]
        let response = try await client.echo(message)
        #expect(try response.message == message)
      }
      client.beginGracefulShutdown()
    }
    #expect(counter.value == 1000)
    #expect(counter.accepted == 1)
    try await serverChannel.close()
  }

  @Test("the stock transport fails on the same server (documents why HTTP2Connection exists)")
  func stockTransportFails() async throws {
    let counter = PingCounter()
    let serverChannel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .childChannelInitializer { channel in
        counter.accept()
        return channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.addHandler(
            NIOHTTP2Handler(
              mode: .server,
              connectionConfiguration: PingingEchoHandler.serverConfiguration
            )
          )
          try channel.pipeline.syncOperations.addHandler(PingingEchoHandler(counter: counter))
        }
      }
      .bind(host: "127.0.0.1", port: 0)
      .get()
    let port = try #require(serverChannel.localAddress?.port)

    let transport = try HTTP2ClientTransport.Posix(
      target: .ipv4(address: "127.0.0.1", port: port),
      transportSecurity: .plaintext
    )
    var failedAt: Int?
    try await withThrowingDiscardingTaskGroup { group in
      let client = GRPCClient(transport: transport)
      group.addTask { try await client.runConnections() }
      for i in 0 ..< 400 {
        do {
          _ = try await client.echo([1]).message
        } catch {
          failedAt = i
          break
        }
      }
      client.beginGracefulShutdown()
    }
    print(
      "stock HTTP2ClientTransport.Posix: first failure at call \(failedAt.map(String.init) ?? "none")"
    )
    #expect(failedAt != nil)
    try await serverChannel.close()
  }
}

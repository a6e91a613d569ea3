#if Tools
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle

/// Serves the Prometheus text format at `GET /metrics` over plain HTTP/1.1 until graceful
/// shutdown. Prints `METRICS <host>:<port>` once it listens (port 0 picks a free port).
struct MetricsServer: Service {
  let host: String
  let port: Int
  let registry: PrometheusCollectorRegistry

  func run() async throws {
    let registry = self.registry
    let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.configureHTTPServerPipeline()
          try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(registry: registry))
        }
      }
      .bind(host: self.host, port: self.port)
      .get()
    print("METRICS \(self.host):\(channel.localAddress?.port ?? self.port)")
    fflush(nil)
    await withGracefulShutdownHandler {
      await withTaskCancellationHandler {
        try? await channel.closeFuture.get()
      } onCancel: {
        channel.close(promise: nil)
      }
    } onGracefulShutdown: {
      channel.close(promise: nil)
    }
  }
}

/// Answers `GET /metrics` with the registry's text; anything else with 404.
final class MetricsHTTPHandler: ChannelInboundHandler {
  typealias InboundIn = HTTPServerRequestPart
  typealias OutboundOut = HTTPServerResponsePart

  private let registry: PrometheusCollectorRegistry
  private var head: HTTPRequestHead?

  init(registry: PrometheusCollectorRegistry) {
    self.registry = registry
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    switch self.unwrapInboundIn(data) {
    case .head(let head):
      self.head = head
    case .body:
      break
    case .end:
      guard let head = self.head else { return }
      self.head = nil
      let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? ""
      let status: HTTPResponseStatus
      let body: [UInt8]
      var headers = HTTPHeaders()
      if head.method == .GET, path == "/metrics" {
        status = .ok
        body = self.registry.emitToBuffer()
        headers.add(name: "Content-Type", value: "text/plain; version=0.0.4; charset=utf-8")
      } else {
        status = .notFound
        body = Array("Not found: metrics are served at GET /metrics\n".utf8)
        headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
      }
      headers.add(name: "Content-Length", value: "\(body.count)")
      if !head.isKeepAlive { headers.add(name: "Connection", value: "close") }
      context.write(
        self.wrapOutboundOut(
          .head(HTTPResponseHead(version: head.version, status: status, headers: headers))
        ),
        promise: nil
      )
      context.write(
        self.wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))),
        promise: nil
      )
      let written = context.eventLoop.makePromise(of: Void.self)
      context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: written)
      if !head.isKeepAlive {
        let channel = context.channel
        written.futureResult.whenComplete { _ in channel.close(promise: nil) }
      }
    }
  }
}
#endif

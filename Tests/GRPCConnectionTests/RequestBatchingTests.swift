import Dispatch
import GRPCCore
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP2
import NIOPosix
import RegistryPrimitives
import Testing

@testable import GRPCConnection

/// Requests of calls started together leave in one flush (`ActiveConnection.scheduleFlush`): one
/// event-loop task and one write system call for all of them, not one each. Both sides hand
/// their streams to the loop with `EventLoopHandOff`.
@Suite("Client requests flushed together")
struct RequestBatchingTests {
  /// Blocks `loop` in a task until the returned semaphore is signalled; returns once the loop
  /// is held, so that work handed to it meanwhile waits.
  static func hold(_ loop: any EventLoop) -> DispatchSemaphore {
    let held = DispatchSemaphore(value: 0)
    let release = DispatchSemaphore(value: 0)
    loop.execute {
      held.signal()
      release.wait()
    }
    held.wait()
    return release
  }

  @Test("items handed off while the loop is busy arrive in one batch; later ones in the next")
  func handOffBatches() async throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let loop = group.next()
    let handOff = EventLoopHandOff<Int>(eventLoop: loop)
    let batches = Locked<[[Int]]>([])
    @Sendable func add(_ item: Int) {
      guard handOff.add(item) else { return }
      loop.execute { batches.withLock { $0.append(handOff.takeBatch()) } }
    }

    let release = Self.hold(loop)
    for item in 1 ... 5 { add(item) }
    release.signal()
    try await loop.submit {}.get()
    add(6)
    try await loop.submit {}.get()

    #expect(batches.withLock { $0 } == [[1, 2, 3, 4, 5], [6]])
    try await group.shutdownGracefully()
  }

  /// Counts the flushes that reach the channel (it sits next to the head of the pipeline).
  final class FlushCounter: ChannelOutboundHandler, Sendable {
    typealias OutboundIn = HTTP2Frame
    let flushes = Locked(0)

    func flush(context: ChannelHandlerContext) {
      self.flushes.withLock { $0 += 1 }
      context.flush()
    }
  }

  @Test("three calls queued while the event loop is busy: one flush carries all their frames")
  func callsQueuedTogetherShareOneFlush() async throws {
    let counter = FlushCounter()
    let loop = NIOAsyncTestingEventLoop()
    let channel = try await NIOAsyncTestingChannel(loop: loop) { channel in
      try channel.pipeline.syncOperations.addHandler(counter)
      try channel.pipeline.syncOperations.addHandler(
        ConnectionHandler.withoutPeer(on: channel.eventLoop)
      )
    }
    try await channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 1))
    let handler = try await channel.pipeline.handler(type: ConnectionHandler.self).map {
      NIOLoopBound($0, eventLoop: loop)
    }.get()
    let connection = ActiveConnection(
      id: 1,
      channel: channel,
      handler: handler,
      scheme: "http",
      streamWindowSize: 65535
    )
    let flushesBefore = counter.flushes.withLock { $0 }

    // Hold the event loop so that the three calls queue their requests before it runs.
    let release = Self.hold(loop)
    var streams: [ClientStream] = []
    for index in 0 ..< 3 {
      let stream = ClientStream(
        connection: connection,
        path: "/test.Echo/Get",
        authority: "localhost",
        timeout: nil,
        maxRequestBytes: 1 << 20,
        maxResponseBytes: 1 << 20
      )
      try await stream.write(.metadata([:]))
      try await stream.write(.message([UInt8(index)]))
      stream.finish()
      streams.append(stream)
    }
    release.signal()
    await loop.run()

    var frames: [HTTP2Frame] = []
    while let frame = try await channel.readOutbound(as: HTTP2Frame.self) {
      frames.append(frame)
    }
    let flushes = counter.flushes.withLock { $0 } - flushesBefore
    #expect(flushes == 1, "one flush for the three calls' requests, not \(flushes)")
    #expect(frames.count == 6, "HEADERS and the DATA that ends the request, for each call")
    let opened = frames.compactMap { frame -> HTTP2StreamID? in
      if case .headers = frame.payload { return frame.streamID }
      return nil
    }
    #expect(opened == [1, 3, 5].map { HTTP2StreamID($0) })
    let ended = frames.filter { frame in
      if case .data(let data) = frame.payload { return data.endStream }
      return false
    }
    #expect(ended.count == 3)
    for stream in streams { stream.cancel(RPCError(code: .cancelled, message: "test over")) }
    await loop.run()
    _ = try? await channel.finish()
  }
}

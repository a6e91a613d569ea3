internal import NIOCore

/// An established HTTP/2 connection: the channel, its event loop and its connection handler.
final class ActiveConnection: Sendable {
  let id: UInt64
  let channel: any Channel
  let eventLoop: any EventLoop
  let handler: NIOLoopBound<ConnectionHandler>
  let scheme: String
  let streamWindowSize: Int
  let remotePeer: String
  let localPeer: String
  /// Moves a stream this connection could not open to another connection.
  let onRefusedStream: (@Sendable (ClientStream) -> Void)?
  /// Streams whose request parts wait for the event loop (see ``scheduleFlush(_:)``).
  private let waitingStreams: EventLoopHandOff<ClientStream>

  init(
    id: UInt64,
    channel: any Channel,
    handler: NIOLoopBound<ConnectionHandler>,
    scheme: String,
    streamWindowSize: Int,
    onRefusedStream: (@Sendable (ClientStream) -> Void)? = nil
  ) {
    self.onRefusedStream = onRefusedStream
    self.id = id
    self.channel = channel
    self.eventLoop = channel.eventLoop
    self.waitingStreams = EventLoopHandOff(eventLoop: channel.eventLoop)
    self.handler = handler
    self.scheme = scheme
    self.streamWindowSize = streamWindowSize
    self.remotePeer = Self.describe(channel.remoteAddress)
    self.localPeer = Self.describe(channel.localAddress)
  }

  /// Hands `stream`'s queued request parts to the event loop. Streams that queue parts while a
  /// hand-off is pending join it (``EventLoopHandOff``): one event-loop task writes every waiting
  /// stream's parts and flushes once, so calls started together leave in one write system call
  /// (one task and one `writev` per call before, BENCHMARKS.md). ``ClientStream`` hands itself
  /// off at most once per batch, with its own flag.
  func scheduleFlush(_ stream: ClientStream) {
    guard self.waitingStreams.add(stream) else { return }
    self.eventLoop.execute {
      self.handler.value.flush(self.waitingStreams.takeBatch(), on: self)
    }
  }

  /// grpc's peer notation: `ipv4:127.0.0.1:2379`, `ipv6:[::1]:2379`, `unix:/path`.
  static func describe(_ address: SocketAddress?) -> String {
    guard let address else { return "unknown" }
    switch address {
    case .v4:
      return "ipv4:\(address.ipAddress ?? "?"):\(address.port ?? 0)"
    case .v6:
      return "ipv6:[\(address.ipAddress ?? "?")]:\(address.port ?? 0)"
    case .unixDomainSocket:
      return "unix:\(address.pathname ?? "")"
    }
  }
}

import GRPCConnection
public import GRPCNIOTransportHTTP2
import NIOCore

extension HTTP2ServerTransport.Posix.Config {
  /// Installs a `TrafficPingResponder` on every accepted connection, so that grpc-go clients are
  /// not disconnected every ~200 calls by swift-nio-http2's control-frame limit (200 PINGs per
  /// 30 s, which grpc-go's bandwidth estimator reaches by pinging with nearly every response).
  ///
  /// PINGs that follow a frame of real traffic are answered by the responder; other PINGs still
  /// reach `NIOHTTP2Handler` and its limit, so a peer that only pings is still disconnected.
  /// ``RegisteredServer`` does this unless ``RegisteredServer/Config/answersTrafficPings`` is off;
  /// call it for a `GRPCServer` you build yourself. It chains with an `onAcceptTCPConnection`
  /// callback set before it (which runs first); calling it twice installs one responder.
  public mutating func answerTrafficPings() {
    let previous = self.channelDebuggingCallbacks.onAcceptTCPConnection
    self.channelDebuggingCallbacks.onAcceptTCPConnection = { channel in
      // Both run on the channel's event loop: the transport calls this there after building the
      // pipeline, before the connection reads.
      guard let previous else {
        return channel.eventLoop.makeCompletedFuture {
          try TrafficPingResponder.install(in: channel.pipeline.syncOperations)
        }
      }
      // (The previous callback's future may complete on another event loop.)
      return previous(channel).hop(to: channel.eventLoop).flatMapThrowing {
        try TrafficPingResponder.install(in: channel.pipeline.syncOperations)
      }
    }
  }
}

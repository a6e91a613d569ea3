import NIOCore

/// Copies bytes between two channels on the same event loop, one handler in each pipeline.
///
/// Reads on one side wait while the other side cannot take more (backpressure); an end of input
/// becomes a half-close of the partner once its pending writes are out, and a closed channel
/// closes its partner the same way, then fully.
final class GlueHandler {
  private var partner: GlueHandler?
  private var context: ChannelHandlerContext?
  private var pendingRead = false

  private init() {}

  /// Two handlers that copy to each other.
  static func matchedPair() -> (GlueHandler, GlueHandler) {
    let first = GlueHandler()
    let second = GlueHandler()
    first.partner = second
    second.partner = first
    return (first, second)
  }

  private func partnerWrite(_ data: NIOAny) {
    self.context?.write(data, promise: nil)
  }

  private func partnerFlush() {
    self.context?.flush()
  }

  private func partnerWriteEOF() {
    self.context?.close(mode: .output, promise: nil)
  }

  private func partnerCloseFull() {
    guard let context = self.context else { return }
    context.flush()
    // Half-closing first lets what is already written reach the peer; a full close right away
    // would drop it. The full close follows in any case (also when the output was already shut).
    let channel = context.channel
    let outputClosed = context.eventLoop.makePromise(of: Void.self)
    context.close(mode: .output, promise: outputClosed)
    outputClosed.futureResult.whenComplete { _ in channel.close(promise: nil) }
  }

  private func partnerBecameWritable() {
    if self.pendingRead {
      self.pendingRead = false
      self.context?.read()
    }
  }

  private var partnerWritable: Bool {
    self.context?.channel.isWritable ?? false
  }
}

extension GlueHandler: ChannelDuplexHandler {
  typealias InboundIn = NIOAny
  typealias OutboundIn = NIOAny
  typealias OutboundOut = NIOAny

  func handlerAdded(context: ChannelHandlerContext) {
    self.context = context
  }

  func handlerRemoved(context: ChannelHandlerContext) {
    self.context = nil
    self.partner = nil
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    self.partner?.partnerWrite(data)
  }

  func channelReadComplete(context: ChannelHandlerContext) {
    self.partner?.partnerFlush()
  }

  func channelInactive(context: ChannelHandlerContext) {
    self.partner?.partnerCloseFull()
  }

  func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
    if let event = event as? ChannelEvent, case .inputClosed = event {
      self.partner?.partnerWriteEOF()
    }
    context.fireUserInboundEventTriggered(event)
  }

  func errorCaught(context: ChannelHandlerContext, error: any Error) {
    self.partner?.partnerCloseFull()
    context.close(promise: nil)
  }

  func channelWritabilityChanged(context: ChannelHandlerContext) {
    if context.channel.isWritable {
      self.partner?.partnerBecameWritable()
    }
    context.fireChannelWritabilityChanged()
  }

  func read(context: ChannelHandlerContext) {
    if let partner = self.partner, partner.partnerWritable {
      context.read()
    } else {
      self.pendingRead = true
    }
  }
}

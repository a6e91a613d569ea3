internal import Logging
internal import NIOCore
internal import NIOHTTP2

// Keep-alive and stall detection: the timers and the I/O. `ConnectionLiveness` decides.
extension ConnectionHandler {
  func scheduleKeepalive(context: ChannelHandlerContext) {
    guard let fireAt = self.liveness.firstKeepaliveCheck, !self.closed else { return }
    self.armKeepalive(at: fireAt, context: context)
  }

  func armKeepalive(at deadline: NIODeadline, context: ChannelHandlerContext) {
    self.keepaliveTimer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
      self.keepaliveTimerFired()
    }
  }

  func keepaliveTimerFired() {
    guard let context = self.context, !self.closed,
      let action = self.liveness.keepaliveTimerFired(at: .now(), hasStreams: !self.streams.isEmpty)
    else { return }
    switch action {
    case .rearm(let deadline):
      self.armKeepalive(at: deadline, context: context)
    case .sendPing(let timeout, let rearm):
      let frame = HTTP2Frame(streamID: .rootStream, payload: .ping(self.pingData, ack: false))
      context.writeAndFlush(self.wrapOutboundOut(frame), promise: nil)
      self.keepaliveTimeout = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
        self.keepaliveTimedOut()
      }
      self.armKeepalive(at: rearm, context: context)
    }
  }

  func keepaliveTimedOut() {
    self.keepaliveTimeout = nil
    self.liveness.keepalivePingTimedOut()
    guard let context = self.context, !self.closed else { return }
    self.logger.info("Keep-alive PING not acknowledged in time; closing the connection")
    if self.closeError == nil {
      self.closeError = HTTP2ConnectionError(
        code: .connectionClosed,
        message: "The server did not acknowledge a keep-alive PING in time."
      )
    }
    context.close(promise: nil)
  }

  // MARK: - Stall detection

  /// Checks when the connection will have been silent for the stall period (or a period from now
  /// if frames are arriving).
  func scheduleStallCheck(context: ChannelHandlerContext) {
    guard let deadline = self.liveness.nextStallCheck(at: .now()), !self.closed else { return }
    self.armStallCheck(at: deadline, context: context)
  }

  func armStallCheck(at deadline: NIODeadline, context: ChannelHandlerContext) {
    self.stallTimer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
      self.stallCheck()
    }
  }

  func stallCheck() {
    self.stallTimer = nil
    guard let context = self.context, !self.closed, !self.draining else { return }
    let waiting = self.streams.values.contains { $0.machine.response == .awaitingHeaders }
    let action = self.liveness.stallCheckFired(at: .now(), callsWaiting: waiting)
    self.logger.trace(
      "Stall check",
      metadata: [
        "grpc.calls_waiting": "\(waiting)", "grpc.action": "\(action)",
        "grpc.ping_in_flight": "\(self.liveness.stallPingInFlight)",
        "grpc.keepalive_in_flight": "\(self.liveness.keepalivePingInFlight)",
        "grpc.frames_since_ping": "\(self.liveness.streamFramesSinceStallPing)",
      ]
    )
    switch action {
    case .stop:
      // Re-armed by the next stream.
      return
    case .rearm(let deadline):
      self.armStallCheck(at: deadline, context: context)
    case .sendPing(let timeout, let rearm):
      let frame = HTTP2Frame(streamID: .rootStream, payload: .ping(self.pingData, ack: false))
      context.writeAndFlush(self.wrapOutboundOut(frame), promise: nil)
      self.stallPingTimeout = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
        self.stallPingTimedOut()
      }
      self.armStallCheck(at: rearm, context: context)
    }
  }

  func stallPingTimedOut() {
    self.stallPingTimeout = nil
    let action = self.liveness.stallPingTimedOut()
    guard let context = self.context, !self.closed else { return }
    let waiting = self.streams.values.filter { $0.machine.response == .awaitingHeaders }.count
    if action == .close {
      self.logger.warning(
        "Server did not acknowledge a PING while calls waited; closing the connection",
        metadata: ["grpc.waiting_calls": "\(waiting)"]
      )
      if self.closeError == nil {
        self.closeError = HTTP2ConnectionError(
          code: .connectionClosed,
          message:
            "The server stopped answering: a PING sent while calls waited was not acknowledged."
        )
      }
      context.close(promise: nil)
      return
    }
    self.logger.warning(
      "Server did not acknowledge a PING while calls waited; no new calls on this connection",
      metadata: ["grpc.waiting_calls": "\(waiting)"]
    )
    self.beginDraining(
      reason: "the server stopped answering (PING not acknowledged)",
      context: context
    )
  }
}

internal import NIOCore

/// Keep-alive and stall detection of one client connection: when to send a PING, and what a PING
/// left unacknowledged means.
///
/// A plain value: ``ConnectionHandler`` feeds it events with the time they happened and carries
/// out what it answers (arm a timer, write a PING, close or drain the connection); the decisions
/// are unit-tested without a channel (`ConnectionLivenessTests`).
///
/// - Keep-alive (grpc's client keep-alive): once `interval` has passed without a frame read, a
///   PING (only while calls are open unless `permitWithoutCalls`); no acknowledgement within
///   `timeout` closes the connection.
/// - Stall detection: while a call waits for its response headers and nothing was read for
///   `silence`, a PING; one per silent period (a server that answers PINGs but not the call is
///   slow, not stalled, and grpc-go punishes PINGs without data between them). No acknowledgement
///   within `pingTimeout` drains the connection (or closes it, `closesConnection`).
struct ConnectionLiveness {
  enum KeepaliveAction: Equatable {
    /// Check again at this time.
    case rearm(NIODeadline)
    /// Send a PING, expect its acknowledgement within the timeout, check again at this time.
    case sendPing(timeout: TimeAmount, rearm: NIODeadline)
  }

  enum StallAction: Equatable {
    /// No call waits: no timer until the next stream opens.
    case stop
    /// Check again at this time.
    case rearm(NIODeadline)
    /// Send a PING, expect its acknowledgement within the timeout, check again at this time.
    case sendPing(timeout: TimeAmount, rearm: NIODeadline)
  }

  enum StallTimeoutAction: Equatable {
    case close
    case drain
  }

  private let keepalive: HTTP2Connection.Keepalive?
  private let stall: HTTP2Connection.StallDetection?
  /// When the last frame was read (or, after a keep-alive PING, when it was sent).
  private(set) var lastRead: NIODeadline
  private(set) var keepalivePingInFlight = false
  private(set) var stallPingInFlight = false
  /// HEADERS or DATA arrived since the last stall PING (so another one may be sent).
  private(set) var streamFramesSinceStallPing = true

  init(
    keepalive: HTTP2Connection.Keepalive?,
    stallDetection: HTTP2Connection.StallDetection?,
    now: NIODeadline
  ) {
    self.keepalive = keepalive
    self.stall = stallDetection
    self.lastRead = now
  }

  /// Whether the time of each frame read matters.
  var tracksReads: Bool { self.keepalive != nil || self.stall != nil }

  /// A frame was read; `streamFrame` for HEADERS and DATA.
  mutating func frameRead(at now: NIODeadline, streamFrame: Bool) {
    if self.tracksReads {
      self.lastRead = now
    }
    if streamFrame {
      self.streamFramesSinceStallPing = true
    }
  }

  /// The acknowledgement of this connection's PING: nothing is in flight any more.
  mutating func pingAcknowledged() {
    self.keepalivePingInFlight = false
    self.stallPingInFlight = false
  }

  // MARK: - Keep-alive

  /// When the keep-alive timer first fires (after the server's SETTINGS); `nil` without
  /// keep-alive.
  var firstKeepaliveCheck: NIODeadline? {
    self.keepalive.map { self.lastRead + TimeAmount($0.interval) }
  }

  /// The keep-alive timer fired.
  mutating func keepaliveTimerFired(at now: NIODeadline, hasStreams: Bool) -> KeepaliveAction? {
    guard let keepalive = self.keepalive else { return nil }
    let interval = TimeAmount(keepalive.interval)
    if now - self.lastRead < interval {
      // Frames arrived meanwhile; the connection is evidently alive.
      return .rearm(self.lastRead + interval)
    }
    // The interval counts from now on, PING or not.
    self.lastRead = now
    if !self.keepalivePingInFlight, keepalive.permitWithoutCalls || hasStreams {
      self.keepalivePingInFlight = true
      return .sendPing(timeout: TimeAmount(keepalive.timeout), rearm: now + interval)
    }
    return .rearm(now + interval)
  }

  /// The keep-alive PING was not acknowledged in time: the connection is closed.
  mutating func keepalivePingTimedOut() {
    self.keepalivePingInFlight = false
  }

  // MARK: - Stall detection

  /// When to check for silence: when the connection will have been silent for the stall period,
  /// or a period from now if it already has been. `nil` without stall detection.
  func nextStallCheck(at now: NIODeadline) -> NIODeadline? {
    guard let stall = self.stall else { return nil }
    let silence = TimeAmount(stall.silence)
    let silentAt = self.lastRead + silence
    return silentAt > now ? silentAt : now + silence
  }

  /// The stall timer fired; `callsWaiting` when a call waits for its response headers.
  mutating func stallCheckFired(at now: NIODeadline, callsWaiting: Bool) -> StallAction {
    guard let stall = self.stall, callsWaiting else { return .stop }
    let silent = now - self.lastRead >= TimeAmount(stall.silence)
    let rearm = self.nextStallCheck(at: now) ?? now
    if silent, !self.stallPingInFlight, !self.keepalivePingInFlight,
      self.streamFramesSinceStallPing
    {
      self.streamFramesSinceStallPing = false
      self.stallPingInFlight = true
      return .sendPing(timeout: TimeAmount(stall.pingTimeout), rearm: rearm)
    }
    return .rearm(rearm)
  }

  /// The stall PING was not acknowledged in time.
  mutating func stallPingTimedOut() -> StallTimeoutAction {
    self.stallPingInFlight = false
    return self.stall?.closesConnection == true ? .close : .drain
  }
}

internal import NIOCore
internal import NIOHTTP2

/// The life of one server connection: open streams, the GOAWAY that drains it, keepalive, idle
/// and age limits, and what the server tolerates from the client's PINGs and SETTINGS. It takes
/// events (with the time, passed in) and returns actions; the channel handler owns the timers and
/// the I/O. Tested without sockets (`ServerConnectionStateMachineTests`).
struct ServerConnectionStateMachine {
  /// The limits the connection enforces.
  struct Policy: Sendable {
    /// A client may ping at most this often while it has calls in flight; grpc's default is
    /// 5 minutes, grpc-go servers' `EnforcementPolicy.MinTime`.
    var minPingInterval: TimeAmount = .minutes(5)
    /// Whether pings with no call in flight are allowed (at `minPingInterval`); when not, any
    /// such ping counts against the client.
    var permitPingsWithoutCalls = false
    /// Pings too soon tolerated before the connection is closed with
    /// GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings"): grpc's `maxPingStrikes`.
    var maxPingStrikes = 2
    /// SETTINGS frames a client may send per `settingsWindow` (a client sends one, and one more
    /// per change; a flood is an attack).
    var maxSettingsPerWindow = 100
    var settingsWindow: TimeAmount = .seconds(30)
    /// Streams with a malformed request header block a client may open per
    /// `malformedStreamWindow` before the connection is closed with
    /// GOAWAY(ENHANCE_YOUR_CALM, "too_many_malformed_streams"); each is reset with
    /// PROTOCOL_ERROR. The server's `maxResetsPerWindow` and `resetWindow`.
    var maxMalformedStreamsPerWindow = 1000
    var malformedStreamWindow: TimeAmount = .seconds(10)
  }

  enum State: Equatable {
    /// Serving.
    case active
    /// GOAWAY sent: no new streams; closes when the last open one ends.
    case draining(lastStreamID: HTTP2StreamID)
    case closed
  }

  private(set) var state: State = .active
  private(set) var openStreams = 0
  private(set) var highestStreamID = HTTP2StreamID(0)
  private let policy: Policy

  // grpc's ping enforcement: a ping counts as a strike when it comes sooner than allowed after
  // the previous one, unless the server sent headers or data since (what a client's
  // bandwidth-delay-product probe, which follows received data, always does).
  private var pingStrikes = 0
  private var lastPingAt: NIODeadline?
  private var sentDataSincePing = false

  private var settingsCount = WindowedCount()
  private var malformedCount = WindowedCount()

  init(policy: Policy = Policy()) {
    self.policy = policy
  }

  // MARK: - Streams

  enum StreamOpenedAction: Equatable {
    case accept
    /// The connection is draining and the stream is past the GOAWAY: refuse it
    /// (RST_STREAM REFUSED_STREAM; the client may retry it elsewhere).
    case refuse
  }

  mutating func streamOpened(_ id: HTTP2StreamID) -> StreamOpenedAction {
    switch self.state {
    case .active:
      ()
    case .draining(let lastStreamID):
      if id > lastStreamID { return .refuse }
    case .closed:
      return .refuse
    }
    self.openStreams += 1
    if id > self.highestStreamID { self.highestStreamID = id }
    return .accept
  }

  enum StreamClosedAction: Equatable {
    case none
    /// No stream is open any more: start the idle timer.
    case startIdleTimer
    /// Draining and the last stream ended: close the connection.
    case close
  }

  mutating func streamClosed() -> StreamClosedAction {
    self.openStreams = max(0, self.openStreams - 1)
    guard self.openStreams == 0 else { return .none }
    switch self.state {
    case .active:
      return .startIdleTimer
    case .draining:
      self.state = .closed
      return .close
    case .closed:
      return .none
    }
  }

  // MARK: - Draining

  enum DrainAction: Equatable {
    case none
    /// Send GOAWAY with this last stream ID and code; close now if `close`, else when the open
    /// streams end (or the grace time passes).
    case goAway(lastStreamID: HTTP2StreamID, code: HTTP2ErrorCode, debug: String, close: Bool)
  }

  /// Graceful shutdown, maximum age, or maximum idle time: stop taking streams and finish the
  /// open ones.
  mutating func beginDraining(reason: String) -> DrainAction {
    guard case .active = self.state else { return .none }
    let last = self.highestStreamID
    if self.openStreams == 0 {
      self.state = .closed
      return .goAway(lastStreamID: last, code: .noError, debug: reason, close: true)
    }
    self.state = .draining(lastStreamID: last)
    return .goAway(lastStreamID: last, code: .noError, debug: reason, close: false)
  }

  /// The idle timer fired.
  mutating func idleTimeout() -> DrainAction {
    guard self.openStreams == 0 else { return .none }
    return self.beginDraining(reason: "max_idle")
  }

  /// The grace time after draining began is over: close, whatever is still open.
  mutating func graceTimeExpired() -> Bool {
    guard case .draining = self.state else { return false }
    self.state = .closed
    return true
  }

  /// The channel closed.
  mutating func channelClosed() {
    self.state = .closed
  }

  // MARK: - Client PINGs and SETTINGS

  /// The server wrote response headers or data.
  mutating func wroteHeadersOrData() {
    self.sentDataSincePing = true
  }

  enum PolicyAction: Equatable {
    case none
    /// The client broke the policy: GOAWAY(ENHANCE_YOUR_CALM) with this debug text, then close.
    case goAwayAndClose(lastStreamID: HTTP2StreamID, debug: String)
  }

  /// A PING (not an ACK) arrived at `now`. swift-nio-http2 has already answered it.
  mutating func receivedPing(at now: NIODeadline) -> PolicyAction {
    if self.sentDataSincePing {
      // grpc's rule: data or headers sent since the last ping forgive everything before.
      self.sentDataSincePing = false
      self.pingStrikes = 0
      self.lastPingAt = now
      return .none
    }
    let allowedInterval: TimeAmount
    if self.openStreams == 0 && !self.policy.permitPingsWithoutCalls {
      // Without calls, pings are not allowed at all (grpc-go's two-hour floor).
      allowedInterval = .hours(2)
    } else {
      allowedInterval = self.policy.minPingInterval
    }
    if let last = self.lastPingAt, now - last < allowedInterval {
      self.pingStrikes += 1
    }
    self.lastPingAt = now
    if self.pingStrikes > self.policy.maxPingStrikes {
      return self.closeForPolicy(debug: "too_many_pings")
    }
    return .none
  }

  /// A SETTINGS frame (not an ACK) arrived at `now`.
  mutating func receivedSettings(at now: NIODeadline) -> PolicyAction {
    if self.settingsCount.add(at: now, window: self.policy.settingsWindow)
      > self.policy.maxSettingsPerWindow
    {
      return self.closeForPolicy(debug: "too_many_settings")
    }
    return .none
  }

  /// A stream's request header block was malformed (the handler resets the stream). Many in a
  /// short time is an attack: each costs the server a header block to decode and a reset, and
  /// none a handler, like the rapid-reset attack.
  mutating func receivedMalformedStream(at now: NIODeadline) -> PolicyAction {
    if self.malformedCount.add(at: now, window: self.policy.malformedStreamWindow)
      > self.policy.maxMalformedStreamsPerWindow
    {
      return self.closeForPolicy(debug: "too_many_malformed_streams")
    }
    return .none
  }

  private mutating func closeForPolicy(debug: String) -> PolicyAction {
    guard self.state != .closed else { return .none }
    self.state = .closed
    return .goAwayAndClose(lastStreamID: self.highestStreamID, debug: debug)
  }
}

/// Events counted in fixed windows: the count restarts at 1 with the first event after a
/// window has passed.
struct WindowedCount {
  private var start: NIODeadline?
  private var count = 0

  /// Counts an event at `now`; returns the count in its window, this one included.
  mutating func add(at now: NIODeadline, window: TimeAmount) -> Int {
    if let start = self.start, now - start < window {
      self.count += 1
    } else {
      self.start = now
      self.count = 1
    }
    return self.count
  }
}

import NIOCore
import Testing

@testable import GRPCConnection

/// Keep-alive and stall detection of a client connection (`ConnectionLiveness`), driven event by
/// event with made-up times: no channel, no timers, milliseconds.
@Suite("Connection liveness (keep-alive, stall detection)")
struct ConnectionLivenessTests {
  static let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

  static func at(_ milliseconds: Int64) -> NIODeadline {
    start + .milliseconds(milliseconds)
  }

  static func stallOnly(closes: Bool = false) -> ConnectionLiveness {
    ConnectionLiveness(
      keepalive: nil,
      stallDetection: .init(
        silence: .milliseconds(100),
        pingTimeout: .milliseconds(300),
        closesConnection: closes
      ),
      now: start
    )
  }

  static func keepaliveOnly(permitWithoutCalls: Bool = false) -> ConnectionLiveness {
    ConnectionLiveness(
      keepalive: .init(
        interval: .seconds(10),
        timeout: .seconds(2),
        permitWithoutCalls: permitWithoutCalls
      ),
      stallDetection: nil,
      now: start
    )
  }

  @Test("without keep-alive or stall detection nothing is tracked or sent")
  func disabled() {
    var liveness = ConnectionLiveness(keepalive: nil, stallDetection: nil, now: Self.start)
    #expect(!liveness.tracksReads)
    #expect(liveness.firstKeepaliveCheck == nil)
    #expect(liveness.nextStallCheck(at: Self.at(0)) == nil)
    #expect(liveness.keepaliveTimerFired(at: Self.at(60_000), hasStreams: true) == nil)
    #expect(liveness.stallCheckFired(at: Self.at(60_000), callsWaiting: true) == .stop)
  }

  @Test("a waiting call on a silent connection: one PING, then the rule for its timeout")
  func stallPing() {
    var liveness = Self.stallOnly()
    // The check is due when the connection will have been silent for 100 ms.
    #expect(liveness.nextStallCheck(at: Self.at(30)) == Self.at(100))
    #expect(
      liveness.stallCheckFired(at: Self.at(100), callsWaiting: true)
        == .sendPing(timeout: .milliseconds(300), rearm: Self.at(200))
    )
    // Still silent, PING in flight: no second PING.
    #expect(liveness.stallCheckFired(at: Self.at(200), callsWaiting: true) == .rearm(Self.at(300)))
    #expect(liveness.stallPingTimedOut() == .drain)
    #expect(!liveness.stallPingInFlight)
    var closing = Self.stallOnly(closes: true)
    _ = closing.stallCheckFired(at: Self.at(100), callsWaiting: true)
    #expect(closing.stallPingTimedOut() == .close)
  }

  @Test("no call waiting: the check stops until the next stream re-arms it")
  func stallStops() {
    var liveness = Self.stallOnly()
    #expect(liveness.stallCheckFired(at: Self.at(500), callsWaiting: false) == .stop)
  }

  @Test("frames arriving push the check back; a silent connection is checked a period from now")
  func stallRearm() {
    var liveness = Self.stallOnly()
    liveness.frameRead(at: Self.at(80), streamFrame: false)
    #expect(liveness.stallCheckFired(at: Self.at(100), callsWaiting: true) == .rearm(Self.at(180)))
    #expect(liveness.nextStallCheck(at: Self.at(500)) == Self.at(600))
  }

  @Test("a slow but live server: one PING per silent period, another only after call data")
  func stallOnePingPerSilence() {
    var liveness = Self.stallOnly()
    guard case .sendPing = liveness.stallCheckFired(at: Self.at(100), callsWaiting: true) else {
      Issue.record("expected the first PING")
      return
    }
    liveness.frameRead(at: Self.at(101), streamFrame: false)  // the PING's acknowledgement
    liveness.pingAcknowledged()
    // Silent again with the call still waiting: no PING, since no HEADERS or DATA came between
    // (grpc-go's server counts PINGs without data against the client).
    #expect(liveness.stallCheckFired(at: Self.at(300), callsWaiting: true) == .rearm(Self.at(400)))
    // The response's HEADERS arrive, then a later call waits on a silent connection.
    liveness.frameRead(at: Self.at(350), streamFrame: true)
    #expect(
      liveness.stallCheckFired(at: Self.at(450), callsWaiting: true)
        == .sendPing(timeout: .milliseconds(300), rearm: Self.at(550))
    )
  }

  @Test("a stall PING waits while a keep-alive PING is in flight")
  func stallDefersToKeepalive() {
    var liveness = ConnectionLiveness(
      keepalive: .init(interval: .milliseconds(50), timeout: .seconds(2), permitWithoutCalls: true),
      stallDetection: .init(silence: .milliseconds(100), pingTimeout: .milliseconds(300)),
      now: Self.start
    )
    guard case .sendPing = liveness.keepaliveTimerFired(at: Self.at(50), hasStreams: false) else {
      Issue.record("expected a keep-alive PING")
      return
    }
    // Silent for 150 ms with a call waiting, but the keep-alive PING is unanswered: it decides.
    #expect(liveness.stallCheckFired(at: Self.at(200), callsWaiting: true) == .rearm(Self.at(300)))
    liveness.pingAcknowledged()
    guard case .sendPing = liveness.stallCheckFired(at: Self.at(300), callsWaiting: true) else {
      Issue.record("no stall PING once the keep-alive PING was acknowledged")
      return
    }
  }

  @Test("keep-alive: a PING after a silent interval while calls are open, none while idle")
  func keepalive() {
    var liveness = Self.keepaliveOnly()
    #expect(liveness.firstKeepaliveCheck == Self.at(10_000))
    // Frames arrived at 4 s: not silent for 10 s yet.
    liveness.frameRead(at: Self.at(4_000), streamFrame: true)
    #expect(
      liveness.keepaliveTimerFired(at: Self.at(10_000), hasStreams: true) == .rearm(Self.at(14_000))
    )
    // Silent, no call open, not permitted without calls: no PING; the interval restarts.
    #expect(
      liveness.keepaliveTimerFired(at: Self.at(14_000), hasStreams: false)
        == .rearm(Self.at(24_000))
    )
    #expect(
      liveness.keepaliveTimerFired(at: Self.at(24_000), hasStreams: true)
        == .sendPing(timeout: .seconds(2), rearm: Self.at(34_000))
    )
    // Unacknowledged: no second PING on top of it.
    #expect(
      liveness.keepaliveTimerFired(at: Self.at(34_000), hasStreams: true)
        == .rearm(Self.at(44_000))
    )
    liveness.pingAcknowledged()
    #expect(!liveness.keepalivePingInFlight)
  }

  @Test("keep-alive without calls when permitted")
  func keepaliveWithoutCalls() {
    var liveness = Self.keepaliveOnly(permitWithoutCalls: true)
    #expect(
      liveness.keepaliveTimerFired(at: Self.at(10_000), hasStreams: false)
        == .sendPing(timeout: .seconds(2), rearm: Self.at(20_000))
    )
    liveness.keepalivePingTimedOut()
    #expect(!liveness.keepalivePingInFlight)
  }
}

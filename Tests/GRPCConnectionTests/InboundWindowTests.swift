import NIOHTTP2
import Testing

@testable import GRPCConnection

/// The receive-window policy both connection handlers share: top up at half, hold back for a
/// reader that is behind, send what was held back once it catches up.
@Suite("Inbound flow-control window")
struct InboundWindowTests {
  @Test("a stream's window is topped up to its target once it falls to half")
  func topsUpAtHalf() {
    var window = InboundWindow(target: 1000)
    #expect(window.windowChanged(to: 700, readerIsBehind: false) == nil)
    #expect(window.current == 700)
    #expect(window.windowChanged(to: 500, readerIsBehind: false) == 500)
    #expect(window.current == 1000)
    #expect(window.readerCaughtUp() == nil, "nothing was held back")
  }

  @Test("a reader that is behind gets no update until it catches up, then all of it")
  func holdsBackForASlowReader() {
    var window = InboundWindow(target: 1000)
    #expect(window.windowChanged(to: 400, readerIsBehind: true) == nil)
    #expect(window.windowChanged(to: 100, readerIsBehind: true) == nil)
    #expect(window.readerCaughtUp() == 900)
    #expect(window.readerCaughtUp() == nil, "sent once")
  }

  @Test("a reader catching up above half still returns what was used")
  func catchUpAboveHalf() {
    var window = InboundWindow(target: 1000)
    #expect(window.windowChanged(to: 800, readerIsBehind: false) == nil)
    #expect(window.readerCaughtUp() == 200)
  }

  @Test("the connection's window is topped up at half, with no reader to wait for")
  func connection() {
    #expect(InboundWindow.connectionIncrement(window: 600, target: 1000) == nil)
    #expect(InboundWindow.connectionIncrement(window: 500, target: 1000) == 500)
    #expect(InboundWindow.connectionIncrement(window: 0, target: 1000) == 1000)
  }

  /// A handler's stream record, as the handlers keep them.
  struct Record: InboundWindowedStream {
    var window = InboundWindow(target: 1000)
    var readerIsBehind = false
  }

  @Test(
    "a window event becomes the connection's or the open stream's update, none for a closed stream"
  )
  func events() {
    var streams: [HTTP2StreamID: Record] = [1: Record(), 3: Record(readerIsBehind: true)]
    func update(_ id: HTTP2StreamID, _ window: Int?) -> (streamID: HTTP2StreamID, increment: Int)? {
      let event = NIOHTTP2WindowUpdatedEvent(
        streamID: id,
        inboundWindowSize: window,
        outboundWindowSize: nil
      )
      return InboundWindow.update(for: event, connectionTarget: 4000, streams: &streams)
    }
    let connection = update(.rootStream, 1000)
    #expect(connection?.streamID == .rootStream && connection?.increment == 3000)
    #expect(update(.rootStream, nil) == nil, "an outbound-only change sends nothing")
    let stream = update(1, 400)
    #expect(stream?.streamID == 1 && stream?.increment == 600)
    #expect(update(3, 100) == nil, "held back for a reader that is behind")
    #expect(streams[3]?.window.readerCaughtUp() == 900)
    #expect(update(5, 0) == nil, "a stream no longer open gets no update")
  }
}

/// The flush policy both connection handlers share.
@Suite("Flush coalescing")
struct FlushCoalescerTests {
  @Test("writes outside a read loop flush at once")
  func outsideReadLoop() {
    var flushes = FlushCoalescer()
    let first = flushes.wrote()
    let second = flushes.wrote()
    let atEnd = flushes.readLoopEnded()
    #expect(first && second)
    #expect(!atEnd, "nothing held")
  }

  @Test("writes during a read loop share one flush at its end")
  func duringReadLoop() {
    var flushes = FlushCoalescer()
    flushes.readStarted()
    let first = flushes.wrote()
    flushes.readStarted()
    let second = flushes.wrote()
    let atEnd = flushes.readLoopEnded()
    let after = flushes.wrote()
    #expect(!first && !second, "held while reading")
    #expect(atEnd, "one flush for both writes")
    #expect(!flushes.inReadLoop)
    #expect(after, "after the loop, writes flush at once again")
  }

  @Test("a read loop without writes needs no flush")
  func readLoopWithoutWrites() {
    var flushes = FlushCoalescer()
    flushes.readStarted()
    let atEnd = flushes.readLoopEnded()
    #expect(!atEnd)
  }
}

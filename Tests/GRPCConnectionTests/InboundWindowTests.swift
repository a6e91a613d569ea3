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
}

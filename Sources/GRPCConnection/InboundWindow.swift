import NIOHTTP2

/// When to give a peer more HTTP/2 receive window, the same on both sides of a connection.
///
/// A window is topped back up to its target once it falls to half of it, so a peer that sends
/// steadily never waits for an update. A stream's update waits while its reader is behind (more
/// than a window of data buffered and unread): that is what bounds what a slow reader buffers.
/// The handlers write the WINDOW_UPDATE frames; this only decides.
struct InboundWindow {
  /// The window the receiver keeps open.
  let target: Int
  /// The window as last known here: as NIOHTTP2 reported it, or `target` once topped up.
  private(set) var current: Int

  init(target: Int) {
    self.target = target
    self.current = target
  }

  /// The connection's window: no reader to wait for. Returns the increment to send, if any.
  static func connectionIncrement(window: Int, target: Int) -> Int? {
    window <= target / 2 ? target - window : nil
  }

  /// NIOHTTP2 reports the stream's window fell (or rose) to `window`. Returns the increment to
  /// send now, or `nil` (not low enough yet, or `readerIsBehind`: then ``readerCaughtUp()``
  /// sends it).
  mutating func windowChanged(to window: Int, readerIsBehind: Bool) -> Int? {
    self.current = window
    guard window <= self.target / 2, !readerIsBehind else { return nil }
    return self.topUp()
  }

  /// The stream's reader drained its buffer. Returns the increment held back, if any.
  mutating func readerCaughtUp() -> Int? {
    self.topUp()
  }

  private mutating func topUp() -> Int? {
    guard self.current < self.target else { return nil }
    let increment = self.target - self.current
    self.current = self.target
    return increment
  }
}

/// An open stream of a handler whose receive window an ``InboundWindow`` keeps.
protocol InboundWindowedStream {
  var window: InboundWindow { get set }
  /// More than a window of the stream's data is buffered and unread.
  var readerIsBehind: Bool { get }
}

extension InboundWindow {
  /// The WINDOW_UPDATE that NIOHTTP2's report of a changed inbound window calls for, if any:
  /// the connection's against `connectionTarget`, a stream's by its record in `streams` (a stream
  /// not there, already closed, gets none).
  static func update<Stream: InboundWindowedStream>(
    for event: NIOHTTP2WindowUpdatedEvent,
    connectionTarget: Int,
    streams: inout [HTTP2StreamID: Stream]
  ) -> (streamID: HTTP2StreamID, increment: Int)? {
    guard let window = event.inboundWindowSize else { return nil }
    if event.streamID == .rootStream {
      return Self.connectionIncrement(window: window, target: connectionTarget).map {
        (.rootStream, $0)
      }
    }
    guard let index = streams.index(forKey: event.streamID) else { return nil }
    let readerIsBehind = streams.values[index].readerIsBehind
    return streams.values[index].window.windowChanged(to: window, readerIsBehind: readerIsBehind)
      .map { (event.streamID, $0) }
  }
}

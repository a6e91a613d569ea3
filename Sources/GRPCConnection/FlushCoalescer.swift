/// When a connection handler flushes, the same on both sides of a connection: frames written
/// while a read loop runs go out together in one flush when it ends (so a burst of requests is
/// answered with one write system call); outside a read loop each write flushes at once. Writes
/// handed to the event loop from other threads (the client's requests, the server's responses
/// from handlers off the loop) arrive in batches (``EventLoopHandOff``) and flush once per batch.
struct FlushCoalescer {
  private(set) var inReadLoop = false
  private var pending = false

  /// A frame was read: the read loop runs until `channelReadComplete`.
  mutating func readStarted() {
    self.inReadLoop = true
  }

  /// Something was written. Returns whether to flush now (`false`: at the read loop's end).
  mutating func wrote() -> Bool {
    guard self.inReadLoop else { return true }
    self.pending = true
    return false
  }

  /// The read loop ended. Returns whether writes held during it need their flush.
  mutating func readLoopEnded() -> Bool {
    defer {
      self.inReadLoop = false
      self.pending = false
    }
    return self.pending
  }
}

internal import GRPCCore
internal import NIOCore

/// Reassembles length-prefixed gRPC messages (1 flag byte, 4 length bytes, payload) from the
/// DATA frames of one stream. Frames and messages need not align.
struct MessageDeframer {
  private var buffer: ByteBuffer
  private let maxMessageBytes: Int

  init(maxMessageBytes: Int) {
    self.buffer = ByteBuffer()
    self.maxMessageBytes = maxMessageBytes
  }

  /// Whether a partial message is buffered.
  var hasPartialMessage: Bool {
    self.buffer.readableBytes > 0
  }

  mutating func append(_ data: ByteBuffer) {
    if self.buffer.readableBytes == 0 {
      // Common case: no partial message, adopt the frame's buffer without copying.
      self.buffer = data
    } else {
      self.buffer.writeImmutableBuffer(data)
    }
  }

  /// Returns the next complete message, `nil` if more bytes are needed.
  mutating func next() throws(RPCError) -> [UInt8]? {
    guard
      let flag = self.buffer.getInteger(at: self.buffer.readerIndex, as: UInt8.self),
      let length = self.buffer.getInteger(at: self.buffer.readerIndex + 1, as: UInt32.self)
    else {
      return nil
    }

    switch flag {
    case 0:
      ()
    case 1:
      throw RPCError(
        code: .internalError,
        message: """
          The server sent a compressed message, but this client does not advertise or support \
          compression.
          """
      )
    default:
      throw RPCError(
        code: .internalError,
        message: "The server sent a message with an invalid flag byte (\(flag))."
      )
    }

    let messageLength = Int(length)
    if messageLength > self.maxMessageBytes {
      throw RPCError(
        code: .resourceExhausted,
        message: """
          The server sent a message of \(messageLength) bytes, more than the limit of \
          \(self.maxMessageBytes) bytes (raise maxResponseMessageBytes to accept it).
          """
      )
    }

    guard self.buffer.readableBytes >= 5 + messageLength else {
      // Make room for the whole message at once rather than growing frame by frame.
      let missing = 5 + messageLength - self.buffer.readableBytes
      if self.buffer.writableBytes < missing {
        self.buffer.reserveCapacity(minimumWritableBytes: missing)
      }
      return nil
    }

    self.buffer.moveReaderIndex(forwardBy: 5)
    let message = self.buffer.readBytes(length: messageLength) ?? []
    if self.buffer.readableBytes == 0 {
      self.buffer.clear()
    } else if self.buffer.readerIndex > 64 * 1024 {
      self.buffer.discardReadBytes()
    }
    return message
  }
}

package import GRPCCore
package import NIOCore

/// Reassembles length-prefixed gRPC messages (1 flag byte, 4 length bytes, payload) from the
/// DATA frames of one stream. Frames and messages need not align.
///
/// The client reads responses with it and the server requests: `peer` names the side that sent
/// the bytes, in the errors, and `limitSetting` the setting that raises the size limit.
package struct MessageDeframer {
  package enum Peer: Sendable {
    case server
    case client

    var name: String {
      switch self {
      case .server: "server"
      case .client: "client"
      }
    }
  }

  private var buffer: ByteBuffer
  private let maxMessageBytes: Int
  private let peer: Peer
  private let limitSetting: String

  package init(
    maxMessageBytes: Int,
    peer: Peer = .server,
    limitSetting: String = "maxResponseMessageBytes"
  ) {
    self.buffer = ByteBuffer()
    self.maxMessageBytes = maxMessageBytes
    self.peer = peer
    self.limitSetting = limitSetting
  }

  /// A placeholder holding no buffer.
  static let empty = MessageDeframer(maxMessageBytes: 0)

  /// Whether a partial message is buffered.
  var hasPartialMessage: Bool {
    self.buffer.readableBytes > 0
  }

  package mutating func append(_ data: ByteBuffer) {
    if self.buffer.readableBytes == 0 {
      // Common case: no partial message, adopt the frame's buffer without copying.
      self.buffer = data
    } else {
      self.buffer.writeImmutableBuffer(data)
    }
  }

  /// Returns the next complete message, `nil` if more bytes are needed.
  package mutating func next() throws(RPCError) -> [UInt8]? {
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
          The \(self.peer.name) sent a compressed message, but compression was not negotiated \
          (this side advertises and supports identity only).
          """
      )
    default:
      throw RPCError(
        code: .internalError,
        message: "The \(self.peer.name) sent a message with an invalid flag byte (\(flag))."
      )
    }

    let messageLength = Int(length)
    if messageLength > self.maxMessageBytes {
      throw RPCError(
        code: .resourceExhausted,
        message: """
          The \(self.peer.name) sent a message of \(messageLength) bytes, more than the limit \
          of \(self.maxMessageBytes) bytes (raise \(self.limitSetting) to accept it).
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

import GRPCConnection
import NIOCore
import NIOEmbedded
import NIOHTTP2
import Testing

/// The byte-level PING responder that sits in front of a server's `NIOHTTP2Handler`: what it
/// answers, what it passes on (byte for byte), however the bytes are split into reads.
@Suite("TrafficPingResponder")
struct TrafficPingResponderTests {
  /// The client's connection preface.
  static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

  static func frame(type: UInt8, flags: UInt8 = 0, stream: UInt32 = 0, payload: [UInt8]) -> [UInt8]
  {
    let length = payload.count
    var bytes: [UInt8] = [
      UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF),
    ]
    bytes += [type, flags]
    bytes += [UInt8(stream >> 24 & 0x7F), UInt8(stream >> 16 & 0xFF), UInt8(stream >> 8 & 0xFF)]
    bytes += [UInt8(stream & 0xFF)]
    return bytes + payload
  }

  static let settings = frame(type: 0x4, payload: [0, 3, 0, 0, 0, 100])
  static let headers = frame(
    type: 0x1,
    flags: 0x4,
    stream: 1,
    payload: Array(repeating: 0x82, count: 20)
  )
  static let data = frame(type: 0x0, flags: 0x1, stream: 1, payload: Array(repeating: 7, count: 40))
  static let windowUpdate = frame(type: 0x8, payload: [0, 0, 0x10, 0])
  static func ping(_ marker: UInt8, ack: Bool = false) -> [UInt8] {
    frame(type: 0x6, flags: ack ? 1 : 0, payload: [marker, 1, 2, 3, 4, 5, 6, 7])
  }
  static func pingAck(_ marker: UInt8) -> [UInt8] { ping(marker, ack: true) }

  /// Feeds `input` to a responder in reads of the given sizes (the rest in one read); returns the
  /// bytes it passed on and the bytes it wrote back.
  static func run(_ input: [UInt8], reads: [Int] = []) throws -> (passed: [UInt8], written: [UInt8])
  {
    let channel = EmbeddedChannel()
    try channel.pipeline.syncOperations.addHandler(TrafficPingResponder())
    var offset = 0
    var sizes = reads
    while offset < input.count {
      let size =
        sizes.isEmpty ? input.count - offset : min(sizes.removeFirst(), input.count - offset)
      try channel.writeInbound(ByteBuffer(bytes: input[offset ..< offset + size]))
      offset += size
    }
    var passed: [UInt8] = []
    while let buffer = try channel.readInbound(as: ByteBuffer.self) {
      passed += Array(buffer.readableBytesView)
    }
    var written: [UInt8] = []
    while let data = try channel.readOutbound(as: IOData.self) {
      guard case .byteBuffer(let buffer) = data else {
        Issue.record("the responder wrote a file region")
        continue
      }
      written += Array(buffer.readableBytesView)
    }
    _ = try channel.finish()
    return (passed, written)
  }

  @Test("a PING after real traffic is answered with its payload and not passed on")
  func answersPingAfterTraffic() throws {
    let input = Self.preface + Self.settings + Self.headers + Self.data + Self.ping(9)
    let (passed, written) = try Self.run(input)
    #expect(passed == Self.preface + Self.settings + Self.headers + Self.data)
    #expect(written == Self.pingAck(9))
  }

  @Test("PINGs that follow no traffic, and PING ACKs, are passed on for NIOHTTP2Handler")
  func passesOtherPings() throws {
    // Before any traffic; a second PING after one answer; an ACK (of the server's own PING).
    let input =
      Self.preface + Self.settings + Self.ping(1) + Self.windowUpdate + Self.ping(2) + Self.ping(3)
      + Self.headers + Self.pingAck(4)
    let (passed, written) = try Self.run(input)
    #expect(
      passed
        == Self.preface + Self.settings + Self.ping(1) + Self.windowUpdate + Self.ping(3)
        + Self.headers + Self.pingAck(4)
    )
    #expect(written == Self.pingAck(2))
  }

  @Test("the same answers and bytes however the input is split into reads")
  func splitReads() throws {
    let input =
      Self.preface + Self.settings + Self.headers + Self.ping(1) + Self.ping(2) + Self.data
      + Self.ping(3) + Self.windowUpdate + Self.ping(4)
    let expected = try Self.run(input)
    #expect(expected.written == Self.pingAck(1) + Self.pingAck(3) + Self.pingAck(4))
    #expect(
      expected.passed
        == Self.preface + Self.settings + Self.headers + Self.ping(2) + Self.data
        + Self.windowUpdate
    )
    for size in 1 ... 20 {
      let split = try Self.run(input, reads: Array(repeating: size, count: input.count))
      #expect(split.passed == expected.passed, "reads of \(size) bytes")
      #expect(split.written == expected.written, "reads of \(size) bytes")
    }
    // Every single cut point.
    for cut in 1 ..< input.count {
      let split = try Self.run(input, reads: [cut])
      #expect(split.passed == expected.passed, "cut at \(cut)")
      #expect(split.written == expected.written, "cut at \(cut)")
    }
  }
}

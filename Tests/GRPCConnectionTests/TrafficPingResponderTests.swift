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

  /// Feeds `input` to a responder in reads of the given sizes (the rest in one read), on a
  /// channel that is writable or not; returns the bytes it passed on and the bytes it wrote back.
  static func run(
    _ input: [UInt8],
    reads: [Int] = [],
    writable: Bool = true
  ) throws -> (passed: [UInt8], written: [UInt8]) {
    let channel = EmbeddedChannel()
    try channel.pipeline.syncOperations.addHandler(TrafficPingResponder())
    channel.isWritable = writable
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
    let written = try Self.outboundBytes(channel)
    _ = try channel.finish()
    return (passed, written)
  }

  /// Everything written to `channel` so far, as bytes.
  static func outboundBytes(_ channel: EmbeddedChannel) throws -> [UInt8] {
    var written: [UInt8] = []
    while let data = try channel.readOutbound(as: IOData.self) {
      guard case .byteBuffer(let buffer) = data else {
        Issue.record("a file region was written")
        continue
      }
      written += Array(buffer.readableBytesView)
    }
    return written
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

  @Test("while the connection is not writable, PINGs go to NIOHTTP2Handler instead")
  func unwritable() throws {
    let input = Self.preface + Self.settings + Self.headers + Self.ping(5)
    let (passed, written) = try Self.run(input, writable: false)
    #expect(passed == input)
    #expect(written.isEmpty)
  }

  /// A reference for what the responder does, frame by frame, on a whole input.
  static func model(_ frames: [[UInt8]]) -> (passed: [UInt8], written: [UInt8]) {
    var passed = Self.preface
    var written: [UInt8] = []
    var sawTraffic = false
    for frame in frames {
      let type = frame[3]
      let length = Int(frame[0]) << 16 | Int(frame[1]) << 8 | Int(frame[2])
      let stream =
        (UInt32(frame[5]) << 24 | UInt32(frame[6]) << 16 | UInt32(frame[7]) << 8
          | UInt32(frame[8])) & 0x7FFF_FFFF
      if type == 0x6 && frame[4] & 0x1 == 0 && length == 8 && stream == 0 && sawTraffic {
        written += Self.frame(type: 0x6, flags: 0x1, payload: Array(frame[9...]))
        sawTraffic = false
        continue
      }
      if [0x0, 0x1, 0x3, 0x8, 0x9].contains(type) { sawTraffic = true }
      passed += frame
    }
    return (passed, written)
  }

  @Test("random frames split at random: the same bytes and answers as the frame-by-frame model")
  func randomized() throws {
    var generator = SystemRandomNumberGenerator()
    for _ in 0 ..< 200 {
      var frames: [[UInt8]] = []
      for _ in 0 ..< Int.random(in: 1 ... 30, using: &generator) {
        let marker = UInt8.random(in: 0 ... 255, using: &generator)
        switch Int.random(in: 0 ... 9, using: &generator) {
        case 0 ... 3: frames.append(Self.ping(marker))
        case 4: frames.append(Self.pingAck(marker))
        case 5:  // a PING-like frame that is not a valid PING: other length or a stream
          frames.append(
            Bool.random(using: &generator)
              ? Self.frame(type: 0x6, payload: [marker, 1, 2])
              : Self.frame(type: 0x6, stream: 1, payload: [marker, 1, 2, 3, 4, 5, 6, 7])
          )
        case 6: frames.append(Self.settings)
        default:
          let type = [UInt8(0x0), 0x1, 0x3, 0x8, 0x9, 0x2, 0x7, 0x20].randomElement(
            using: &generator
          )!
          let size = Int.random(in: 0 ... 3_000, using: &generator)
          frames.append(
            Self.frame(type: type, stream: 3, payload: Array(repeating: marker, count: size))
          )
        }
      }
      let input = Self.preface + frames.joined()
      var reads: [Int] = []
      var covered = 0
      while covered < input.count {
        let size = Int.random(in: 1 ... 40, using: &generator)
        reads.append(size)
        covered += size
      }
      let expected = Self.model(frames)
      let actual = try Self.run(input, reads: reads)
      #expect(actual.passed == expected.passed)
      #expect(actual.written == expected.written)
      if actual.passed != expected.passed || actual.written != expected.written { return }
    }
  }

  /// With swift-nio-http2's server handler behind it: PINGs that follow traffic are answered and
  /// never counted; PINGs alone still trip swift-nio-http2's limit.
  @Test(
    "in front of NIOHTTP2Handler: 300 PINGs after traffic pass, 250 PINGs alone still get GOAWAY"
  )
  func withNIOHTTP2Handler() throws {
    func serve(_ frames: [[UInt8]]) throws -> (acks: Int, goAwayCodes: [UInt32]) {
      let channel = EmbeddedChannel()
      try channel.pipeline.syncOperations.addHandler(NIOHTTP2Handler(mode: .server))
      try TrafficPingResponder.install(in: channel.pipeline.syncOperations)
      try TrafficPingResponder.install(in: channel.pipeline.syncOperations)  // no second one
      try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
      for chunk in [Self.preface + Self.frame(type: 0x4, payload: [])] + frames {
        // NIOHTTP2Handler reports the flood as an error after sending GOAWAY.
        _ = try? channel.writeInbound(ByteBuffer(bytes: chunk))
        channel.pipeline.fireChannelReadComplete()
      }
      let written = try Self.outboundBytes(channel)
      _ = try? channel.finish()
      var acks = 0
      var codes: [UInt32] = []
      var index = 0
      while index + 9 <= written.count {
        let length =
          Int(written[index]) << 16 | Int(written[index + 1]) << 8 | Int(written[index + 2])
        let type = written[index + 3]
        let flags = written[index + 4]
        if type == 0x6 && flags & 0x1 == 1 { acks += 1 }
        if type == 0x7 && index + 17 <= written.count {
          let code = written[(index + 13) ..< (index + 17)].reduce(UInt32(0)) {
            $0 << 8 | UInt32($1)
          }
          codes.append(code)
        }
        index += 9 + length
      }
      return (acks, codes)
    }

    let windowUpdate = Self.frame(type: 0x8, payload: [0, 0, 0, 1])
    let busy = try serve((0 ..< 300).map { windowUpdate + Self.ping(UInt8($0 % 256)) })
    #expect(busy.acks == 300)
    #expect(busy.goAwayCodes.isEmpty)

    let flood = try serve((0 ..< 250).map { Self.ping(UInt8($0 % 256)) })
    // NIOHTTP2Handler's GOAWAY (ENHANCE_YOUR_CALM); closing the connection is the transport's
    // part, which EmbeddedChannel does not play.
    #expect(flood.goAwayCodes.contains(0xB))
  }
}

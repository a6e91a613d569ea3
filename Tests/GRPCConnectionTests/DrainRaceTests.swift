import GRPCCore
import Testing

@testable import GRPCConnection

#if canImport(Glibc)
import Glibc
#endif

/// A blocking loopback TCP socket speaking raw HTTP/2 bytes, for a race a real client cannot be
/// made to run on purpose: a call started after the server drained the connection but before
/// the client read the GOAWAY.
private final class RawSocket {
  let fd: Int32

  init(port: Int) throws {
    self.fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        connect(self.fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
      }
    }
    guard self.fd >= 0, connected == 0 else {
      throw RawSocketError(description: "cannot connect to 127.0.0.1:\(port): errno \(errno)")
    }
  }

  deinit { close(self.fd) }

  func send(_ bytes: [UInt8]) -> Bool {
    bytes.withUnsafeBytes { Glibc.send(self.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
      == bytes.count
  }

  /// What has arrived, without reading it.
  func peek() -> [UInt8] {
    var buffer = [UInt8](repeating: 0, count: 65536)
    let count = buffer.withUnsafeMutableBytes {
      recv(self.fd, $0.baseAddress, $0.count, Int32(MSG_PEEK | MSG_DONTWAIT))
    }
    return count > 0 ? Array(buffer.prefix(count)) : []
  }

  /// Reads until end of file, an error or `timeout`; returns the bytes and the error, if any.
  func readAll(timeout: Duration) -> (bytes: [UInt8], errno: Int32?) {
    var bytes: [UInt8] = []
    let deadline = ContinuousClock.now + timeout
    var buffer = [UInt8](repeating: 0, count: 65536)
    while ContinuousClock.now < deadline {
      var poller = pollfd(fd: self.fd, events: Int16(POLLIN), revents: 0)
      guard poll(&poller, 1, 50) > 0 else { continue }
      let count = buffer.withUnsafeMutableBytes { recv(self.fd, $0.baseAddress, $0.count, 0) }
      if count == 0 { return (bytes, nil) }
      if count < 0 { return (bytes, errno) }
      bytes += buffer.prefix(count)
    }
    return (bytes, nil)
  }
}

private struct RawSocketError: Error, CustomStringConvertible {
  var description: String
}

/// The HTTP/2 frames in `bytes` (whole frames only): type and payload.
private func frames(_ bytes: [UInt8]) -> [(type: UInt8, payload: ArraySlice<UInt8>)] {
  var frames: [(type: UInt8, payload: ArraySlice<UInt8>)] = []
  var index = 0
  while index + 9 <= bytes.count {
    let length = Int(bytes[index]) << 16 | Int(bytes[index + 1]) << 8 | Int(bytes[index + 2])
    guard index + 9 + length <= bytes.count else { break }
    frames.append((bytes[index + 3], bytes[(index + 9) ..< (index + 9 + length)]))
    index += 9 + length
  }
  return frames
}

@Suite("HTTP2Server: draining a connection under a client's feet")
struct DrainRaceTests {
  // Catches a server that closes a drained connection before its GOAWAY is out, or sends a
  // GOAWAY whose last stream ID covers a stream it never processed: a client whose call crossed
  // the GOAWAY could then not tell that the call is safe to retry.
  @Test("a call sent after the GOAWAY, before the client read it, is reported unprocessed")
  func callCrossingTheGoAway() async throws {
    let config = HTTP2Server.Config.defaults { $0.maxConnectionAge = .milliseconds(100) }
    let transport = HTTP2Server(host: "127.0.0.1", port: 0, config: config, logger: makeLogger())
    let server = GRPCServer(transport: transport, services: [EchoService(probe: ServerProbe())])
    try await withThrowingDiscardingTaskGroup { group in
      group.addTask { try await server.serve() }
      let socket = try RawSocket(port: try await transport.listeningAddress.port)
      let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
      #expect(socket.send(preface + [0, 0, 0, 4, 0, 0, 0, 0, 0]))
      // The server drains the connection at its maximum age: wait until its GOAWAY (type 7) is
      // in this socket's receive buffer, unread, as in a client busy elsewhere.
      try await poll("the server's GOAWAY has arrived") {
        frames(socket.peek()).contains { $0.type == 7 }
      }
      // A call on stream 1 (POST, http, path "/"; HPACK static indices), as if the client had
      // not read the GOAWAY yet. (On a slow machine the server may have closed the connection
      // by now, and the send fails; what the client can read is what this test is about.)
      _ = socket.send([0, 0, 3, 1, 0x05, 0, 0, 0, 1, 0x83, 0x86, 0x84])
      // A reset after the GOAWAY is fine (the server has closed); one that lost it is not.
      let (bytes, error) = socket.readAll(timeout: .seconds(3))
      let goAway = try #require(
        frames(bytes).first { $0.type == 7 },
        "no GOAWAY was read (errno \(error ?? 0))"
      )
      let payload = Array(goAway.payload)
      try #require(payload.count >= 8)
      let lastStreamID =
        (UInt32(payload[0]) << 24 | UInt32(payload[1]) << 16 | UInt32(payload[2]) << 8
          | UInt32(payload[3])) & 0x7fff_ffff
      let code =
        UInt32(payload[4]) << 24 | UInt32(payload[5]) << 16 | UInt32(payload[6]) << 8
        | UInt32(payload[7])
      #expect(lastStreamID == 0, "stream 1 is past the GOAWAY, so the client retries it")
      #expect(code == 0, "NO_ERROR")
      server.beginGracefulShutdown()
    }
  }
}

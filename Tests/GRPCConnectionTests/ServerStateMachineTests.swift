import GRPCCore
import NIOCore
import NIOHPACK
import NIOHTTP2
import Testing

@testable import GRPCConnection

/// The server's per-call and per-connection state machines, without sockets.
@Suite("Server state machines")
struct ServerStateMachineTests {
  typealias Stream = ServerStreamStateMachine

  static func requestHeaders(
    path: String = "/test.Echo/Unary",
    method: String = "POST",
    contentType: String = "application/grpc",
    extra: [(String, String)] = []
  ) -> HPACKHeaders {
    var headers: HPACKHeaders = [
      ":method": method, ":scheme": "http", ":path": path, ":authority": "localhost",
      "content-type": contentType, "te": "trailers",
    ]
    for (name, value) in extra { headers.add(name: name, value: value) }
    return headers
  }

  static func framed(_ bytes: [UInt8]) -> ByteBuffer {
    GRPCWire.frame(bytes)
  }

  static func open(
    _ headers: HPACKHeaders = requestHeaders(),
    endStream: Bool = false,
    maxRequestBytes: Int = 1024
  ) -> (Stream, Stream.OpenAction) {
    Stream.open(headers: headers, endStream: endStream, maxRequestBytes: maxRequestBytes)
  }

  // MARK: - Opening a call

  @Test("A gRPC request starts the call with its method, metadata and deadline")
  func start() {
    let (_, action) = Self.open(
      Self.requestHeaders(extra: [("x-user", "7"), ("grpc-timeout", "250m"), ("v-bin", "AAH/")])
    )
    guard case .start(let descriptor, let metadata, let timeout) = action else {
      Issue.record("expected start, got \(action)")
      return
    }
    #expect(descriptor == MethodDescriptor(fullyQualifiedService: "test.Echo", method: "Unary"))
    #expect(Array(metadata[stringValues: "x-user"]) == ["7"])
    #expect(Array(metadata[binaryValues: "v-bin"]) == [[0, 1, 255]])
    // The transport enforces the deadline; the protocol's fields are not metadata.
    #expect(timeout == .milliseconds(250))
    #expect(metadata[stringValues: "grpc-timeout"].first { _ in true } == nil)
    #expect(metadata[stringValues: "content-type"].first { _ in true } == nil)
    #expect(metadata[stringValues: "te"].first { _ in true } == nil)
  }

  @Test("A path the server knows maps to its registered descriptor")
  func knownMethod() {
    let known = MethodDescriptor(fullyQualifiedService: "test.Echo", method: "Unary", type: .unary)
    let (_, action) = Stream.open(
      headers: Self.requestHeaders(),
      endStream: false,
      maxRequestBytes: 10,
      knownMethods: ["/test.Echo/Unary": known]
    )
    guard case .start(let descriptor, _, _) = action else {
      Issue.record("expected start, got \(action)")
      return
    }
    #expect(descriptor.type == .unary)
  }

  static func rejection(_ action: Stream.OpenAction) -> (HPACKHeaders, Bool)? {
    if case .reject(let headers, let reset) = action { return (headers, reset) }
    return nil
  }

  @Test("Not gRPC: a wrong method is answered 405, a wrong content type 415")
  func notGRPC() throws {
    let (getHeaders, getReset) = try #require(
      Self.rejection(Self.open(Self.requestHeaders(method: "GET"), endStream: true).1)
    )
    #expect(getHeaders.first(name: ":status") == "405")
    #expect(!getReset, "the request ended: nothing to reset")

    let (jsonHeaders, jsonReset) = try #require(
      Self.rejection(Self.open(Self.requestHeaders(contentType: "application/json")).1)
    )
    #expect(jsonHeaders.first(name: ":status") == "415")
    #expect(jsonReset, "the client is still sending: reset after answering")
    // application/grpc-web is not gRPC either; application/grpc+proto is.
    #expect(
      Self.rejection(Self.open(Self.requestHeaders(contentType: "application/grpc-web")).1) != nil
    )
    #expect(
      Self.rejection(Self.open(Self.requestHeaders(contentType: "application/grpc+proto")).1) == nil
    )
  }

  @Test("Bad paths, compression and malformed timeouts are answered with a status, trailers-only")
  func badRequests() throws {
    for path in ["/", "Unary", "/test.Echo", "/test.Echo/", "//Unary", "/a/b/c"] {
      let (headers, _) = try #require(
        Self.rejection(Self.open(Self.requestHeaders(path: path)).1),
        "path '\(path)'"
      )
      #expect(headers.first(name: "grpc-status") == "12", "path '\(path)': unimplemented")
      #expect(headers.first(name: ":status") == "200")
    }
    let (gzip, _) = try #require(
      Self.rejection(Self.open(Self.requestHeaders(extra: [("grpc-encoding", "gzip")])).1)
    )
    #expect(gzip.first(name: "grpc-status") == "12")
    #expect(gzip.first(name: "grpc-accept-encoding") == "identity")
    #expect(
      Self.rejection(Self.open(Self.requestHeaders(extra: [("grpc-encoding", "identity")])).1)
        == nil
    )
    for timeout in ["", "1", "m", "123456789S", "12x", "-1S", "1.5S"] {
      let (headers, _) = try #require(
        Self.rejection(Self.open(Self.requestHeaders(extra: [("grpc-timeout", timeout)])).1),
        "timeout '\(timeout)'"
      )
      #expect(headers.first(name: "grpc-status") == "13")
    }
  }

  // MARK: - Request messages

  static func deliver(_ action: Stream.DataAction) -> ([[UInt8]], Bool)? {
    if case .deliver(let messages, let end) = action { return (messages, end) }
    return nil
  }

  /// Request blocks malformed under HTTP/2's rules (`HeaderBlock`), each with what the problem
  /// must name.
  static let malformedRequests: [(HPACKHeaders, String)] = {
    let twice = HPACKHeaders([
      (":method", "POST"), (":scheme", "http"), (":path", "/test.Echo/Unary"),
      (":path", "/test.Echo/Unary"), ("content-type", "application/grpc"),
    ])
    var late = requestHeaders()
    late.add(name: ":authority", value: "other")
    var noScheme = requestHeaders()
    noScheme.remove(name: ":scheme")
    return [
      (requestHeaders(extra: [("X-Upper", "1")]), "\"X-Upper\""),
      (requestHeaders(extra: [("connection", "close")]), "'connection'"),
      (requestHeaders(extra: [("x-value", "a\r\nb")]), "value of 'x-value'"),
      (requestHeaders(extra: [(":status", "200")]), "\":status\""),
      (twice, "':path' twice"),
      (late, "':authority' after regular fields"),
      (noScheme, "lack ':scheme'"),
      (requestHeaders(path: ""), "':path' of \"\""),
      (requestHeaders(path: "/a b"), "':path' of"),
    ]
  }()

  @Test("Malformed request header blocks are stream errors: nothing answered, PROTOCOL_ERROR")
  func malformedRequests() {
    var te = Self.requestHeaders()
    te.replaceOrAdd(name: "te", value: "gzip")
    for (headers, named) in Self.malformedRequests + [(te, "'te: gzip'")] {
      let (machine, action) = Self.open(headers)
      guard case .malformed(let problem) = action else {
        Issue.record("\(headers): expected malformed, got \(action)")
        continue
      }
      #expect(problem.contains(named), "\(problem)")
      #expect(machine.isDone)
    }
  }

  @Test("Malformed trailers from the client fail the call and reset the stream (PROTOCOL_ERROR)")
  func malformedTrailers() {
    var (machine, _) = Self.open()
    let action = machine.receivedTrailers([":path": "/x"], endStream: true)
    guard case .fail(let trailers, let reset, let error) = action else {
      Issue.record("expected fail, got \(action)")
      return
    }
    #expect(trailers == nil, "a stream error is not answered with a status")
    #expect(reset == .protocolError)
    #expect(error.code == .internalError)
    #expect(error.message.contains("trailers"))
    #expect(machine.isDone)
  }

  @Test("Messages split across frames and several per frame are reassembled")
  func deframing() throws {
    var (stream, _) = Self.open()
    var bytes = Self.framed([1, 2, 3])
    bytes.writeImmutableBuffer(Self.framed([4]))
    bytes.writeImmutableBuffer(Self.framed(Array(repeating: 9, count: 100)))
    let first = bytes.readSlice(length: 10)!  // the first message and 2 bytes of the next
    let (one, end1) = try #require(Self.deliver(stream.receivedData(first, endStream: false)))
    #expect(one == [[1, 2, 3]] && !end1)
    let (rest, end2) = try #require(Self.deliver(stream.receivedData(bytes, endStream: true)))
    #expect(rest == [[4], Array(repeating: 9, count: 100)] && end2)
    // After END_STREAM nothing more is accepted.
    #expect(stream.receivedData(Self.framed([1]), endStream: false) == .none)
  }

  static func failure(_ action: Stream.DataAction) -> (HPACKHeaders?, HTTP2ErrorCode?, RPCError)? {
    if case .fail(let trailers, let reset, let error) = action { return (trailers, reset, error) }
    return nil
  }

  @Test("A message over the limit fails the call resourceExhausted and resets the stream")
  func oversized() throws {
    var (stream, _) = Self.open(maxRequestBytes: 10)
    let (trailers, reset, error) = try #require(
      Self.failure(
        stream.receivedData(Self.framed(Array(repeating: 0, count: 11)), endStream: false)
      )
    )
    #expect(trailers?.first(name: "grpc-status") == "8")
    #expect(trailers?.first(name: ":status") == "200", "nothing was sent yet: trailers-only")
    #expect(reset == .noError)
    #expect(error.code == .resourceExhausted)
    #expect(stream.isDone)
  }

  @Test("A compressed flag, a bad flag, a truncated message: internal error")
  func malformedMessages() throws {
    for flag in [UInt8(1), 7] {
      var (stream, _) = Self.open()
      let buffer = ByteBuffer(bytes: [flag, 0, 0, 0, 1, 42])
      let (trailers, _, _) = try #require(
        Self.failure(stream.receivedData(buffer, endStream: true))
      )
      #expect(trailers?.first(name: "grpc-status") == "13", "flag \(flag)")
    }
    var (stream, _) = Self.open()
    let (trailers, reset, _) = try #require(
      Self.failure(stream.receivedData(ByteBuffer(bytes: [0, 0, 0, 0, 5, 1]), endStream: true))
    )
    #expect(trailers?.first(name: "grpc-status") == "13")
    #expect(reset == nil, "the client already ended the request")
  }

  // MARK: - Responses

  @Test("Metadata, messages, status become headers, data, trailers; status alone is trailers-only")
  func responses() throws {
    var (stream, _) = Self.open(endStream: true)
    guard
      case .headers(let headers) = stream.write(
        .metadata(try GRPCWire.makeResponseHeaders(metadata: ["a": "1"]))
      )
    else {
      Issue.record("expected headers")
      return
    }
    #expect(headers.first(name: ":status") == "200" && headers.first(name: "a") == "1")
    guard case .data = stream.write(.message(Self.framed([1]))) else {
      Issue.record("expected data")
      return
    }
    guard
      case .trailers(let trailers, let reset) = stream.write(
        .status(Status(code: .ok, message: ""), ["t": "2"])
      )
    else {
      Issue.record("expected trailers")
      return
    }
    #expect(trailers.first(name: "grpc-status") == "0" && trailers.first(name: "t") == "2")
    #expect(trailers.first(name: ":status") == nil)
    #expect(!reset, "the request had ended")
    #expect(stream.isDone)
    guard case .drop = stream.write(.message(Self.framed([2]))) else {
      Issue.record("a message after the status must be dropped")
      return
    }

    var (only, _) = Self.open()
    guard
      case .trailers(let trailersOnly, let resetOnly) = only.write(
        .status(Status(code: .notFound, message: "50% gone\n"), [:])
      )
    else {
      Issue.record("expected trailers")
      return
    }
    #expect(trailersOnly.first(name: ":status") == "200")
    #expect(trailersOnly.first(name: "grpc-status") == "5")
    #expect(trailersOnly.first(name: "grpc-message") == "50%25 gone%0A")
    #expect(resetOnly, "the client was still sending: RST_STREAM(NO_ERROR) follows")
  }

  @Test("A message before metadata sends default headers first")
  func implicitHeaders() {
    var (stream, _) = Self.open()
    guard case .headersAndData(let headers, _) = stream.write(.message(Self.framed([1]))) else {
      Issue.record("expected headers and data")
      return
    }
    #expect(headers.first(name: "content-type") == "application/grpc")
  }

  @Test("The deadline ends an open call with DEADLINE_EXCEEDED and RST_STREAM(NO_ERROR)")
  func deadline() throws {
    var (stream, _) = Self.open()
    _ = stream.write(.metadata(GRPCWire.plainResponseHeaders))
    let (trailers, reset, error) = try #require(Self.failure(stream.deadlineExpired()))
    #expect(trailers?.first(name: "grpc-status") == "4")
    #expect(trailers?.first(name: ":status") == nil, "headers were sent: real trailers")
    // The trailers are a whole response: NO_ERROR, not CANCEL, which gRPC's C core would report
    // as the call's status.
    #expect(reset == .noError)
    #expect(error.code == .deadlineExceeded)
    #expect(stream.deadlineExpired() == .none, "only once")
  }

  // MARK: - The connection

  typealias Connection = ServerConnectionStateMachine

  @Test("A drained connection refuses later streams and closes with its last call")
  func draining() {
    var connection = Connection()
    #expect(connection.streamOpened(HTTP2StreamID(1)) == .accept)
    #expect(connection.streamOpened(HTTP2StreamID(3)) == .accept)
    #expect(
      connection.beginDraining(reason: "bye")
        == .goAway(lastStreamID: HTTP2StreamID(3), code: .noError, debug: "bye", close: false)
    )
    #expect(connection.beginDraining(reason: "again") == .none)
    #expect(connection.streamOpened(HTTP2StreamID(5)) == .refuse)
    #expect(connection.streamClosed() == .none)
    #expect(connection.streamClosed() == .close)
  }

  @Test("An idle connection drains at once; a busy one ignores the idle timer")
  func idle() {
    var connection = Connection()
    #expect(connection.streamOpened(HTTP2StreamID(1)) == .accept)
    #expect(connection.idleTimeout() == .none)
    #expect(connection.streamClosed() == .startIdleTimer)
    #expect(
      connection.idleTimeout()
        == .goAway(lastStreamID: HTTP2StreamID(1), code: .noError, debug: "max_idle", close: true)
    )
  }

  @Test("Pings too often get GOAWAY(ENHANCE_YOUR_CALM) on the third strike")
  func pingFlood() {
    var policy = Connection.Policy()
    policy.minPingInterval = .seconds(10)
    var connection = Connection(policy: policy)
    _ = connection.streamOpened(HTTP2StreamID(1))
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
    #expect(connection.receivedPing(at: start) == .none)
    #expect(connection.receivedPing(at: start + .seconds(1)) == .none)  // strike 1
    #expect(connection.receivedPing(at: start + .seconds(2)) == .none)  // strike 2
    #expect(
      connection.receivedPing(at: start + .seconds(3))
        == .goAwayAndClose(lastStreamID: HTTP2StreamID(1), debug: "too_many_pings")
    )
  }

  @Test("A ping after every response (grpc-go's BDP probe) is never a strike")
  func pingsAfterResponses() {
    var connection = Connection()
    _ = connection.streamOpened(HTTP2StreamID(1))
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
    for i in 0 ..< 10_000 {
      connection.wroteHeadersOrData()
      #expect(connection.receivedPing(at: start + .microseconds(Int64(i) * 100)) == .none)
    }
    // The same rate without responses between is a flood.
    var strikes = 0
    for i in 0 ..< 4 {
      if connection.receivedPing(at: start + .seconds(2) + .microseconds(Int64(i))) != .none {
        strikes += 1
      }
    }
    #expect(strikes == 1)
  }

  @Test("Pings with no call in flight are strikes unless permitted; spaced pings are fine")
  func pingsWithoutCalls() {
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
    var strict = Connection()
    var results: [Connection.PolicyAction] = []
    for i in 0 ..< 4 { results.append(strict.receivedPing(at: start + .minutes(Int64(i) * 10))) }
    #expect(results.last != Connection.PolicyAction.none, "pings without calls, every 10 minutes")

    var policy = Connection.Policy()
    policy.permitPingsWithoutCalls = true
    var lenient = Connection(policy: policy)
    for i in 0 ..< 10 {
      #expect(lenient.receivedPing(at: start + .minutes(Int64(i) * 6)) == .none)
    }
  }

  @Test("A SETTINGS flood closes the connection")
  func settingsFlood() {
    var connection = Connection()
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
    var actions: [Connection.PolicyAction] = []
    for i in 0 ..< 101 {
      actions.append(connection.receivedSettings(at: start + .milliseconds(Int64(i))))
    }
    #expect(actions.dropLast().allSatisfy { $0 == .none })
    #expect(
      actions.last == .goAwayAndClose(lastStreamID: HTTP2StreamID(0), debug: "too_many_settings")
    )
    // Spread over windows, the same count is fine.
    var slow = Connection()
    for i in 0 ..< 300 {
      #expect(slow.receivedSettings(at: start + .seconds(Int64(i))) == .none)
    }
  }

  // MARK: - Wire helpers

  @Test("A flood of malformed streams closes the connection; the same count spread out does not")
  func malformedFlood() {
    var policy = Connection.Policy()
    policy.maxMalformedStreamsPerWindow = 20
    policy.malformedStreamWindow = .seconds(10)
    var connection = Connection(policy: policy)
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
    var actions: [Connection.PolicyAction] = []
    for i in 0 ..< 21 {
      actions.append(connection.receivedMalformedStream(at: start + .milliseconds(Int64(i))))
    }
    #expect(actions.dropLast().allSatisfy { $0 == .none })
    #expect(
      actions.last
        == .goAwayAndClose(lastStreamID: HTTP2StreamID(0), debug: "too_many_malformed_streams")
    )
    var slow = Connection(policy: policy)
    for i in 0 ..< 100 {
      #expect(slow.receivedMalformedStream(at: start + .seconds(Int64(i))) == .none)
    }
  }

  @Test("grpc-timeout decoding")
  func timeouts() {
    #expect(GRPCWire.decodeTimeout("1H") == .seconds(3600))
    #expect(GRPCWire.decodeTimeout("2M") == .seconds(120))
    #expect(GRPCWire.decodeTimeout("99999999S") == .seconds(99_999_999))
    #expect(GRPCWire.decodeTimeout("5m") == .milliseconds(5))
    #expect(GRPCWire.decodeTimeout("7u") == .microseconds(7))
    #expect(GRPCWire.decodeTimeout("9n") == .nanoseconds(9))
    #expect(GRPCWire.decodeTimeout("100000000S") == nil, "nine digits")
    // Our encoder and decoder agree.
    for duration: Duration in [.nanoseconds(1), .milliseconds(1500), .seconds(86_400)] {
      #expect(
        GRPCWire.decodeTimeout(GRPCWire.encodeTimeout(duration)).map { $0 >= duration } == true
      )
    }
  }

  @Test("grpc-message percent-encoding round-trips")
  func percentEncoding() {
    for message in ["plain", "50% off", "line\nbreak", "ünïcödé ✓", ""] {
      #expect(PercentEncoding.decode(PercentEncoding.encode(message)) == message)
    }
    #expect(PercentEncoding.encode("a%b") == "a%25b")
  }
}

import GRPCCore
import NIOCore
import NIOHPACK
import NIOHTTP2
import Testing

@testable import GRPCConnection

/// One client stream's protocol (`ClientStreamStateMachine`), frame by frame: what the server
/// may answer, what it must not, and which streams may be sent again elsewhere. No channel.
@Suite("Client stream state machine")
struct ClientStreamStateMachineTests {
  static let responseHeaders: HPACKHeaders = [
    ":status": "200", "content-type": "application/grpc", "echo": "a",
  ]

  static func trailers(_ code: Int, message: String? = nil) -> HPACKHeaders {
    var headers: HPACKHeaders = ["grpc-status": "\(code)", "trailing": "b"]
    if let message { headers.add(name: "grpc-message", value: message) }
    return headers
  }

  /// Response headers that are also the trailers (a call that ends without messages).
  static func trailersOnly(_ code: Int, message: String) -> HPACKHeaders {
    var headers: HPACKHeaders = [":status": "200", "content-type": "application/grpc"]
    headers.add(contentsOf: trailers(code, message: message))
    return headers
  }

  /// A gRPC length-prefixed message.
  static func framed(_ payload: [UInt8]) -> ByteBuffer {
    var buffer = ByteBuffer()
    buffer.writeInteger(UInt8(0))
    buffer.writeInteger(UInt32(payload.count))
    buffer.writeBytes(payload)
    return buffer
  }

  /// Computed, not stored: a stored global holding a ByteBuffer is a leak report under
  /// LeakSanitizer (`scripts/sanitize address`).
  static var request: [ClientStream.OutboundPart] {
    [
      .headers([":path": "/echo.Echo/Get"]), .message(ByteBuffer(bytes: [1, 2, 3])), .end,
    ]
  }

  /// A stream whose whole request was sent.
  static func unarySent() -> ClientStreamStateMachine {
    var machine = ClientStreamStateMachine(maxResponseBytes: 1024)
    machine.sent(request, bytes: 3, endsRequest: true)
    return machine
  }

  @Test("headers, messages and trailers deliver metadata, each message and the status")
  func unary() {
    var machine = Self.unarySent()
    #expect(machine.requestClosed)

    guard
      case .deliverMetadata(let metadata) = machine.receivedHeaders(
        Self.responseHeaders,
        endStream: false
      )
    else {
      Issue.record("response headers did not deliver metadata")
      return
    }
    #expect(Array(metadata[stringValues: "echo"]) == ["a"])
    #expect(machine.response == .receivingMessages)

    // Two messages in one DATA frame and one split over two frames.
    var data = Self.framed([1])
    data.writeImmutableBuffer(Self.framed([2, 2]))
    var third = Self.framed([3, 3, 3])
    let head = third.getSlice(at: third.readerIndex, length: 4) ?? ByteBuffer()
    third.moveReaderIndex(forwardBy: head.readableBytes)
    var delivered: [[UInt8]] = []
    let first = machine.receivedData(data, endStream: false) { delivered.append($0) }
    let second = machine.receivedData(head, endStream: false) { delivered.append($0) }
    #expect(isNone(first) && isNone(second))
    #expect(delivered == [[1], [2, 2]])
    let last = machine.receivedData(third, endStream: false) { delivered.append($0) }
    #expect(isNone(last))
    #expect(delivered == [[1], [2, 2], [3, 3, 3]])

    guard
      case .finish(let status, let trailing, let reset) = machine.receivedHeaders(
        Self.trailers(0),
        endStream: true
      )
    else {
      Issue.record("trailers did not finish the stream")
      return
    }
    #expect(status.code == .ok)
    #expect(Array(trailing[stringValues: "trailing"]) == ["b"])
    #expect(reset == nil, "both halves ended: nothing to reset")
    #expect(machine.response == .closed)

    // Anything after the end is ignored.
    #expect(isNone(machine.receivedHeaders(Self.trailers(0), endStream: true)))
    let late = machine.receivedData(Self.framed([9]), endStream: true) { _ in
      Issue.record("a message after the end was delivered")
    }
    #expect(isNone(late))
  }

  @Test(
    "the final status resets a half the other side left open: NO_ERROR for ours, CANCEL for theirs"
  )
  func resetsAfterFinish() {
    // Trailers-only while the request is still open (a server that answers before reading).
    var open = ClientStreamStateMachine(maxResponseBytes: 1024)
    open.sent([.headers([:])], bytes: 0, endsRequest: false)
    guard
      case .finish(let status, _, let reset) = open.receivedHeaders(
        Self.trailersOnly(3, message: "bad argument"),
        endStream: true
      )
    else {
      Issue.record("a trailers-only response did not finish the stream")
      return
    }
    #expect(status.code == .invalidArgument)
    #expect(status.message == "bad argument")
    #expect(reset == .noError)

    // Trailers without END_STREAM: the server's half is still open.
    var machine = Self.unarySent()
    _ = machine.receivedHeaders(Self.responseHeaders, endStream: false)
    guard
      case .finish(_, _, let cancel) = machine.receivedHeaders(Self.trailers(0), endStream: false)
    else {
      Issue.record("trailers did not finish the stream")
      return
    }
    #expect(cancel == .cancel)
  }

  @Test("1xx headers are skipped; a non-200 without grpc-status maps the HTTP status")
  func httpStatuses() {
    var machine = Self.unarySent()
    #expect(isNone(machine.receivedHeaders([":status": "100"], endStream: false)))
    #expect(machine.response == .awaitingHeaders)
    guard
      case .finish(let status, _, _) = machine.receivedHeaders([":status": "503"], endStream: true)
    else {
      Issue.record("a 503 did not finish the stream")
      return
    }
    #expect(status.code == .unavailable)
  }

  @Test("a response that is not gRPC fails the call and resets the stream if it is open")
  func notGRPC() {
    var noStatus = Self.unarySent()
    let missing = noStatus.receivedHeaders(["content-type": "application/grpc"], endStream: false)
    guard case .fail(let error, let reset) = missing else {
      Issue.record("headers without :status did not fail")
      return
    }
    #expect(error.code == .internalError)
    #expect(error.message.contains("lack ':status'"), "\(error)")
    #expect(reset == .protocolError, "a response without ':status' is malformed HTTP/2")
    #expect(noStatus.response == .closed)

    var html = Self.unarySent()
    let answer = html.receivedHeaders(
      [":status": "200", "content-type": "text/html"],
      endStream: true
    )
    guard case .fail(let htmlError, let htmlReset) = answer else {
      Issue.record("a text/html response did not fail")
      return
    }
    #expect(htmlError.code == .internalError)
    #expect(htmlError.message.contains("text/html"))
    #expect(htmlReset == nil, "the server ended the stream: nothing to reset")
  }

  @Test("malformed response headers or trailers fail the call and reset an open stream")
  func malformedBlocks() {
    var status = HPACKHeaders([(":status", "200")])
    status.add(name: ":status", value: "200")
    let headerCases: [(HPACKHeaders, String)] = [
      ([":status": "200", "Upper": "1"], "\"Upper\""),
      ([":status": "200", "bad name": "1"], "\"bad name\""),
      ([":status": "200", "keep-alive": "1"], "'keep-alive'"),
      ([":status": "200", "x": "a\nb"], "value of 'x'"),
      ([":status": "200", ":method": "GET"], "\":method\""),
      (["content-type": "application/grpc", ":status": "200"], "after regular fields"),
      (status, "twice"),
      ([":status": "20 0"], "':status' of"),
    ]
    for (headers, named) in headerCases {
      var machine = Self.unarySent()
      guard case .fail(let error, let reset) = machine.receivedHeaders(headers, endStream: false)
      else {
        Issue.record("\(headers) did not fail")
        continue
      }
      #expect(error.code == .internalError)
      #expect(error.message.contains("response headers"), "\(error)")
      #expect(error.message.contains(named), "\(error)")
      #expect(reset == .protocolError)
      #expect(machine.response == .closed)
    }

    var trailers = Self.unarySent()
    _ = trailers.receivedHeaders(Self.responseHeaders, endStream: false)
    var withStatus = Self.trailers(0)
    withStatus.add(name: ":status", value: "200")
    guard case .fail(let error, let reset) = trailers.receivedHeaders(withStatus, endStream: true)
    else {
      Issue.record("trailers with a pseudo-header did not fail")
      return
    }
    #expect(error.message.contains("trailers"), "\(error)")
    #expect(reset == nil, "the server ended the stream: nothing to reset")
  }

  @Test("DATA before headers, DATA ending the stream without trailers and a cut message fail")
  func dataErrors() {
    var early = Self.unarySent()
    let earlyAction = early.receivedData(Self.framed([1]), endStream: false) { _ in
      Issue.record("a message before headers was delivered")
    }
    guard case .fail(let error, let reset) = earlyAction else {
      Issue.record("DATA before headers did not fail")
      return
    }
    #expect(error.code == .internalError)
    #expect(reset == .cancel)

    var noTrailers = Self.unarySent()
    _ = noTrailers.receivedHeaders(Self.responseHeaders, endStream: false)
    var delivered: [[UInt8]] = []
    let action = noTrailers.receivedData(Self.framed([7]), endStream: true) { delivered.append($0) }
    #expect(delivered == [[7]], "messages before the bad end are delivered")
    guard case .fail(let endError, let endReset) = action else {
      Issue.record("END_STREAM on DATA did not fail")
      return
    }
    #expect(endError.code == .internalError)
    #expect(endReset == nil)

    var cut = Self.unarySent()
    _ = cut.receivedHeaders(Self.responseHeaders, endStream: false)
    var partial = Self.framed([1, 2, 3, 4])
    partial.moveWriterIndex(to: partial.writerIndex - 2)
    let cutAction = cut.receivedData(partial, endStream: false) { _ in
      Issue.record("half a message was delivered")
    }
    #expect(isNone(cutAction))
    guard case .finish(let status, _, _) = cut.receivedHeaders(Self.trailers(0), endStream: true)
    else {
      Issue.record("trailers did not finish the stream")
      return
    }
    #expect(status.code == .internalError, "an OK status after half a message is not OK")
  }

  @Test("a message over the response limit fails with resourceExhausted and resets the stream")
  func tooLarge() {
    var machine = ClientStreamStateMachine(maxResponseBytes: 4)
    machine.sent(Self.request, bytes: 3, endsRequest: true)
    _ = machine.receivedHeaders(Self.responseHeaders, endStream: false)
    let action = machine.receivedData(Self.framed([1, 2, 3, 4, 5]), endStream: false) { _ in
      Issue.record("an oversized message was delivered")
    }
    guard case .fail(let error, let reset) = action else {
      Issue.record("an oversized message did not fail")
      return
    }
    #expect(error.code == .resourceExhausted)
    #expect(reset == .cancel)
  }

  @Test("REFUSED_STREAM before any response is retried with what was sent; after one it fails")
  func refused() {
    var machine = Self.unarySent()
    guard case .retryUnprocessed(let sent, let error) = machine.receivedReset(.refusedStream) else {
      Issue.record("a refused stream was not retried")
      return
    }
    #expect(sent?.count == Self.request.count)
    #expect(error.code == .unavailable)

    var answered = Self.unarySent()
    _ = answered.receivedHeaders(Self.responseHeaders, endStream: false)
    guard case .fail = answered.receivedReset(.refusedStream) else {
      Issue.record("a stream the server answered was retried")
      return
    }

    var cancelled = Self.unarySent()
    guard case .fail(let cancelError) = cancelled.receivedReset(.cancel) else {
      Issue.record("a cancelled stream was retried")
      return
    }
    #expect(cancelError.code == .cancelled)
  }

  @Test("more than 64 KiB sent is not kept: the retry gets nothing to send again")
  func replayLimit() {
    var machine = ClientStreamStateMachine(maxResponseBytes: 1024)
    let chunk = ByteBuffer(repeating: 0, count: 40 * 1024)
    machine.sent([.headers([:]), .message(chunk)], bytes: chunk.readableBytes, endsRequest: false)
    machine.sent([.message(chunk)], bytes: chunk.readableBytes, endsRequest: false)
    #expect(!machine.requestClosed)
    guard case .retryUnprocessed(let sent, _) = machine.receivedReset(.refusedStream) else {
      Issue.record("a refused stream was not retried")
      return
    }
    #expect(sent == nil)
  }

  @Test("a stream past the server's GOAWAY is retried when it or its connection closes")
  func goAway() {
    var closed = Self.unarySent()
    guard
      case .retryUnprocessed(let sent, let error) = closed.closed(reason: nil, beyondGoAway: true)
    else {
      Issue.record("a stream past GOAWAY was not retried")
      return
    }
    #expect(sent?.count == Self.request.count)
    #expect(error.code == .unavailable)

    var within = Self.unarySent()
    guard case .fail(let reset) = within.closed(reason: .cancel, beyondGoAway: false) else {
      Issue.record("a processed stream was retried")
      return
    }
    #expect(reset.code == .cancelled)

    let lost = RPCError(code: .unavailable, message: "lost")
    var unanswered = Self.unarySent()
    guard case .retryUnprocessed = unanswered.connectionClosed(beyondGoAway: true, error: lost)
    else {
      Issue.record("an unanswered stream past GOAWAY was not retried on connection loss")
      return
    }
    var answered = Self.unarySent()
    _ = answered.receivedHeaders(Self.responseHeaders, endStream: false)
    guard case .fail(let error2) = answered.connectionClosed(beyondGoAway: true, error: lost) else {
      Issue.record("an answered stream was retried on connection loss")
      return
    }
    #expect(error2.message == "lost")
  }
}

private func isNone(_ action: ClientStreamStateMachine.HeadersAction) -> Bool {
  if case .none = action { return true }
  return false
}

private func isNone(_ action: ClientStreamStateMachine.DataAction) -> Bool {
  if case .none = action { return true }
  return false
}

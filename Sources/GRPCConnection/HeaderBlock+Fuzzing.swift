internal import GRPCCore
internal import NIOCore
internal import NIOHPACK

/// The readers of header blocks, for `registry-fuzz` (which sees only package API). Both ends
/// run NIOHTTP2Handler with its header-block validation off, so whatever HPACK decodes from a
/// peer reaches ``HeaderBlock`` and the stream state machines unchecked: this is where the fuzzer
/// looks for a crash or a block that gets past the checks.
package enum HeaderBlockFuzzing {
  /// Decodes `block` as HPACK and gives the headers to the server's request reader and to the
  /// client's response-headers and trailers readers. Traps when one of these breaks:
  /// - the server starts a call only for a well-formed request, whose method is its `:path`;
  /// - the server and the client refuse every malformed block, and reset an open stream with
  ///   PROTOCOL_ERROR;
  /// - nothing crashes.
  package static func check(hpack block: [UInt8], endStream: Bool) {
    var decoder = HPACKDecoder(allocator: ByteBufferAllocator())
    var buffer = ByteBuffer(bytes: block)
    guard let headers = try? decoder.decodeHeaders(from: &buffer) else { return }

    let requestProblem = HeaderBlock.request.problem(in: headers)
    let (server, action) = ServerStreamStateMachine.open(
      headers: headers,
      endStream: endStream,
      maxRequestBytes: 1024
    )
    switch action {
    case .malformed:
      precondition(requestProblem != nil, "a well-formed request was called malformed")
      precondition(server.isDone, "a malformed request left its stream open")
    case .start(let descriptor, _, _):
      precondition(requestProblem == nil, "a malformed request started a call")
      precondition(
        "/" + descriptor.fullyQualifiedMethod == headers.first(name: ":path"),
        "the call's method is not its ':path'"
      )
    case .reject:
      precondition(requestProblem == nil, "a malformed request was answered")
    }

    var client = ClientStreamStateMachine(maxResponseBytes: 1024)
    client.sent([], bytes: 0, endsRequest: true)
    let responseProblem = HeaderBlock.response.problem(in: headers)
    Self.expectRefused(
      client.receivedHeaders(headers, endStream: endStream),
      responseProblem,
      endStream
    )

    var trailers = ClientStreamStateMachine(maxResponseBytes: 1024)
    trailers.sent([], bytes: 0, endsRequest: true)
    _ = trailers.receivedHeaders(
      [":status": "200", "content-type": "application/grpc"],
      endStream: false
    )
    let trailersProblem = HeaderBlock.trailers.problem(in: headers)
    Self.expectRefused(
      trailers.receivedHeaders(headers, endStream: endStream),
      trailersProblem,
      endStream
    )

    _ = GRPCWire.metadata(from: headers)
  }

  /// When `problem` is not `nil`, `action` must fail the call and reset an open stream with
  /// PROTOCOL_ERROR.
  private static func expectRefused(
    _ action: ClientStreamStateMachine.HeadersAction,
    _ problem: String?,
    _ endStream: Bool
  ) {
    guard problem != nil else { return }
    guard case .fail(let error, let reset) = action else {
      preconditionFailure("the client accepted a malformed block: \(action)")
    }
    precondition(error.code == .internalError, "a malformed block failed with \(error.code)")
    precondition(reset == (endStream ? nil : .protocolError), "reset \(String(describing: reset))")
  }
}

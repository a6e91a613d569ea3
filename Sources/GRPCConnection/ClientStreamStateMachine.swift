internal import GRPCCore
internal import NIOCore
internal import NIOHPACK
internal import NIOHTTP2

/// The protocol of one client stream, as gRPC over HTTP/2 defines it, without I/O: the request
/// half (open until the client's END_STREAM) and the response half (headers, then messages, then
/// trailers).
///
/// ``ConnectionHandler`` feeds it what it sent and what the server sent and does what it returns:
/// deliver metadata, messages or the final status to the ``ClientStream``, reset the stream, or
/// hand what was sent back for a transparent retry on another connection.
/// `ClientStreamStateMachineTests` drives it frame by frame.
struct ClientStreamStateMachine {
  enum Response: Equatable {
    /// No response headers yet: a stream refused or cut off now was never processed.
    case awaitingHeaders
    /// Headers arrived; DATA frames carry messages until the trailers.
    case receivingMessages
    /// The final status was delivered or the stream failed; later frames are ignored.
    case closed
  }

  /// What the handler does with response headers or trailers.
  enum HeadersAction {
    /// Nothing (an informational 1xx response, or a stream already closed).
    case none
    /// The response's leading metadata.
    case deliverMetadata(Metadata)
    /// The final status with its trailing metadata. `reset` is the RST_STREAM to send after it:
    /// NO_ERROR when the server ended its half but the request half is open (so the server
    /// stops waiting for request data, as grpc does), CANCEL when the server did not end it.
    case finish(Status, Metadata, reset: HTTP2ErrorCode?)
    /// The response is not gRPC or not well-formed HTTP/2; fail the call, and reset the stream
    /// with `reset` if it is not `nil`.
    case fail(RPCError, reset: HTTP2ErrorCode?)
  }

  /// What the handler does after a DATA frame's messages were delivered.
  enum DataAction {
    case none
    /// Fail the call; reset the stream with `reset` if it is not `nil`.
    case fail(RPCError, reset: HTTP2ErrorCode?)
  }

  /// What the handler does when the stream ends without a final status.
  enum EndAction {
    /// The server never processed the stream: send it again on another connection. `sent` is
    /// what this stream sent (`nil` if it was too much to keep).
    case retryUnprocessed(sent: [ClientStream.OutboundPart]?, RPCError)
    /// Fail the call.
    case fail(RPCError)
  }

  /// The most request bytes kept for a transparent retry.
  static let replayLimit = 64 * 1024

  /// The error a stream the server did not process ends with.
  static let unprocessedError = RPCError(
    code: .unavailable,
    message: "The server is going away (GOAWAY) and did not process the RPC; it is safe to retry."
  )

  private(set) var response: Response = .awaitingHeaders
  /// Whether the request half ended (END_STREAM sent).
  private(set) var requestClosed = false
  private var deframer: MessageDeframer
  /// What was sent while no response had come, up to ``replayLimit`` bytes (`nil` beyond, and
  /// once the response began: a processed stream is never sent again).
  private var sent: [ClientStream.OutboundPart]? = []
  private var sentBytes = 0

  init(maxResponseBytes: Int) {
    self.deframer = MessageDeframer(maxMessageBytes: maxResponseBytes)
  }

  // MARK: - Request

  /// The handler wrote `parts` (`bytes` of messages); `endsRequest` if they ended the request.
  mutating func sent(_ parts: [ClientStream.OutboundPart], bytes: Int, endsRequest: Bool) {
    if self.response == .awaitingHeaders, self.sent != nil {
      self.sentBytes += bytes
      if self.sentBytes <= Self.replayLimit {
        self.sent?.append(contentsOf: parts)
      } else {
        self.sent = nil
      }
    }
    if endsRequest {
      self.requestClosed = true
    }
  }

  // MARK: - Response

  /// A HEADERS frame from the server: the response headers, or the trailers after messages.
  mutating func receivedHeaders(_ headers: HPACKHeaders, endStream: Bool) -> HeadersAction {
    let block: HeaderBlock = self.response == .receivingMessages ? .trailers : .response
    if self.response != .closed, let problem = block.problem(in: headers) {
      // A malformed response is a stream error of type PROTOCOL_ERROR (RFC 9113 § 8.1.1).
      let part = block == .trailers ? "trailers" : "response headers"
      self.response = .closed
      return .fail(
        RPCError(code: .internalError, message: "The server's \(part) \(problem)."),
        reset: endStream ? nil : .protocolError
      )
    }
    switch self.response {
    case .awaitingHeaders:
      guard let statusField = headers.first(name: ":status"), let httpStatus = Int(statusField)
      else {
        return self.fail(
          RPCError(code: .internalError, message: "The server's response has no valid ':status'."),
          reset: endStream ? nil : .cancel
        )
      }
      if (100 ..< 200).contains(httpStatus) {
        return .none  // Informational; the real response follows.
      }
      if httpStatus != 200 && headers.first(name: "grpc-status") == nil {
        return self.finish(
          GRPCWire.status(httpStatus: httpStatus),
          GRPCWire.metadata(from: headers),
          endStream: endStream
        )
      }
      if let contentType = headers.first(name: "content-type"),
        !contentType.hasPrefix("application/grpc")
      {
        return self.fail(
          RPCError(
            code: .internalError,
            message: "The server responded with content-type '\(contentType)', not gRPC."
          ),
          reset: endStream ? nil : .cancel
        )
      }
      if endStream {
        // Trailers-only response.
        return self.finish(
          GRPCWire.status(fromTrailers: headers),
          GRPCWire.metadata(from: headers),
          endStream: true
        )
      }
      self.response = .receivingMessages
      self.sent = nil
      return .deliverMetadata(GRPCWire.metadata(from: headers))

    case .receivingMessages:
      // Trailers. (grpc servers always set END_STREAM on them; tolerate its absence.)
      var status = GRPCWire.status(fromTrailers: headers)
      if status.code == .ok, self.deframer.hasPartialMessage {
        status = Status(
          code: .internalError,
          message: "The server ended the response inside a message."
        )
      }
      return self.finish(status, GRPCWire.metadata(from: headers), endStream: endStream)

    case .closed:
      return .none
    }
  }

  /// A DATA frame from the server: each whole message in it goes to `deliver`, in order.
  mutating func receivedData(
    _ buffer: ByteBuffer,
    endStream: Bool,
    deliver: ([UInt8]) -> Void
  ) -> DataAction {
    switch self.response {
    case .awaitingHeaders:
      self.response = .closed
      return .fail(
        RPCError(code: .internalError, message: "The server sent DATA before response headers."),
        reset: endStream ? nil : .cancel
      )
    case .closed:
      return .none
    case .receivingMessages:
      ()
    }

    self.deframer.append(buffer)
    do {
      while let message = try self.deframer.next() {
        deliver(message)
      }
    } catch {
      self.response = .closed
      return .fail(error, reset: endStream ? nil : .cancel)
    }

    if endStream {
      self.response = .closed
      return .fail(
        RPCError(code: .internalError, message: "The server closed the stream without trailers."),
        reset: nil
      )
    }
    return .none
  }

  // MARK: - Ends without a status

  /// The server reset the stream. REFUSED_STREAM before any response means it was not
  /// processed.
  mutating func receivedReset(_ code: HTTP2ErrorCode) -> EndAction {
    defer { self.response = .closed }
    let error = GRPCWire.error(forReset: code)
    if code == .refusedStream, self.response == .awaitingHeaders {
      return .retryUnprocessed(sent: self.sent, error)
    }
    return .fail(error)
  }

  /// HTTP/2 closed the stream before its final status. `beyondGoAway`: its ID is above the last
  /// one the server's GOAWAY said it processes.
  mutating func closed(reason: HTTP2ErrorCode?, beyondGoAway: Bool) -> EndAction {
    defer { self.response = .closed }
    if beyondGoAway {
      return .retryUnprocessed(sent: self.sent, Self.unprocessedError)
    }
    if let reason {
      return .fail(GRPCWire.error(forReset: reason))
    }
    return .fail(RPCError(code: .unavailable, message: "The stream closed unexpectedly."))
  }

  /// The connection closed under the stream. Past the server's GOAWAY and unanswered, it was
  /// never processed, even if the connection closed before the stream's own close event.
  mutating func connectionClosed(beyondGoAway: Bool, error: RPCError) -> EndAction {
    defer { self.response = .closed }
    if beyondGoAway, self.response == .awaitingHeaders {
      return .retryUnprocessed(sent: self.sent, Self.unprocessedError)
    }
    return .fail(error)
  }

  // MARK: - Helpers

  private mutating func finish(
    _ status: Status,
    _ metadata: Metadata,
    endStream: Bool
  ) -> HeadersAction {
    self.response = .closed
    let reset: HTTP2ErrorCode? =
      if !endStream { .cancel } else if !self.requestClosed { .noError } else { nil }
    return .finish(status, metadata, reset: reset)
  }

  private mutating func fail(_ error: RPCError, reset: HTTP2ErrorCode?) -> HeadersAction {
    self.response = .closed
    return .fail(error, reset: reset)
  }
}

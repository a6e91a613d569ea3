internal import GRPCCore
internal import NIOCore
internal import NIOHPACK
internal import NIOHTTP2

/// The server side of one gRPC call on one HTTP/2 stream: what the client's frames mean and which
/// frames the handler's response parts become. It takes events and returns actions; it does no
/// I/O and holds no references, so it is tested without sockets
/// (`ServerStreamStateMachineTests`).
///
/// A call is `request` (the client's half: open until END_STREAM) and `response` (ours: idle,
/// headers sent, closed by trailers). The stream is done when both halves are closed or it was
/// reset.
struct ServerStreamStateMachine {
  enum RequestState {
    case open(MessageDeframer)
    case closed
  }

  enum ResponseState: Equatable {
    case idle
    case headersSent
    case closed
  }

  private(set) var request: RequestState
  private(set) var response: ResponseState

  /// Both halves are closed: the stream can be forgotten.
  var isDone: Bool {
    if case .closed = self.request, self.response == .closed { return true }
    return false
  }

  var isResponseClosed: Bool { self.response == .closed }

  // MARK: - Opening

  /// What to do with a new stream's request headers.
  enum OpenAction: Equatable {
    /// Run the call: its method, metadata, and the deadline the client set (`grpc-timeout`,
    /// enforced by the connection, left out of the metadata).
    case start(MethodDescriptor, Metadata, timeout: Duration?)
    /// Answer at once without running a handler: these headers end the response; then reset
    /// the stream (NO_ERROR) if the client has not finished sending.
    case reject(HPACKHeaders, reset: Bool)
    /// The request header block is malformed HTTP/2 (``HeaderBlock``, with what is wrong): a
    /// stream error, so reset the stream with PROTOCOL_ERROR and answer nothing (RFC 9113
    /// § 8.1.1), as grpc-go's server does.
    case malformed(String)
  }

  /// Reads a new stream's request headers.
  ///
  /// - Parameters:
  ///   - maxRequestBytes: The largest request message accepted.
  ///   - knownMethods: The server's methods by path (`/package.Service/Method`); a path not in
  ///     it is still parsed, so the server's router answers it `unimplemented`.
  static func open(
    headers: HPACKHeaders,
    endStream: Bool,
    maxRequestBytes: Int,
    knownMethods: [String: MethodDescriptor] = [:]
  ) -> (Self, OpenAction) {
    var machine = Self(
      request: endStream
        ? .closed
        : .open(
          MessageDeframer(
            maxMessageBytes: maxRequestBytes,
            peer: .client,
            limitSetting: "the server's maxRequestMessageBytes"
          )
        ),
      response: .idle
    )
    let action = machine.validate(
      headers: headers,
      endStream: endStream,
      knownMethods: knownMethods
    )
    switch action {
    case .reject, .malformed:
      machine.response = .closed
      machine.request = .closed
    case .start:
      ()
    }
    return (machine, action)
  }

  private func validate(
    headers: HPACKHeaders,
    endStream: Bool,
    knownMethods: [String: MethodDescriptor]
  ) -> OpenAction {
    if let problem = HeaderBlock.request.problem(in: headers) {
      return .malformed("The request headers \(problem).")
    }
    // Not gRPC at all: answered with an HTTP status, as grpc-go does.
    let method = headers.first(name: ":method")
    guard method == "POST" else {
      return .reject(
        GRPCWire.makeHTTPErrorResponse(
          httpStatus: 405,
          status: Status(
            code: .internalError,
            message: "gRPC requires the POST method, not '\(method ?? "")'."
          )
        ),
        reset: !endStream
      )
    }
    let contentType = headers.first(name: "content-type") ?? ""
    guard Self.isGRPCContentType(contentType) else {
      return .reject(
        GRPCWire.makeHTTPErrorResponse(
          httpStatus: 415,
          status: Status(
            code: .internalError,
            message:
              "The content-type '\(contentType)' is not gRPC; send 'application/grpc' (or application/grpc+proto)."
          )
        ),
        reset: !endStream
      )
    }
    // gRPC, but not something this server can run.
    guard let path = headers.first(name: ":path"),
      let descriptor = knownMethods[path] ?? Self.descriptor(path: path)
    else {
      let path = headers.first(name: ":path") ?? ""
      return .reject(
        GRPCWire.makeTrailers(
          status: Status(
            code: .unimplemented,
            message: "The path '\(path)' is not a gRPC method path ('/package.Service/Method')."
          ),
          metadata: [:],
          trailersOnly: true
        ),
        reset: !endStream
      )
    }
    if let encoding = headers.first(name: "grpc-encoding"), encoding != "identity" {
      var trailers = GRPCWire.makeTrailers(
        status: Status(
          code: .unimplemented,
          message:
            "This server does not support the message encoding '\(encoding)'; send messages uncompressed (identity)."
        ),
        metadata: [:],
        trailersOnly: true
      )
      trailers.add(name: "grpc-accept-encoding", value: "identity")
      return .reject(trailers, reset: !endStream)
    }
    var timeout: Duration?
    if let value = headers.first(name: "grpc-timeout") {
      guard let parsed = GRPCWire.decodeTimeout(value) else {
        return .reject(
          GRPCWire.makeTrailers(
            status: Status(
              code: .internalError,
              message:
                "The grpc-timeout '\(value)' is malformed; send at most 8 digits and a unit (H, M, S, m, u, n)."
            ),
            metadata: [:],
            trailersOnly: true
          ),
          reset: !endStream
        )
      }
      timeout = parsed
    }
    return .start(descriptor, GRPCWire.requestMetadata(from: headers), timeout: timeout)
  }

  /// `application/grpc`, optionally followed by `+format` or `;parameters`.
  static func isGRPCContentType(_ value: String) -> Bool {
    let prefix = "application/grpc"
    guard value.hasPrefix(prefix) else { return false }
    let rest = value.utf8.dropFirst(prefix.utf8.count)
    guard let next = rest.first else { return true }
    return next == UInt8(ascii: "+") || next == UInt8(ascii: ";")
  }

  /// `/package.Service/Method` as a method descriptor; `nil` for anything else.
  static func descriptor(path: String) -> MethodDescriptor? {
    let utf8 = path.utf8
    guard utf8.first == UInt8(ascii: "/") else { return nil }
    let body = utf8.dropFirst()
    guard let slash = body.firstIndex(of: UInt8(ascii: "/")) else { return nil }
    let service = body[..<slash]
    let method = body[body.index(after: slash)...]
    guard !service.isEmpty, !method.isEmpty, !method.contains(UInt8(ascii: "/")) else {
      return nil
    }
    return MethodDescriptor(
      fullyQualifiedService: String(Substring(service)),
      method: String(Substring(method))
    )
  }

  // MARK: - Request frames

  /// What to do with a request DATA frame.
  enum DataAction: Equatable {
    /// Hand these messages to the call; `end` if the request is complete.
    case deliver([[UInt8]], end: Bool)
    /// The call is over on the server's side (a malformed request, the deadline): end the
    /// response with these trailers (if it is not over), reset the stream (if the client is
    /// still sending), and cancel the handler with the error.
    case fail(HPACKHeaders?, reset: HTTP2ErrorCode?, cancel: RPCError)
    /// Nothing (data after the request ended, which HTTP/2 already rejects).
    case none
  }

  mutating func receivedData(_ buffer: ByteBuffer, endStream: Bool) -> DataAction {
    guard case .open(var deframer) = self.request else { return .none }
    // Taken out while deframing, so that the deframer's buffer is not copied.
    self.request = .open(MessageDeframer.empty)
    deframer.append(buffer)
    var messages: [[UInt8]] = []
    do {
      while let message = try deframer.next() {
        messages.append(message)
      }
    } catch {
      if endStream { self.request = .closed }
      return self.fail(status: Status(code: error.code.statusCode, message: error.message))
    }
    if endStream {
      self.request = .closed
      if deframer.hasPartialMessage {
        return self.fail(
          status: Status(
            code: .internalError,
            message: "The client ended the request inside a message."
          )
        )
      }
      return .deliver(messages, end: true)
    }
    self.request = .open(deframer)
    return .deliver(messages, end: false)
  }

  /// Request HEADERS after the first: trailers. gRPC requests have none; an empty trailer block
  /// ending the stream is tolerated as END_STREAM, anything else fails the call.
  mutating func receivedTrailers(_ headers: HPACKHeaders, endStream: Bool) -> DataAction {
    guard case .open(let deframer) = self.request else { return .none }
    if let problem = HeaderBlock.trailers.problem(in: headers) {
      // Malformed: a stream error (RFC 9113 § 8.1.1).
      let error = RPCError(code: .internalError, message: "The client's trailers \(problem).")
      self.request = .closed
      self.response = .closed
      return .fail(nil, reset: .protocolError, cancel: error)
    }
    guard endStream else {
      return self.fail(
        status: Status(
          code: .internalError,
          message: "The client sent a second block of headers without ending the request."
        )
      )
    }
    if deframer.hasPartialMessage {
      return self.fail(
        status: Status(
          code: .internalError,
          message: "The client ended the request inside a message."
        )
      )
    }
    self.request = .closed
    return .deliver([], end: true)
  }

  /// The client's deadline passed.
  ///
  /// The trailers are a complete response, so a client still sending is reset with NO_ERROR, as
  /// grpc-go's server does: gRPC keeps CANCEL for a response cut short, and gRPC's C core reports
  /// a CANCEL that follows the trailers as the call's status (CANCELLED, not DEADLINE_EXCEEDED).
  mutating func deadlineExpired() -> DataAction {
    guard !self.isDone else { return .none }
    return self.fail(
      status: Status(
        code: .deadlineExceeded,
        message: "The call's deadline (grpc-timeout) passed before the server answered."
      )
    )
  }

  private mutating func fail(status: Status, reset: HTTP2ErrorCode = .noError) -> DataAction {
    let requestOpen: Bool
    if case .open = self.request { requestOpen = true } else { requestOpen = false }
    self.request = .closed
    let trailers: HPACKHeaders?
    switch self.response {
    case .idle:
      trailers = GRPCWire.makeTrailers(status: status, metadata: [:], trailersOnly: true)
    case .headersSent:
      trailers = GRPCWire.makeTrailers(status: status, metadata: [:], trailersOnly: false)
    case .closed:
      trailers = nil
    }
    self.response = .closed
    return .fail(
      trailers,
      reset: requestOpen ? reset : nil,
      cancel: RPCError(code: RPCError.Code(status.code) ?? .internalError, message: status.message)
    )
  }

  /// The client reset the stream, or it closed: both halves are over.
  mutating func closed() {
    self.request = .closed
    self.response = .closed
  }

  // MARK: - Response parts

  /// A response part as the handler's task prepared it: headers encoded, messages framed.
  enum ResponsePart: Sendable {
    case metadata(HPACKHeaders)
    case message(ByteBuffer)
    case status(Status, Metadata)
  }

  /// The frames a response part becomes.
  enum WriteAction {
    case headers(HPACKHeaders)
    case data(ByteBuffer)
    /// Default headers (the handler sent a message first), then the message.
    case headersAndData(HPACKHeaders, ByteBuffer)
    /// The trailers, ending the stream; then RST_STREAM(NO_ERROR) if `reset` (the client was
    /// still sending: it need not go on).
    case trailers(HPACKHeaders, reset: Bool)
    /// The response is already closed: nothing to write.
    case drop
  }

  mutating func write(_ part: ResponsePart) -> WriteAction {
    switch (part, self.response) {
    case (_, .closed):
      return .drop
    case (.metadata(let headers), .idle):
      self.response = .headersSent
      return .headers(headers)
    case (.metadata, .headersSent):
      // A second block of response headers is not gRPC; the executor never sends one.
      return .drop
    case (.message(let buffer), .idle):
      self.response = .headersSent
      return .headersAndData(GRPCWire.plainResponseHeaders, buffer)
    case (.message(let buffer), .headersSent):
      return .data(buffer)
    case (.status(let status, let metadata), let state):
      self.response = .closed
      let trailers = GRPCWire.makeTrailers(
        status: status,
        metadata: metadata,
        trailersOnly: state == .idle
      )
      let requestOpen: Bool
      if case .open = self.request { requestOpen = true } else { requestOpen = false }
      return .trailers(trailers, reset: requestOpen)
    }
  }
}

extension RPCError.Code {
  /// The status code with the same meaning.
  var statusCode: Status.Code {
    Status.Code(self)
  }
}

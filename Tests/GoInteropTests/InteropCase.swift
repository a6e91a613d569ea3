import Foundation
import GRPCCore
import Testing

/// gRPC's standard interop test cases (grpc/grpc `doc/interop-test-descriptions.md`), the client
/// side, written once for any `GRPCClient`: each case makes the calls the description prescribes
/// against a `grpc.testing.TestService` server and throws ``InteropCaseFailure`` when an
/// assertion does not hold. The raw values are the cases' standard names, which the grpc-go and
/// grpcio clients take too.
enum InteropCase: String, CaseIterable, Sendable, CustomTestStringConvertible {
  case emptyUnary = "empty_unary"
  case largeUnary = "large_unary"
  case clientStreaming = "client_streaming"
  case serverStreaming = "server_streaming"
  case pingPong = "ping_pong"
  case emptyStream = "empty_stream"
  case timeoutOnSleepingServer = "timeout_on_sleeping_server"
  case cancelAfterBegin = "cancel_after_begin"
  case cancelAfterFirstResponse = "cancel_after_first_response"
  case statusCodeAndMessage = "status_code_and_message"
  case specialStatusMessage = "special_status_message"
  case customMetadata = "custom_metadata"
  case unimplementedMethod = "unimplemented_method"
  case unimplementedService = "unimplemented_service"

  var testDescription: String { self.rawValue }

  // The sizes and values the description prescribes.
  static let largeRequestSize = 271_828
  static let largeResponseSize = 314_159
  /// client_streaming's and ping_pong's request payloads (74,922 bytes in all).
  static let streamingRequestSizes = [27_182, 8, 1_828, 45_904]
  /// server_streaming's and ping_pong's response payloads.
  static let streamingResponseSizes = [31_415, 9, 2_653, 58_979]
  static let echoInitialValue = "test_initial_metadata_value"
  static let echoTrailingValue: [UInt8] = [0xab, 0xab, 0xab]
  static let statusMessage = "test status message"
  static let specialMessage =
    "\t\ntest with whitespace\r\nand Unicode BMP \u{263A} and non-BMP \u{1F608}\t\n"

  /// Runs the case with `client`.
  func run<Transport: ClientTransport>(_ client: GRPCClient<Transport>) async throws {
    let service = Grpc_Testing_TestService.Client(wrapping: client)
    switch self {
    case .emptyUnary:
      _ = try await service.emptyCall(Grpc_Testing_Empty())
    case .largeUnary:
      let response = try await service.unaryCall(
        .with {
          $0.responseSize = Int32(Self.largeResponseSize)
          $0.payload = Self.zeros(Self.largeRequestSize)
        }
      )
      try Self.expectZeros(response.payload, Self.largeResponseSize, "the response")
    case .clientStreaming:
      try await Self.clientStreaming(service)
    case .serverStreaming:
      try await Self.serverStreaming(service)
    case .pingPong:
      try await Self.pingPong(service)
    case .emptyStream:
      // No request: the producer returns at once, which half-closes the call.
      let count = try await service.fullDuplexCall { _ in
      } onResponse: { response in
        try await response.messages.reduce(0) { count, _ in count + 1 }
      }
      try Self.expect(count == 0, "\(count) responses, want none")
    case .timeoutOnSleepingServer:
      try await Self.timeoutOnSleepingServer(service)
    case .cancelAfterBegin:
      try await Self.cancelAfterBegin(service)
    case .cancelAfterFirstResponse:
      try await Self.cancelAfterFirstResponse(service)
    case .statusCodeAndMessage:
      try await Self.echoStatus(service, message: Self.statusMessage, duplex: true)
    case .specialStatusMessage:
      try await Self.echoStatus(service, message: Self.specialMessage, duplex: false)
    case .customMetadata:
      try await Self.customMetadata(service)
    case .unimplementedMethod:
      let error = await Self.error {
        _ = try await service.unimplementedCall(Grpc_Testing_Empty())
      }
      try Self.expect(error, .unimplemented)
    case .unimplementedService:
      let other = Grpc_Testing_UnimplementedService.Client(wrapping: client)
      let error = await Self.error {
        _ = try await other.unimplementedCall(Grpc_Testing_Empty())
      }
      try Self.expect(error, .unimplemented)
    }
  }

  private typealias Service<Transport: ClientTransport> = Grpc_Testing_TestService.Client<Transport>

  private static func zeros(_ size: Int) -> Grpc_Testing_Payload {
    .with { $0.body = Data(count: size) }
  }

  private static func expectZeros(
    _ payload: Grpc_Testing_Payload,
    _ size: Int,
    _ what: String
  ) throws {
    try expect(payload.body.count == size, "\(what): \(payload.body.count) bytes, want \(size)")
    try expect(payload.body.allSatisfy { $0 == 0 }, "\(what): the payload is not all zeros")
  }

  private static func duplexRequest(
    responseSize: Int,
    requestSize: Int
  ) -> Grpc_Testing_StreamingOutputCallRequest {
    .with {
      $0.responseParameters = [.with { $0.size = Int32(responseSize) }]
      $0.payload = Self.zeros(requestSize)
    }
  }

  /// The error `body` threw, or nil.
  private static func error(_ body: () async throws -> Void) async -> (any Error)? {
    do {
      try await body()
      return nil
    } catch {
      return error
    }
  }

  /// Fails unless `error` is an `RPCError` with `code` (and `message`, if given).
  private static func expect(
    _ error: (any Error)?,
    _ code: RPCError.Code,
    message: String? = nil,
    _ what: String = "the call"
  ) throws {
    guard let error else { throw InteropCaseFailure("\(what) succeeded, want \(code)") }
    guard let rpcError = error as? RPCError else {
      throw InteropCaseFailure("\(what) threw \(type(of: error)) (\(error)), want \(code)")
    }
    try InteropCase.expect(
      rpcError.code == code,
      "\(what): status \(rpcError.code) (\(rpcError.message.debugDescription), cause: "
        + "\(rpcError.cause.map { "\($0)" } ?? "none")), want \(code)"
    )
    if let message {
      try InteropCase.expect(
        rpcError.message == message,
        "\(what): status message \(rpcError.message.debugDescription), want \(message.debugDescription)"
      )
    }
  }

  private static func clientStreaming<T: ClientTransport>(_ service: Service<T>) async throws {
    let total = try await service.streamingInputCall { writer in
      for size in Self.streamingRequestSizes {
        try await writer.write(.with { $0.payload = Self.zeros(size) })
      }
    }
    let want = Self.streamingRequestSizes.reduce(0, +)
    try expect(
      total.aggregatedPayloadSize == want,
      "aggregated_payload_size \(total.aggregatedPayloadSize), want \(want)"
    )
  }

  private static func serverStreaming<T: ClientTransport>(_ service: Service<T>) async throws {
    let request = Grpc_Testing_StreamingOutputCallRequest.with {
      $0.responseParameters = Self.streamingResponseSizes.map { size in
        .with { $0.size = Int32(size) }
      }
    }
    let responses = try await service.streamingOutputCall(request) { response in
      var payloads: [Grpc_Testing_Payload] = []
      for try await message in response.messages { payloads.append(message.payload) }
      return payloads
    }
    try expect(
      responses.count == Self.streamingResponseSizes.count,
      "\(responses.count) responses, want \(Self.streamingResponseSizes.count)"
    )
    for (index, (payload, size)) in zip(responses, Self.streamingResponseSizes).enumerated() {
      try expectZeros(payload, size, "response \(index)")
    }
  }

  /// Each request is sent only after the response to the one before arrived: the response
  /// handler hands the request producer the next request.
  private static func pingPong<T: ClientTransport>(_ service: Service<T>) async throws {
    let (requests, next) = AsyncStream.makeStream(of: Grpc_Testing_StreamingOutputCallRequest.self)
    let sizes = Array(zip(Self.streamingResponseSizes, Self.streamingRequestSizes))
    next.yield(Self.duplexRequest(responseSize: sizes[0].0, requestSize: sizes[0].1))
    try await service.fullDuplexCall { writer in
      for await request in requests { try await writer.write(request) }
    } onResponse: { response in
      defer { next.finish() }
      var received = 0
      for try await message in response.messages {
        try expect(received < sizes.count, "more than \(sizes.count) responses")
        try expectZeros(message.payload, sizes[received].0, "response \(received)")
        received += 1
        if received < sizes.count {
          next.yield(
            Self.duplexRequest(responseSize: sizes[received].0, requestSize: sizes[received].1)
          )
        } else {
          next.finish()
        }
      }
      try expect(received == sizes.count, "\(received) responses, want \(sizes.count)")
    }
  }

  private static func timeoutOnSleepingServer<T: ClientTransport>(
    _ service: Service<T>
  ) async throws {
    var options = CallOptions.defaults
    options.timeout = .milliseconds(1)
    let error = await Self.error {
      try await service.fullDuplexCall(options: options) { writer in
        try await writer.write(.with { $0.payload = Self.zeros(27_182) })
      } onResponse: { response in
        for try await _ in response.messages {}
      }
    }
    try expect(error, .deadlineExceeded)
  }

  /// Starts a client-streaming call, waits until its request producer runs (the call has begun),
  /// then cancels it before any message is sent.
  private static func cancelAfterBegin<T: ClientTransport>(_ service: Service<T>) async throws {
    let (begun, began) = AsyncStream.makeStream(of: Void.self)
    let error = await withTaskGroup(of: (any Error)?.self) { group in
      group.addTask {
        let error = await Self.error {
          _ = try await service.streamingInputCall { _ in
            began.yield()
            // Holds the request stream open until the call is cancelled.
            try await Task.sleep(for: .seconds(60))
          }
        }
        began.finish()
        return error
      }
      for await _ in begun { break }
      group.cancelAll()
      return await group.next() ?? nil
    }
    try expect(error, .cancelled)
  }

  /// Receives the first response of a bidirectional call, then cancels the call.
  private static func cancelAfterFirstResponse<T: ClientTransport>(
    _ service: Service<T>
  ) async throws {
    let (firsts, first) = AsyncStream.makeStream(of: Void.self)
    let error = await withTaskGroup(of: (any Error)?.self) { group in
      group.addTask {
        let error = await Self.error {
          try await service.fullDuplexCall { writer in
            try await writer.write(Self.duplexRequest(responseSize: 31_415, requestSize: 27_182))
            // Holds the request stream open until the call is cancelled.
            try await Task.sleep(for: .seconds(60))
          } onResponse: { response in
            var received = 0
            for try await message in response.messages {
              received += 1
              try expect(received == 1, "a second response arrived, want CANCELLED")
              try expectZeros(message.payload, 31_415, "the first response")
              first.yield()
            }
          }
        }
        first.finish()
        return error
      }
      for await _ in firsts { break }
      group.cancelAll()
      return await group.next() ?? nil
    }
    try expect(error, .cancelled)
  }

  private static func echoStatus<T: ClientTransport>(
    _ service: Service<T>,
    message: String,
    duplex: Bool
  ) async throws {
    let status = Grpc_Testing_EchoStatus.with {
      $0.code = 2
      $0.message = message
    }
    let unary = await Self.error {
      _ = try await service.unaryCall(.with { $0.responseStatus = status })
    }
    try expect(unary, .unknown, message: message, "UnaryCall")
    guard duplex else { return }
    let fullDuplex = await Self.error {
      try await service.fullDuplexCall { writer in
        try await writer.write(.with { $0.responseStatus = status })
      } onResponse: { response in
        for try await _ in response.messages {}
      }
    }
    try expect(fullDuplex, .unknown, message: message, "FullDuplexCall")
  }

  /// Whether `initial` and `trailing` metadata carry the echoed values.
  private static func expectEchoed(
    initial: Metadata,
    trailing: Metadata,
    _ what: String
  ) throws {
    let initialKey = InteropCasesService.echoInitialKey
    let trailingKey = InteropCasesService.echoTrailingKey
    let initialValues = Array(initial[stringValues: initialKey])
    try expect(
      initialValues == [Self.echoInitialValue],
      "\(what): initial metadata \(initialKey) = \(initialValues), want [\(Self.echoInitialValue)]"
    )
    let trailingValues = Array(trailing[binaryValues: trailingKey])
    try expect(
      trailingValues == [Self.echoTrailingValue],
      "\(what): trailing metadata \(trailingKey) = \(trailingValues), want [\(Self.echoTrailingValue)]"
    )
  }

  private static func customMetadata<T: ClientTransport>(_ service: Service<T>) async throws {
    var metadata: Metadata = [:]
    metadata.addString(Self.echoInitialValue, forKey: InteropCasesService.echoInitialKey)
    metadata.addBinary(Self.echoTrailingValue, forKey: InteropCasesService.echoTrailingKey)

    let unary = try await service.unaryCall(
      .with {
        $0.responseSize = Int32(Self.largeResponseSize)
        $0.payload = Self.zeros(Self.largeRequestSize)
      },
      metadata: metadata
    ) { response in
      (try response.message, response.metadata, response.trailingMetadata)
    }
    try expectZeros(unary.0.payload, Self.largeResponseSize, "UnaryCall")
    try expectEchoed(initial: unary.1, trailing: unary.2, "UnaryCall")

    let duplex = try await service.fullDuplexCall(metadata: metadata) { writer in
      try await writer.write(
        Self.duplexRequest(responseSize: Self.largeResponseSize, requestSize: Self.largeRequestSize)
      )
    } onResponse: { response in
      var payloads: [Grpc_Testing_Payload] = []
      var trailers: Metadata = [:]
      for try await part in response.bodyParts {
        switch part {
        case .message(let message): payloads.append(message.payload)
        case .trailingMetadata(let metadata): trailers = metadata
        }
      }
      return (payloads, response.metadata, trailers)
    }
    try expect(duplex.0.count == 1, "FullDuplexCall: \(duplex.0.count) responses, want 1")
    try expectZeros(duplex.0[0], Self.largeResponseSize, "FullDuplexCall")
    try expectEchoed(initial: duplex.1, trailing: duplex.2, "FullDuplexCall")
  }

  private static func expect(_ condition: Bool, _ message: @autoclosure () -> String) throws {
    guard condition else { throw InteropCaseFailure(message()) }
  }
}

/// An interop case's assertion that did not hold.
struct InteropCaseFailure: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
}

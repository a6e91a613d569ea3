import Foundation
import GRPCCore

/// The server side of gRPC's standard interop test cases: `grpc.testing.TestService`
/// (Protos/testing/test.proto) with the server features the interop description asks for. Calls
/// echo the `x-grpc-test-echo-initial` request metadata in their initial metadata and
/// `x-grpc-test-echo-trailing-bin` in their trailers, end with a requested `response_status`,
/// answer with payloads of the requested sizes (zeros) and wait `interval_us` before each
/// streamed response. Serve it through ``withoutUnimplementedCall``, as the interop description
/// asks: a server leaves `UnimplementedCall` out, so calling it gets the server's own
/// `unimplemented` answer.
struct InteropCasesService: Grpc_Testing_TestService.ServiceProtocol {
  static let echoInitialKey = "x-grpc-test-echo-initial"
  static let echoTrailingKey = "x-grpc-test-echo-trailing-bin"

  /// The service with every method routed but `UnimplementedCall`.
  var withoutUnimplementedCall: some RegistrableRPCService {
    RoutedWithout(
      service: self,
      method: Grpc_Testing_TestService.Method.UnimplementedCall.descriptor
    )
  }

  func emptyCall(
    request: ServerRequest<Grpc_Testing_Empty>,
    context: ServerContext
  ) async throws -> ServerResponse<Grpc_Testing_Empty> {
    ServerResponse(
      message: Grpc_Testing_Empty(),
      metadata: Self.initialEcho(request.metadata),
      trailingMetadata: Self.trailingEcho(request.metadata)
    )
  }

  func unaryCall(
    request: ServerRequest<Grpc_Testing_SimpleRequest>,
    context: ServerContext
  ) async throws -> ServerResponse<Grpc_Testing_SimpleResponse> {
    let message = request.message
    let trailers = Self.trailingEcho(request.metadata)
    if let error = Self.requestedError(message.responseStatus, trailers: trailers) { throw error }
    try Self.checkSupported(
      type: message.responseType,
      compressed: message.responseCompressed.value || message.expectCompressed.value,
      trailers: trailers
    )
    let payload = try Self.payload(size: message.responseSize)
    return ServerResponse(
      message: .with { $0.payload = payload },
      metadata: Self.initialEcho(request.metadata),
      trailingMetadata: trailers
    )
  }

  func streamingOutputCall(
    request: ServerRequest<Grpc_Testing_StreamingOutputCallRequest>,
    context: ServerContext
  ) async throws -> StreamingServerResponse<Grpc_Testing_StreamingOutputCallResponse> {
    let message = request.message
    let trailers = Self.trailingEcho(request.metadata)
    try Self.checkSupported(message, trailers: trailers)
    return StreamingServerResponse(metadata: Self.initialEcho(request.metadata)) { writer in
      try await Self.respond(to: message, with: writer, context: context)
      if let error = Self.requestedError(message.responseStatus, trailers: trailers) {
        throw error
      }
      return trailers
    }
  }

  func streamingInputCall(
    request: StreamingServerRequest<Grpc_Testing_StreamingInputCallRequest>,
    context: ServerContext
  ) async throws -> ServerResponse<Grpc_Testing_StreamingInputCallResponse> {
    let trailers = Self.trailingEcho(request.metadata)
    var total = 0
    for try await message in request.messages {
      if message.expectCompressed.value {
        throw Self.unsupported("compressed requests", trailers: trailers)
      }
      total += message.payload.body.count
    }
    return ServerResponse(
      message: .with { $0.aggregatedPayloadSize = Int32(clamping: total) },
      metadata: Self.initialEcho(request.metadata),
      trailingMetadata: trailers
    )
  }

  func fullDuplexCall(
    request: StreamingServerRequest<Grpc_Testing_StreamingOutputCallRequest>,
    context: ServerContext
  ) async throws -> StreamingServerResponse<Grpc_Testing_StreamingOutputCallResponse> {
    let trailers = Self.trailingEcho(request.metadata)
    return StreamingServerResponse(metadata: Self.initialEcho(request.metadata)) { writer in
      // Each request is answered as it arrives; a requested status ends the call at once.
      for try await message in request.messages {
        if let error = Self.requestedError(message.responseStatus, trailers: trailers) {
          throw error
        }
        try Self.checkSupported(message, trailers: trailers)
        try await Self.respond(to: message, with: writer, context: context)
      }
      return trailers
    }
  }

  func halfDuplexCall(
    request: StreamingServerRequest<Grpc_Testing_StreamingOutputCallRequest>,
    context: ServerContext
  ) async throws -> StreamingServerResponse<Grpc_Testing_StreamingOutputCallResponse> {
    let trailers = Self.trailingEcho(request.metadata)
    return StreamingServerResponse(metadata: Self.initialEcho(request.metadata)) { writer in
      // Every request first, then their responses in order.
      var messages: [Grpc_Testing_StreamingOutputCallRequest] = []
      for try await message in request.messages { messages.append(message) }
      for message in messages {
        if let error = Self.requestedError(message.responseStatus, trailers: trailers) {
          throw error
        }
        try Self.checkSupported(message, trailers: trailers)
        try await Self.respond(to: message, with: writer, context: context)
      }
      return trailers
    }
  }

  /// Not routed when served through ``withoutUnimplementedCall``; the protocol requires a body.
  func unimplementedCall(
    request: ServerRequest<Grpc_Testing_Empty>,
    context: ServerContext
  ) async throws -> ServerResponse<Grpc_Testing_Empty> {
    throw RPCError(code: .unimplemented, message: "UnimplementedCall is not implemented")
  }
}

extension InteropCasesService {
  /// The request's `x-grpc-test-echo-initial` entries, to send back as initial metadata.
  static func initialEcho(_ metadata: Metadata) -> Metadata {
    var echo: Metadata = [:]
    for value in metadata[stringValues: Self.echoInitialKey] {
      echo.addString(value, forKey: Self.echoInitialKey)
    }
    return echo
  }

  /// The request's `x-grpc-test-echo-trailing-bin` entries, to send back as trailers.
  static func trailingEcho(_ metadata: Metadata) -> Metadata {
    var echo: Metadata = [:]
    for value in metadata[binaryValues: Self.echoTrailingKey] {
      echo.addBinary(value, forKey: Self.echoTrailingKey)
    }
    return echo
  }

  /// The error a set `response_status` asks for (nil for none or OK), carrying the trailers.
  static func requestedError(_ status: Grpc_Testing_EchoStatus, trailers: Metadata) -> RPCError? {
    guard status.code != 0 else { return nil }
    let code = Status.Code(rawValue: Int(status.code)).flatMap { RPCError.Code($0) } ?? .unknown
    return RPCError(code: code, message: status.message, metadata: trailers)
  }

  /// `size` bytes of zeros; a negative size is the client's error.
  static func payload(size: Int32) throws -> Grpc_Testing_Payload {
    guard size >= 0 else {
      throw RPCError(code: .invalidArgument, message: "negative response size \(size)")
    }
    return .with { $0.body = Data(count: Int(size)) }
  }

  static func unsupported(_ what: String, trailers: Metadata) -> RPCError {
    RPCError(
      code: .invalidArgument,
      message: "this test server does not support \(what)",
      metadata: trailers
    )
  }

  /// Only uncompressed COMPRESSABLE payloads: the server cannot see whether a request message
  /// was compressed, and compresses nothing.
  static func checkSupported(
    type: Grpc_Testing_PayloadType,
    compressed: Bool,
    trailers: Metadata
  ) throws {
    guard type == .compressable else {
      throw Self.unsupported("payload type \(type)", trailers: trailers)
    }
    if compressed { throw Self.unsupported("compression", trailers: trailers) }
  }

  static func checkSupported(
    _ request: Grpc_Testing_StreamingOutputCallRequest,
    trailers: Metadata
  ) throws {
    try Self.checkSupported(
      type: request.responseType,
      compressed: request.responseParameters.contains { $0.compressed.value },
      trailers: trailers
    )
  }

  /// Writes one response per `ResponseParameters`, each after its `interval_us`.
  static func respond(
    to request: Grpc_Testing_StreamingOutputCallRequest,
    with writer: RPCWriter<Grpc_Testing_StreamingOutputCallResponse>,
    context: ServerContext
  ) async throws {
    for parameters in request.responseParameters {
      if parameters.intervalUs > 0 {
        try await Self.sleep(for: .microseconds(parameters.intervalUs), context: context)
      }
      let payload = try Self.payload(size: parameters.size)
      try await writer.write(.with { $0.payload = payload })
    }
  }

  /// Sleeps, but ends early with `cancelled` when the call is cancelled: grpc-swift cancels a
  /// call through its cancellation handle (a deadline, the client's RST_STREAM), not only the
  /// handler's task.
  static func sleep(for duration: Duration, context: ServerContext) async throws {
    let sleep = Task { try await Task.sleep(for: duration) }
    try await withRPCCancellationHandler {
      try await sleep.value
    } onCancelRPC: {
      sleep.cancel()
    }
  }
}

/// A service whose handler for one method is removed from the router after registration.
struct RoutedWithout<Service: RegistrableRPCService>: RegistrableRPCService {
  let service: Service
  let method: MethodDescriptor

  func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
    self.service.registerMethods(with: &router)
    router.removeHandler(forMethod: self.method)
  }
}

import GRPCConnection
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import RegistryCore

/// The connection to one instance: the project's own ``HTTP2Connection`` or grpc-swift's stock
/// transport, behind one `ClientTransport` whose messages are `[UInt8]`.
enum InstanceConnection: ClientTransport {
  typealias Bytes = [UInt8]

  case own(HTTP2Connection)
  /// The stock transport, and the host it dials when it uses TLS (for error messages).
  case posix(HTTP2ClientTransport.Posix, tlsHost: String?)

  static func make(
    address: String,
    kind: RegistryClientTransport.InstanceConnectionKind,
    tls: HTTP2Connection.TLS?,
    logger: Logger
  ) throws -> Self {
    let parsed = try ServiceAddress(parsing: address)
    switch kind.value {
    case .http2Connection(var config):
      if let tls { config.tls = tls }
      return .own(
        HTTP2Connection(
          target: .host(parsed.host, port: parsed.port),
          config: config,
          logger: logger
        )
      )
    case .posix:
      let target: any ResolvableTarget
      if parsed.isIPv6 {
        target = .ipv6(address: parsed.host, port: parsed.port)
      } else if HostResolver.isIPv4Literal(parsed.host) {
        target = .ipv4(address: parsed.host, port: parsed.port)
      } else {
        target = .dns(host: parsed.host, port: parsed.port)
      }
      return .posix(
        try HTTP2ClientTransport.Posix(
          target: target,
          transportSecurity: tls?.posixTransportSecurity ?? .plaintext
        ),
        tlsHost: tls == nil ? nil : parsed.host
      )
    }
  }

  var retryThrottle: RetryThrottle? { nil }

  func connect() async throws {
    switch self {
    case .own(let connection): try await connection.connect()
    case .posix(let transport, _): try await transport.connect()
    }
  }

  func beginGracefulShutdown() {
    switch self {
    case .own(let connection): connection.beginGracefulShutdown()
    case .posix(let transport, _): transport.beginGracefulShutdown()
    }
  }

  func config(forMethod descriptor: MethodDescriptor) -> MethodConfig? { nil }

  func withStream<T: Sendable>(
    descriptor: MethodDescriptor,
    options: CallOptions,
    _ closure: (_ stream: RPCStream<Inbound, Outbound>, _ context: ClientContext) async throws -> T
  ) async throws -> T {
    switch self {
    case .own(let connection):
      return try await connection.withStream(descriptor: descriptor, options: options, closure)
    case .posix(let transport, let tlsHost):
      do {
        return try await Self.withPosixStream(transport, descriptor, options, closure)
      } catch let error as RPCError {
        // The stock transport reports a failed TLS handshake as a closed connection; say what
        // was wrong with the certificates instead, as the project's own connection does.
        guard let tlsHost, let cause = error.cause,
          let reason = HTTP2Connection.TLS.explainHandshakeFailure(cause, host: tlsHost)
        else { throw error }
        throw RPCError(
          code: error.code,
          message: "\(error.message) Likely cause: \(reason)",
          cause: cause
        )
      }
    }
  }

  private static func withPosixStream<T: Sendable>(
    _ transport: HTTP2ClientTransport.Posix,
    _ descriptor: MethodDescriptor,
    _ options: CallOptions,
    _ closure: (_ stream: RPCStream<Inbound, Outbound>, _ context: ClientContext) async throws -> T
  ) async throws -> T {
    return try await transport.withStream(descriptor: descriptor, options: options) {
      stream,
      context in
      let converted = RPCStream(
        descriptor: stream.descriptor,
        inbound: RPCAsyncSequence<RPCResponsePart<[UInt8]>, any Error>(
          wrapping: stream.inbound.map { part -> RPCResponsePart<[UInt8]> in
            switch part {
            case .metadata(let metadata): return .metadata(metadata)
            case .message(let bytes): return .message(bytes.withUnsafeBytes { Array($0) })
            case .status(let status, let metadata): return .status(status, metadata)
            }
          }
        ),
        outbound: RPCWriter<RPCRequestPart<[UInt8]>>.Closable(
          wrapping: ConvertingWriter(base: stream.outbound)
        )
      )
      return try await closure(converted, context)
    }
  }
}

/// Writes `[UInt8]` request parts to the stock transport, whose messages are its own bytes type.
private struct ConvertingWriter: ClosableRPCWriterProtocol {
  typealias Element = RPCRequestPart<[UInt8]>
  let base: RPCWriter<RPCRequestPart<GRPCNIOTransportBytes>>.Closable

  func write(_ element: Element) async throws {
    try await self.base.write(Self.convert(element))
  }

  func write(contentsOf elements: some Sequence<Element>) async throws {
    try await self.base.write(contentsOf: elements.map(Self.convert))
  }

  func finish() async { await self.base.finish() }

  func finish(throwing error: any Error) async { await self.base.finish(throwing: error) }

  static func convert(_ part: Element) -> RPCRequestPart<GRPCNIOTransportBytes> {
    switch part {
    case .metadata(let metadata): return .metadata(metadata)
    case .message(let bytes): return .message(GRPCNIOTransportBytes(bytes))
    }
  }
}

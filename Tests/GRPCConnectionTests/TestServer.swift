import GRPCConnection
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import NIOCore
import NIOHTTP2
import NIOPosix
import RegistryPrimitives
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Messages are raw bytes on both sides.
struct BytesSerializer: MessageSerializer {
  func serialize<Bytes: GRPCContiguousBytes>(_ message: [UInt8]) throws -> Bytes {
    Bytes(message)
  }
}

struct BytesDeserializer: MessageDeserializer {
  func deserialize<Bytes: GRPCContiguousBytes>(_ serializedMessageBytes: Bytes) throws -> [UInt8] {
    serializedMessageBytes.withUnsafeBytes { Array($0) }
  }
}

enum EchoMethod {
  static let service = "test.Echo"
  /// Echoes the message; `echo-*` request metadata comes back as initial and trailing metadata.
  static let unary = MethodDescriptor(fullyQualifiedService: service, method: "Unary")
  /// Concatenates all request messages into one response.
  static let collect = MethodDescriptor(fullyQualifiedService: service, method: "Collect")
  /// Responds with one message per byte of the request, each holding that byte `n` times.
  static let expand = MethodDescriptor(fullyQualifiedService: service, method: "Expand")
  /// Echoes every request message as it arrives.
  static let bidi = MethodDescriptor(fullyQualifiedService: service, method: "Bidi")
  /// Fails with the status code in the request's first byte and message "requested failure".
  static let fail = MethodDescriptor(fullyQualifiedService: service, method: "Fail")
  /// Responds only once cancelled; records that it saw the cancellation.
  static let hang = MethodDescriptor(fullyQualifiedService: service, method: "Hang")
  /// Responds with a message whose size is the request's 4 big-endian bytes.
  static let sized = MethodDescriptor(fullyQualifiedService: service, method: "Sized")
  /// Responds with `count` messages of `size` bytes (request: 4-byte count, 4-byte size).
  static let flood = MethodDescriptor(fullyQualifiedService: service, method: "Flood")
  /// Not registered.
  static let unknown = MethodDescriptor(fullyQualifiedService: service, method: "Unknown")
}

/// Counts server-side observations tests wait for.
final class ServerProbe: Sendable {
  private let cancellations = Locked(0)
  private let starts = Locked(0)
  private let channels = Locked<[any Channel]>([])

  var cancelledRPCs: Int { self.cancellations.withLock { $0 } }
  var startedHangingRPCs: Int { self.starts.withLock { $0 } }

  func recordCancellation() {
    self.cancellations.withLock { $0 += 1 }
  }

  func recordStart() {
    self.starts.withLock { $0 += 1 }
  }

  func recordAccepted(_ channel: any Channel) {
    self.channels.withLock { $0.append(channel) }
  }

  /// Closes every accepted TCP connection at once, as a crashed server or a broken network would.
  func dropConnections() {
    let channels = self.channels.withLock { channels in
      defer { channels.removeAll() }
      return channels
    }
    for channel in channels {
      channel.close(promise: nil)
    }
  }
}

struct EchoService: RegistrableRPCService {
  let probe: ServerProbe

  func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
    let serializer = BytesSerializer()
    let deserializer = BytesDeserializer()

    router.registerHandler(
      forMethod: EchoMethod.unary,
      deserializer: deserializer,
      serializer: serializer
    ) { request, _ in
      let single = try await ServerRequest(stream: request)
      let echoed = Metadata(single.metadata.filter { $0.key.hasPrefix("echo-") })
      return StreamingServerResponse(
        single: ServerResponse(message: single.message, metadata: echoed, trailingMetadata: echoed)
      )
    }

    router.registerHandler(
      forMethod: EchoMethod.collect,
      deserializer: deserializer,
      serializer: serializer
    ) { request, _ in
      var collected: [UInt8] = []
      for try await message in request.messages {
        collected += message
      }
      return StreamingServerResponse(single: ServerResponse(message: collected))
    }

    router.registerHandler(
      forMethod: EchoMethod.expand,
      deserializer: deserializer,
      serializer: serializer
    ) { request, _ in
      let single = try await ServerRequest(stream: request)
      return StreamingServerResponse { writer in
        for byte in single.message {
          try await writer.write([UInt8](repeating: byte, count: Int(byte)))
        }
        return [:]
      }
    }

    router.registerHandler(
      forMethod: EchoMethod.bidi,
      deserializer: deserializer,
      serializer: serializer
    ) { request, _ in
      StreamingServerResponse { writer in
        for try await message in request.messages {
          try await writer.write(message)
        }
        return ["bidi-done": "yes"]
      }
    }

    router.registerHandler(
      forMethod: EchoMethod.fail,
      deserializer: deserializer,
      serializer: serializer
    ) { request, _ in
      let single = try await ServerRequest(stream: request)
      let code = single.message.first.flatMap {
        RPCError.Code(Status.Code(rawValue: Int($0)) ?? .unknown)
      }
      throw RPCError(
        code: code ?? .unknown,
        message: "requested failure",
        metadata: ["failure-detail": "present", "failure-bin": .binary([0, 1, 2, 255])]
      )
    }

    let probe = self.probe
    router.registerHandler(
      forMethod: EchoMethod.hang,
      deserializer: deserializer,
      serializer: serializer
    ) { request, context in
      _ = try await ServerRequest(stream: request)
      probe.recordStart()
      return StreamingServerResponse { writer in
        // The transport cancels the RPC when the client resets the stream.
        try? await context.cancellation.cancelled
        probe.recordCancellation()
        return [:]
      }
    }

    router.registerHandler(
      forMethod: EchoMethod.flood,
      deserializer: deserializer,
      serializer: serializer
    ) { request, _ in
      let single = try await ServerRequest(stream: request)
      let count = single.message.prefix(4).reduce(0) { $0 << 8 | Int($1) }
      let size = single.message.dropFirst(4).prefix(4).reduce(0) { $0 << 8 | Int($1) }
      return StreamingServerResponse { writer in
        for i in 0 ..< count {
          try await writer.write([UInt8](repeating: UInt8(truncatingIfNeeded: i), count: size))
        }
        return [:]
      }
    }

    router.registerHandler(
      forMethod: EchoMethod.sized,
      deserializer: deserializer,
      serializer: serializer
    ) { request, _ in
      let single = try await ServerRequest(stream: request)
      let size = single.message.prefix(4).reduce(0) { $0 << 8 | Int($1) }
      return StreamingServerResponse(
        single: ServerResponse(message: [UInt8](repeating: 7, count: size))
      )
    }
  }
}

/// A grpc-swift-2 server on 127.0.0.1 serving ``EchoService``.
struct TestServer {
  let server: GRPCServer<HTTP2ServerTransport.Posix>
  let probe: ServerProbe

  init(port: Int = 0, probe: ServerProbe = ServerProbe()) {
    let transport = HTTP2ServerTransport.Posix(
      address: .ipv4(host: "127.0.0.1", port: port),
      transportSecurity: .plaintext,
      config: .defaults {
        $0.rpc.maxRequestPayloadSize = 16 * 1024 * 1024
        $0.channelDebuggingCallbacks.onAcceptTCPConnection = { channel in
          probe.recordAccepted(channel)
          return channel.eventLoop.makeSucceededVoidFuture()
        }
      }
    )
    self.probe = probe
    self.server = GRPCServer(transport: transport, services: [EchoService(probe: probe)])
  }

  func port() async throws -> Int {
    guard let port = try await self.server.listeningAddress?.ipv4?.port else {
      throw TestFailure("the test server has no IPv4 listening address")
    }
    return port
  }
}

struct TestFailure: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
}

func makeLogger() -> Logger {
  var logger = Logger(label: "GRPCConnectionTests")
  // GRPC_CONNECTION_TEST_LOG=debug shows the connection's events.
  logger.logLevel =
    getenv("GRPC_CONNECTION_TEST_LOG").flatMap { Logger.Level(rawValue: String(cString: $0)) }
    ?? .critical
  return logger
}

/// Runs a server and an `HTTP2Connection`-backed client around `body`, then shuts both down.
func withEchoServerAndClient(
  config: HTTP2Connection.Config = .defaults,
  _ body: (GRPCClient<HTTP2Connection>, HTTP2Connection, TestServer) async throws -> Void
) async throws {
  try await withThrowingDiscardingTaskGroup { group in
    let server = TestServer()
    group.addTask { try await server.server.serve() }
    let port = try await server.port()

    let connection = HTTP2Connection(
      target: .ipv4(host: "127.0.0.1", port: port),
      config: config,
      logger: makeLogger()
    )
    let client = GRPCClient(transport: connection)
    group.addTask { try await client.runConnections() }

    try await body(client, connection, server)

    client.beginGracefulShutdown()
    server.server.beginGracefulShutdown()
  }
}

extension GRPCClient {
  func echo(
    _ message: [UInt8],
    method: MethodDescriptor = EchoMethod.unary,
    metadata: Metadata = [:],
    options: CallOptions = .defaults
  ) async throws -> ClientResponse<[UInt8]> {
    try await self.unary(
      request: ClientRequest(message: message, metadata: metadata),
      descriptor: method,
      serializer: BytesSerializer(),
      deserializer: BytesDeserializer(),
      options: options
    ) { $0 }
  }
}

/// Four big-endian bytes.
func bigEndian(_ value: Int) -> [UInt8] {
  [
    UInt8((value >> 24) & 0xff), UInt8((value >> 16) & 0xff), UInt8((value >> 8) & 0xff),
    UInt8(value & 0xff),
  ]
}

/// Polls `condition` until it holds or `timeout` passes.
func poll(
  within timeout: Duration = .seconds(10),
  _ what: String,
  condition: () async throws -> Bool
) async throws {
  let deadline = ContinuousClock.now + timeout
  while ContinuousClock.now < deadline {
    if try await condition() { return }
    try await Task.sleep(for: .milliseconds(10))
  }
  throw TestFailure("timed out waiting for: \(what)")
}

/// A loopback TCP port that is bound but not listening: connecting to it is refused.
struct RefusingPort {
  let fd: Int32
  let port: Int

  init() throws {
    #if canImport(Glibc)
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    #else
    let fd = socket(AF_INET, SOCK_STREAM, 0)
    #endif
    guard fd >= 0 else { throw TestFailure("socket() failed") }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let bound = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
      }
    }
    guard bound == 0 else { throw TestFailure("bind() failed") }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let named = withUnsafeMutablePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    guard named == 0 else { throw TestFailure("getsockname() failed") }
    self.fd = fd
    self.port = Int(UInt16(bigEndian: address.sin_port))
  }

  func close() {
    #if canImport(Glibc)
    _ = Glibc.close(self.fd)
    #else
    _ = Darwin.close(self.fd)
    #endif
  }
}

extension NIOHTTP2Handler {
  /// A handler whose HTTP/2 layer neither validates the header blocks it sends nor those it
  /// receives: a peer that can send the malformed blocks the tests need.
  static func unvalidated(mode: ParserMode) -> NIOHTTP2Handler {
    var configuration = NIOHTTP2Handler.ConnectionConfiguration()
    configuration.headerBlockValidation = .disabled
    return NIOHTTP2Handler(
      mode: mode,
      connectionConfiguration: configuration,
      streamConfiguration: .init()
    )
  }
}

/// Starts a raw HTTP/2 server on 127.0.0.1 whose every connection passes its frames to `handler`
/// (shared by all connections). With `validating: false` its HTTP/2 layer checks no header block.
func startRawHTTP2Server(
  _ handler: some ChannelInboundHandler & Sendable,
  validating: Bool = true
) async throws -> any Channel {
  try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
    .childChannelInitializer { channel in
      channel.eventLoop.makeCompletedFuture {
        let http2 =
          validating ? NIOHTTP2Handler(mode: .server) : NIOHTTP2Handler.unvalidated(mode: .server)
        try channel.pipeline.syncOperations.addHandler(http2)
        try channel.pipeline.syncOperations.addHandler(handler)
      }
    }
    .bind(host: "127.0.0.1", port: 0)
    .get()
}

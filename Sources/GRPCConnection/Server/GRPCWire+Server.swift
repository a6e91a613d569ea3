internal import GRPCCore
internal import NIOCore
internal import NIOHPACK

/// The server's half of the gRPC-over-HTTP/2 wire rules (PROTOCOL-HTTP2.md): which request
/// fields are metadata, and the response headers and trailers.
extension GRPCWire {
  /// Request fields that belong to the protocol rather than the RPC's metadata. The transport
  /// enforces `grpc-timeout` itself (a timer on the event loop), so grpc-swift's executor does
  /// not start a sleeping task per call for it.
  static let reservedRequestFields: Set<String> = [
    "content-type", "te", "grpc-encoding", "grpc-accept-encoding", "grpc-timeout", "connection",
    "keep-alive",
    "proxy-connection", "transfer-encoding", "upgrade", "host",
  ]

  /// The metadata of a request: its regular fields, less the protocol's own.
  static func requestMetadata(from headers: HPACKHeaders) -> Metadata {
    Self.metadata(from: headers, excluding: Self.reservedRequestFields)
  }

  /// Response headers without metadata: `:status 200` and the gRPC content type.
  static let plainResponseHeaders: HPACKHeaders = [
    ":status": "200", "content-type": "application/grpc",
  ]

  /// Response headers: `:status 200`, the gRPC content type, then `metadata` (binary values
  /// base64-encoded, reserved and pseudo fields left out).
  ///
  /// - Throws: `RPCError` (`internalError`) naming the entry when the handler's metadata has a
  ///   key or value gRPC cannot carry (``GRPCWire/metadataProblem(name:value:)``); grpc-swift's
  ///   executor then ends the call with that status.
  static func makeResponseHeaders(metadata: Metadata) throws(RPCError) -> HPACKHeaders {
    var headers = Self.plainResponseHeaders
    headers.reserveCapacity(2 + metadata.count)
    if let problem = Self.addMetadata(metadata, to: &headers) {
      throw RPCError(code: .internalError, message: "The response's metadata \(problem)")
    }
    return headers
  }

  /// Trailers carrying `status`, or a trailers-only response (`:status` and content type first)
  /// when no response headers were sent. Trailing metadata gRPC cannot carry
  /// (``GRPCWire/metadataProblem(name:value:)``) turns the status into `internalError` naming
  /// the entry, without the metadata: the client learns what was wrong, and the connection is
  /// not put at risk.
  static func makeTrailers(status: Status, metadata: Metadata, trailersOnly: Bool) -> HPACKHeaders {
    var status = status
    var trailing = HPACKHeaders()
    trailing.reserveCapacity(metadata.count)
    if let problem = Self.addMetadata(metadata, to: &trailing) {
      status = Status(code: .internalError, message: "The response's trailing metadata \(problem)")
      trailing = HPACKHeaders()
    }
    var headers = HPACKHeaders()
    headers.reserveCapacity(4 + trailing.count)
    if trailersOnly {
      headers.add(name: ":status", value: "200")
      headers.add(name: "content-type", value: "application/grpc")
    }
    headers.add(name: "grpc-status", value: String(status.code.rawValue))
    if !status.message.isEmpty {
      headers.add(name: "grpc-message", value: PercentEncoding.encode(status.message))
    }
    headers.add(contentsOf: trailing)
    return headers
  }

  /// A response to a request that is not gRPC at all (wrong method or content type): the HTTP
  /// status, and a gRPC status for clients that read one anyway.
  static func makeHTTPErrorResponse(httpStatus: Int, status: Status) -> HPACKHeaders {
    var headers = HPACKHeaders()
    headers.add(name: ":status", value: String(httpStatus))
    headers.add(name: "content-type", value: "application/grpc")
    headers.add(name: "grpc-status", value: String(status.code.rawValue))
    headers.add(name: "grpc-message", value: PercentEncoding.encode(status.message))
    return headers
  }

  /// Adds `metadata`'s entries to `headers`, less reserved and pseudo fields; stops at the first
  /// entry gRPC cannot carry and returns what is wrong with it.
  private static func addMetadata(
    _ metadata: Metadata,
    to headers: inout HPACKHeaders
  ) -> String? {
    for (key, value) in metadata {
      let name = key.lowercased()
      if name.utf8.first == UInt8(ascii: ":") || Self.reservedResponseHeaders.contains(name)
        || Self.reservedRequestHeaders.contains(name)
      {
        continue
      }
      if let problem = Self.metadataProblem(name: name, value: value) {
        return problem
      }
      headers.add(name: name, value: value.encoded())
    }
    return nil
  }

  /// Decodes a `grpc-timeout` value (1 to 8 digits and a unit); `nil` if malformed.
  static func decodeTimeout(_ value: String) -> Duration? {
    let utf8 = value.utf8
    guard let unit = utf8.last, (2 ... 9).contains(utf8.count) else { return nil }
    var amount: Int64 = 0
    for byte in utf8.dropLast() {
      guard (UInt8(ascii: "0") ... UInt8(ascii: "9")).contains(byte) else { return nil }
      amount = amount * 10 + Int64(byte - UInt8(ascii: "0"))
    }
    switch unit {
    case UInt8(ascii: "H"): return .seconds(amount * 3600)
    case UInt8(ascii: "M"): return .seconds(amount * 60)
    case UInt8(ascii: "S"): return .seconds(amount)
    case UInt8(ascii: "m"): return .milliseconds(amount)
    case UInt8(ascii: "u"): return .microseconds(amount)
    case UInt8(ascii: "n"): return .nanoseconds(amount)
    default: return nil
    }
  }

  /// Frames one message: flag 0 (uncompressed), a 4-byte big-endian length, the bytes.
  static func frame(
    _ bytes: [UInt8],
    allocator: ByteBufferAllocator = ByteBufferAllocator()
  )
    -> ByteBuffer
  {
    var buffer = allocator.buffer(capacity: 5 + bytes.count)
    buffer.writeInteger(UInt8(0))
    buffer.writeInteger(UInt32(truncatingIfNeeded: bytes.count))
    buffer.writeBytes(bytes)
    return buffer
  }
}

extension PercentEncoding {
  /// Percent-encodes a `grpc-message` value: every byte outside printable ASCII, and `%`.
  static func encode(_ value: String) -> String {
    func mustEscape(_ byte: UInt8) -> Bool {
      !GRPCWire.isPrintableASCII(byte) || byte == UInt8(ascii: "%")
    }
    guard value.utf8.contains(where: mustEscape) else { return value }
    let hex = Array("0123456789ABCDEF".utf8)
    var bytes: [UInt8] = []
    bytes.reserveCapacity(value.utf8.count * 2)
    for byte in value.utf8 {
      if mustEscape(byte) {
        bytes.append(UInt8(ascii: "%"))
        bytes.append(hex[Int(byte >> 4)])
        bytes.append(hex[Int(byte & 0x0F)])
      } else {
        bytes.append(byte)
      }
    }
    return String(decoding: bytes, as: UTF8.self)
  }
}

internal import GRPCCore
internal import NIOCore
internal import NIOHPACK
internal import NIOHTTP2

/// gRPC-over-HTTP/2 wire rules: request headers, response header/trailer interpretation,
/// status mapping. See https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md.
enum GRPCWire {
  /// Headers a caller may not set through metadata: HTTP/2 connection-specific fields (rejected
  /// by the HTTP/2 layer) and the fields the transport itself owns.
  static let reservedRequestHeaders: Set<String> = [
    "content-type", "te", "connection", "keep-alive", "proxy-connection", "transfer-encoding",
    "upgrade", "host",
  ]

  /// Response fields that are part of the protocol rather than the RPC's metadata.
  static let reservedResponseHeaders: Set<String> = [
    "content-type", "grpc-status", "grpc-message", "grpc-encoding", "grpc-accept-encoding",
  ]

  /// Builds a request's HEADERS.
  ///
  /// - Throws: `RPCError` (`internalError`, as grpc-go fails such a call) naming the entry, when
  ///   the metadata has a key or value that gRPC cannot carry (``metadataProblem(name:value:)``);
  ///   nothing is sent, and the connection's other calls are not affected.
  static func makeRequestHeaders(
    path: String,
    scheme: String,
    authority: String,
    timeout: Duration?,
    metadata: Metadata
  ) throws(RPCError) -> HPACKHeaders {
    // The HTTP/2 layer does not validate what the client sends (see `HeaderBlock`).
    try Self.checkPseudoHeader(":path", path)
    try Self.checkPseudoHeader(":authority", authority)
    var headers = HPACKHeaders()
    headers.reserveCapacity(6 + metadata.count)
    // Pseudo-headers must precede all regular fields.
    headers.add(name: ":method", value: "POST")
    headers.add(name: ":scheme", value: scheme)
    headers.add(name: ":path", value: path)
    headers.add(name: ":authority", value: authority)
    headers.add(name: "content-type", value: "application/grpc")
    headers.add(name: "te", value: "trailers")

    var hasTimeout = false
    for (key, value) in metadata {
      let name = key.lowercased()
      if name.utf8.first == UInt8(ascii: ":") || Self.reservedRequestHeaders.contains(name) {
        continue
      }
      if name == "grpc-timeout" {
        hasTimeout = true
      }
      if let problem = Self.metadataProblem(name: name, value: value) {
        throw RPCError(code: .internalError, message: "The request's metadata \(problem)")
      }
      headers.add(name: name, value: value.encoded())
    }

    // grpc-swift's executor normally writes 'grpc-timeout' into the metadata itself; only add one
    // when the caller used the transport directly.
    if !hasTimeout, let timeout {
      headers.add(name: "grpc-timeout", value: Self.encodeTimeout(timeout))
    }
    return headers
  }

  /// Throws when `value` cannot be the request's pseudo-header `name`. Called once per
  /// pseudo-header (not over an array of them, which would cost an allocation per call).
  private static func checkPseudoHeader(_ name: String, _ value: String) throws(RPCError) {
    guard HeaderBlock.isValidPseudoHeaderValue(value) else {
      throw RPCError(
        code: .internalError,
        message: """
          The request's '\(name)' \(String(reflecting: value)) has a control character, a space or \
          DEL, which HTTP/2 does not allow there; check the method descriptor and the target.
          """
      )
    }
  }

  /// What makes a metadata entry impossible to send, phrased to follow "The request's
  /// metadata" or "The response's metadata", with what to do instead; `nil` when it can be sent.
  /// `name` is the lowercased key. gRPC's rules (PROTOCOL-HTTP2.md, Custom-Metadata): a key is
  /// lowercase letters, digits, `-`, `_` and `.`; a text value is printable ASCII (space to `~`);
  /// binary values (keys ending in `-bin`) are base64-encoded and always fit. Checked before the
  /// entry reaches HPACK, which traps on a key that is not ASCII, and the HTTP/2 layer, which
  /// drops a header block with an invalid name without failing the call.
  static func metadataProblem(name: String, value: Metadata.Value) -> String? {
    if name.isEmpty {
      return
        "has an empty key; give every entry a key of lowercase letters, digits, '-', '_' or '.'"
    }
    for byte in name.utf8 {
      switch byte {
      case UInt8(ascii: "a") ... UInt8(ascii: "z"), UInt8(ascii: "0") ... UInt8(ascii: "9"),
        UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."):
        continue
      default:
        return """
          key '\(name)' is not a gRPC metadata key: use only lowercase letters, digits, '-', '_' \
          and '.'
          """
      }
    }
    if case .string(let text) = value,
      let offset = text.utf8.firstIndex(where: { !Self.isPrintableASCII($0) })
    {
      let position = text.utf8.distance(from: text.utf8.startIndex, to: offset)
      return """
        value of '\(name)' has a byte outside printable ASCII (0x\(String(text.utf8[offset], radix: 16)) \
        at offset \(position)); send such values as binary metadata, under a key ending in '-bin'
        """
    }
    return nil
  }

  /// Whether `byte` is printable ASCII, space to `~`: what a text metadata value may hold, and
  /// what a `grpc-message` carries unescaped.
  @inline(__always)
  static func isPrintableASCII(_ byte: UInt8) -> Bool {
    byte >= 0x20 && byte <= 0x7E
  }

  /// Encodes a timeout as at most 8 digits and a unit, rounding up (PROTOCOL-HTTP2.md).
  static func encodeTimeout(_ duration: Duration) -> String {
    let (seconds, attoseconds) = duration.components
    if seconds < 0 || (seconds == 0 && attoseconds <= 0) {
      return "1n"
    }
    // Total nanoseconds, saturating.
    let (secondsAsNanos, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
    var amount: Int64
    if overflow {
      amount = .max
    } else {
      let extra = attoseconds / 1_000_000_000 + (attoseconds % 1_000_000_000 == 0 ? 0 : 1)
      amount = secondsAsNanos &+ extra
      if amount < 0 { amount = .max }
    }

    let units: [(divisor: Int64, unit: Character)] = [
      (1, "n"), (1000, "u"), (1000, "m"), (1000, "S"), (60, "M"), (60, "H"),
    ]
    var unit: Character = "n"
    for (index, step) in units.enumerated() {
      if index > 0 {
        let (quotient, remainder) = amount.quotientAndRemainder(dividingBy: step.divisor)
        amount = quotient + (remainder == 0 ? 0 : 1)
      }
      unit = step.unit
      if amount <= 99_999_999 {
        break
      }
    }
    return "\(min(amount, 99_999_999))\(unit)"
  }

  /// Converts response headers or trailers (or, with ``reservedRequestFields``, request headers)
  /// into metadata, leaving out pseudo-headers and the protocol's own fields; `-bin` values are
  /// base64-decoded (padded or not).
  static func metadata(
    from headers: HPACKHeaders,
    excluding reserved: Set<String> = GRPCWire.reservedResponseHeaders
  ) -> Metadata {
    var metadata = Metadata()
    metadata.reserveCapacity(headers.count)
    for (name, value, _) in headers {
      if name.utf8.first == UInt8(ascii: ":") || reserved.contains(name) {
        continue
      }
      if name.hasSuffix("-bin") {
        if let bytes = Base64.decode(value) {
          metadata.addBinary(bytes, forKey: name)
        } else {
          metadata.addString(value, forKey: name)
        }
      } else {
        metadata.addString(value, forKey: name)
      }
    }
    return metadata
  }

  /// Reads `grpc-status` / `grpc-message` from trailers (or a trailers-only response).
  static func status(fromTrailers trailers: HPACKHeaders) -> Status {
    guard let rawStatus = trailers.first(name: "grpc-status") else {
      return Status(code: .unknown, message: "The server sent trailers without 'grpc-status'.")
    }
    guard let value = Int(rawStatus), let code = Status.Code(rawValue: value) else {
      return Status(
        code: .unknown,
        message: "The server sent an invalid 'grpc-status' ('\(rawStatus)')."
      )
    }
    let message = trailers.first(name: "grpc-message").map(PercentEncoding.decode) ?? ""
    return Status(code: code, message: message)
  }

  /// Maps a non-200 HTTP status to a gRPC status (http-grpc-status-mapping.md).
  static func status(httpStatus: Int) -> Status {
    let code: Status.Code
    switch httpStatus {
    case 400: code = .internalError
    case 401: code = .unauthenticated
    case 403: code = .permissionDenied
    case 404: code = .unimplemented
    case 429, 502, 503, 504: code = .unavailable
    default: code = .unknown
    }
    return Status(code: code, message: "Unexpected HTTP status \(httpStatus) from the server.")
  }

  /// Maps an RST_STREAM error code to an RPC error, like grpc-go's `http2ErrConvTab`.
  static func error(forReset code: HTTP2ErrorCode) -> RPCError {
    switch code {
    case .refusedStream:
      return RPCError(
        code: .unavailable,
        message:
          "The server refused the stream (REFUSED_STREAM) before processing it; it is safe to retry."
      )
    case .cancel:
      return RPCError(
        code: .cancelled,
        message: "The server cancelled the stream (RST_STREAM CANCEL)."
      )
    case .flowControlError, .enhanceYourCalm:
      return RPCError(
        code: .resourceExhausted,
        message: "The server reset the stream (\(code))."
      )
    case .inadequateSecurity:
      return RPCError(
        code: .permissionDenied,
        message: "The server reset the stream (INADEQUATE_SECURITY)."
      )
    default:
      return RPCError(code: .internalError, message: "The server reset the stream (\(code)).")
    }
  }
}

/// Percent-decoding of `grpc-message` values.
enum PercentEncoding {
  static func decode(_ value: String) -> String {
    guard value.utf8.contains(UInt8(ascii: "%")) else { return value }
    var bytes: [UInt8] = []
    bytes.reserveCapacity(value.utf8.count)
    var iterator = value.utf8.makeIterator()
    while let byte = iterator.next() {
      guard byte == UInt8(ascii: "%") else {
        bytes.append(byte)
        continue
      }
      // Malformed escapes are passed through unchanged, as grpc does.
      guard let high = iterator.next() else {
        bytes.append(byte)
        break
      }
      guard let low = iterator.next() else {
        bytes.append(byte)
        bytes.append(high)
        break
      }
      if let h = Self.hexValue(high), let l = Self.hexValue(low) {
        bytes.append(h << 4 | l)
      } else {
        bytes.append(contentsOf: [byte, high, low])
      }
    }
    return String(decoding: bytes, as: UTF8.self)
  }

  private static func hexValue(_ byte: UInt8) -> UInt8? {
    switch byte {
    case UInt8(ascii: "0") ... UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
    case UInt8(ascii: "a") ... UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A") ... UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
    default: return nil
    }
  }
}

/// Base64 decoding for `-bin` metadata, accepting standard and URL-safe alphabets, with or
/// without padding.
enum Base64 {
  static func decode(_ string: String) -> [UInt8]? {
    var output: [UInt8] = []
    output.reserveCapacity(string.utf8.count * 3 / 4)
    var accumulator: UInt32 = 0
    var bits = 0
    var sawPadding = false
    for byte in string.utf8 {
      let value: UInt32
      switch byte {
      case UInt8(ascii: "A") ... UInt8(ascii: "Z"): value = UInt32(byte - UInt8(ascii: "A"))
      case UInt8(ascii: "a") ... UInt8(ascii: "z"): value = UInt32(byte - UInt8(ascii: "a") + 26)
      case UInt8(ascii: "0") ... UInt8(ascii: "9"): value = UInt32(byte - UInt8(ascii: "0") + 52)
      case UInt8(ascii: "+"), UInt8(ascii: "-"): value = 62
      case UInt8(ascii: "/"), UInt8(ascii: "_"): value = 63
      case UInt8(ascii: "="):
        sawPadding = true
        continue
      default:
        return nil
      }
      if sawPadding { return nil }
      accumulator = accumulator << 6 | value
      bits += 6
      if bits >= 8 {
        bits -= 8
        output.append(UInt8(truncatingIfNeeded: accumulator >> UInt32(bits)))
      }
    }
    // 6 leftover bits can never encode a byte.
    if bits >= 6 { return nil }
    return output
  }
}

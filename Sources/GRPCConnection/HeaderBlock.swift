internal import NIOHPACK

/// The kinds of HTTP/2 header block a gRPC peer receives, and the rules each must follow (RFC
/// 9113 § 8.2 and § 8.3), checked in one pass over the block's bytes.
///
/// Both ends of the project's connections run NIOHTTP2Handler with its header-block validation
/// off and check blocks here instead, once per block, as the protocol state machines read them
/// (``ClientStreamStateMachine`` for responses and trailers, ``ServerStreamStateMachine`` for
/// requests). NIOHTTP2Handler validates every block in both directions, and the blocks these
/// connections send are built by ``GRPCWire`` from checked parts (pseudo-headers, and metadata
/// through ``GRPCWire/metadataProblem(name:value:)``); its validation cost the client about 12 %
/// of a call's CPU at 64 calls in flight (BENCHMARKS.md).
///
/// The rules:
/// - every name is a non-empty lowercase HTTP token;
/// - pseudo-headers come before regular fields, each at most once, only those the block may
///   carry (`:method`, `:scheme`, `:path`, `:authority` in a request, `:status` in a response,
///   none in trailers), and the mandatory ones are there (`:method`, `:scheme` and a non-empty
///   `:path`; `:status`);
/// - no connection-specific field (`connection`, `keep-alive`, `proxy-connection`,
///   `transfer-encoding`, `upgrade`), and `te` only as `trailers`;
/// - no CR, LF or NUL in a value, and no control character, space or DEL in a pseudo-header's.
enum HeaderBlock {
  case request
  case response
  case trailers

  /// What makes `headers` malformed as this kind of block, phrased to follow "The request
  /// headers", "The server's response headers" or "The server's trailers"; `nil` when it is
  /// well formed.
  func problem(in headers: HPACKHeaders) -> String? {
    var seen: PseudoHeaders = []
    var regularSeen = false
    for (name, value, _) in headers {
      guard let first = name.utf8.first else { return "have a field with an empty name" }
      if first == UInt8(ascii: ":") {
        guard let pseudo = PseudoHeaders(name: name), self.allowed.contains(pseudo) else {
          return "have the pseudo-header \(String(reflecting: name)), which is not allowed there"
        }
        if regularSeen { return "have '\(name)' after regular fields" }
        if seen.contains(pseudo) { return "have '\(name)' twice" }
        seen.insert(pseudo)
        if !Self.isValidPseudoHeaderValue(value) || (pseudo == .path && value.isEmpty) {
          return "have a '\(name)' of \(String(reflecting: value))"
        }
        continue
      }
      regularSeen = true
      if !name.utf8.allSatisfy(Self.isLowercaseTokenByte) {
        return
          "have the field name \(String(reflecting: name)), which is not a lowercase HTTP token"
      }
      switch name {
      case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
        return "have the connection-specific field '\(name)', which HTTP/2 forbids"
      case "te" where self == .request && value != "trailers":
        return "have 'te: \(value)'; HTTP/2 allows only 'te: trailers'"
      default:
        if value.utf8.contains(where: { $0 == 0x00 || $0 == 0x0A || $0 == 0x0D }) {
          return "have CR, LF or NUL in the value of '\(name)'"
        }
      }
    }
    let missing = self.mandatory.subtracting(seen)
    if !missing.isEmpty {
      return "lack \(missing.names)"
    }
    return nil
  }

  private var allowed: PseudoHeaders {
    switch self {
    case .request: [.method, .scheme, .path, .authority]
    case .response: .status
    case .trailers: []
    }
  }

  private var mandatory: PseudoHeaders {
    switch self {
    case .request: [.method, .scheme, .path]
    case .response: .status
    case .trailers: []
    }
  }

  /// A byte of an HTTP token (RFC 9110 `tchar`) other than an upper-case letter: what an HTTP/2
  /// field name is made of.
  private static func isLowercaseTokenByte(_ byte: UInt8) -> Bool {
    switch byte {
    case 0x21, 0x23 ... 0x27, 0x2A, 0x2B, 0x2D, 0x2E, 0x30 ... 0x39, 0x5E ... 0x7A, 0x7C, 0x7E:
      return true
    default:
      return false
    }
  }

  /// Whether `value` may be a pseudo-header's value: no control character, space or DEL.
  static func isValidPseudoHeaderValue(_ value: String) -> Bool {
    !value.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7F })
  }

  /// The pseudo-headers HTTP/2 defines for gRPC's use.
  private struct PseudoHeaders: OptionSet {
    let rawValue: UInt8

    static let method = PseudoHeaders(rawValue: 1 << 0)
    static let scheme = PseudoHeaders(rawValue: 1 << 1)
    static let path = PseudoHeaders(rawValue: 1 << 2)
    static let authority = PseudoHeaders(rawValue: 1 << 3)
    static let status = PseudoHeaders(rawValue: 1 << 4)

    private static let all: [(PseudoHeaders, String)] = [
      (.method, ":method"), (.scheme, ":scheme"), (.path, ":path"), (.authority, ":authority"),
      (.status, ":status"),
    ]

    init(rawValue: UInt8) {
      self.rawValue = rawValue
    }

    /// The pseudo-header called `name`; `nil` for one HTTP/2 does not define here.
    init?(name: String) {
      switch name {
      case ":method": self = .method
      case ":scheme": self = .scheme
      case ":path": self = .path
      case ":authority": self = .authority
      case ":status": self = .status
      default: return nil
      }
    }

    /// "':method' and ':path'", for messages.
    var names: String {
      Self.all.filter { self.contains($0.0) }.map { "'\($0.1)'" }.joined(separator: " and ")
    }
  }
}

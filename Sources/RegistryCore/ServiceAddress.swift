/// A parsed `host:port` address, as registered and dialled.
///
/// Accepts host names (`user-1.internal:8080`), IPv4 (`10.0.0.7:8082`) and IPv6 in brackets
/// (`[fd00::7]:8082`). Ports are 1 to 65535.
public struct ServiceAddress: Hashable, Sendable, CustomStringConvertible {
  /// The host without brackets: a name, an IPv4 or an IPv6 address.
  public var host: String
  /// The TCP port, 1 to 65535.
  public var port: Int
  /// Whether the host is an IPv6 address (written in brackets in ``description``).
  public var isIPv6: Bool

  /// Parses and checks `host:port`.
  ///
  /// - Throws: ``RegistryError`` with code `invalidArgument`, whose message says which rule failed.
  public init(parsing text: String) throws(RegistryError) {
    // The common case (a host name or IPv4 address and a port) in one pass over the bytes; the
    // rest, and every error with its message, by the general parser below.
    if let parsed = Self.parseHostAndPort(text) {
      self = parsed
      return
    }
    try self.init(checking: text)
  }

  /// The general parser: every form, and every error with its message.
  package init(checking text: String) throws(RegistryError) {
    func fail(_ rule: String) -> RegistryError {
      .invalid(
        "address",
        "address '\(text)' is not valid: \(rule); use host:port, such as 10.0.0.7:8082 or [fd00::7]:8082"
      )
    }
    guard !text.isEmpty else { throw fail("it is empty") }
    guard text.utf8.count <= 261 else { throw fail("it is longer than 261 characters") }

    let hostPart: Substring
    let portPart: Substring
    let isIPv6: Bool
    if text.hasPrefix("[") {
      guard let close = text.firstIndex(of: "]") else {
        throw fail("the IPv6 host has no closing ']'")
      }
      hostPart = text[text.index(after: text.startIndex) ..< close]
      let rest = text[text.index(after: close)...]
      guard rest.hasPrefix(":") else { throw fail("the port is missing after ']'") }
      portPart = rest.dropFirst()
      guard Self.isIPv6(hostPart) else { throw fail("'\(hostPart)' is not an IPv6 address") }
      isIPv6 = true
    } else {
      guard let colon = text.lastIndex(of: ":") else { throw fail("the port is missing") }
      hostPart = text[..<colon]
      portPart = text[text.index(after: colon)...]
      if hostPart.contains(":") {
        throw fail("an IPv6 host must be written in brackets")
      }
      guard !hostPart.isEmpty else { throw fail("the host is empty") }
      guard Self.isIPv4(hostPart) || Self.isHostName(hostPart) else {
        throw fail("'\(hostPart)' is neither a host name nor an IPv4 address")
      }
      isIPv6 = false
    }
    guard !portPart.isEmpty, portPart.utf8.count <= 5,
      portPart.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
      let port = Int(portPart), (1 ... 65535).contains(port)
    else {
      throw fail("the port '\(portPart)' is not a number from 1 to 65535")
    }
    self.host = String(hostPart)
    self.port = port
    self.isIPv6 = isIPv6
  }

  /// Creates an address from parts without checking them.
  public init(host: String, port: Int) {
    self.host = host
    self.port = port
    self.isIPv6 = host.contains(":")
  }

  /// Whether the host is the unspecified address (`0.0.0.0` or `::`), which no client can dial.
  public var isUnspecified: Bool {
    if self.isIPv6 {
      return self.host.utf8.allSatisfy { $0 == UInt8(ascii: ":") || $0 == UInt8(ascii: "0") }
    }
    return self.host == "0.0.0.0"
  }

  /// `host:port`, with IPv6 hosts in brackets.
  public var description: String {
    self.isIPv6 ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)"
  }

  /// `host:port` with a host name or an IPv4 host, or `nil` for anything else (an IPv6 host, or
  /// input the general parser refuses). Accepts exactly what ``init(checking:)`` accepts for such
  /// hosts.
  private static func parseHostAndPort(_ text: String) -> ServiceAddress? {
    var text = text
    return text.withUTF8 { bytes -> ServiceAddress? in
      guard !bytes.isEmpty, bytes.count <= 261, bytes[0] != UInt8(ascii: "[") else { return nil }
      guard let colon = bytes.lastIndex(of: UInt8(ascii: ":")), colon > 0 else { return nil }
      // The port: 1 to 5 digits, 1...65535.
      let portCount = bytes.count - colon - 1
      guard portCount >= 1, portCount <= 5 else { return nil }
      var port = 0
      for byte in bytes[(colon + 1)...] {
        guard byte >= 48, byte <= 57 else { return nil }
        port = port * 10 + Int(byte - 48)
      }
      guard port >= 1, port <= 65535 else { return nil }
      let host = UnsafeBufferPointer(rebasing: bytes[..<colon])
      guard isIPv4(host) || isHostName(host) else { return nil }
      var address = ServiceAddress(host: "", port: port)
      address.host = String(decoding: host, as: UTF8.self)
      address.isIPv6 = false
      return address
    }
  }

  /// Four dot-separated decimal numbers, each 1 to 3 digits and at most 255.
  private static func isIPv4(_ host: UnsafeBufferPointer<UInt8>) -> Bool {
    var parts = 0
    var digits = 0
    var value = 0
    for byte in host {
      if byte == UInt8(ascii: ".") {
        guard digits > 0, value <= 255 else { return false }
        parts += 1
        digits = 0
        value = 0
      } else if byte >= 48, byte <= 57 {
        digits += 1
        guard digits <= 3 else { return false }
        value = value * 10 + Int(byte - 48)
      } else {
        return false
      }
    }
    return parts == 3 && digits > 0 && value <= 255
  }

  /// Labels of `A-Z a-z 0-9 - _`, 1 to 63 bytes, not starting or ending with `-`; at most 253
  /// bytes; not all digits and dots.
  private static func isHostName(_ host: UnsafeBufferPointer<UInt8>) -> Bool {
    guard !host.isEmpty, host.count <= 253 else { return false }
    var labelLength = 0
    var previous: UInt8 = UInt8(ascii: ".")
    var sawNonNumeric = false
    for byte in host {
      if byte == UInt8(ascii: ".") {
        guard labelLength > 0, previous != UInt8(ascii: "-") else { return false }
        labelLength = 0
      } else {
        let isDigit = byte >= 48 && byte <= 57
        let isLetter = (byte >= 65 && byte <= 90) || (byte >= 97 && byte <= 122)
        guard isDigit || isLetter || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_") else {
          return false
        }
        if byte == UInt8(ascii: "-"), labelLength == 0 { return false }
        if !isDigit { sawNonNumeric = true }
        labelLength += 1
        guard labelLength <= 63 else { return false }
      }
      previous = byte
    }
    return labelLength > 0 && previous != UInt8(ascii: "-") && sawNonNumeric
  }

  static func isIPv4(_ text: Substring) -> Bool {
    let parts = text.split(separator: ".", omittingEmptySubsequences: false)
    guard parts.count == 4 else { return false }
    return parts.allSatisfy { part in
      guard !part.isEmpty, part.count <= 3, part.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
        let value = Int(part)
      else { return false }
      return value <= 255
    }
  }

  static func isHostName(_ text: Substring) -> Bool {
    guard text.utf8.count <= 253 else { return false }
    // An all-numeric dotted name that failed the IPv4 check (such as 300.1.1.1) is a typo.
    if text.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || $0 == UInt8(ascii: ".") }) { return false }
    let labels = text.split(separator: ".", omittingEmptySubsequences: false)
    return labels.allSatisfy { label in
      guard !label.isEmpty, label.utf8.count <= 63, label.first != "-", label.last != "-" else {
        return false
      }
      return label.utf8.allSatisfy { byte in
        (byte >= 48 && byte <= 57) || (byte >= 65 && byte <= 90) || (byte >= 97 && byte <= 122)
          || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_")
      }
    }
  }

  static func isIPv6(_ text: Substring) -> Bool {
    // Drop a zone (fe80::1%eth0) before checking the digits.
    var address = text
    if let percent = address.firstIndex(of: "%") {
      guard address.index(after: percent) != address.endIndex else { return false }
      address = address[..<percent]
    }
    guard address.utf8.count >= 2, address.utf8.count <= 45 else { return false }
    let doubleColons = address.ranges(of: "::").count
    guard doubleColons <= 1 else { return false }
    let groups = address.split(separator: ":", omittingEmptySubsequences: false)
    var count = 0
    for (index, group) in groups.enumerated() {
      if group.isEmpty { continue }
      if group.contains("."), index == groups.count - 1 {
        guard isIPv4(group) else { return false }
        count += 2
        continue
      }
      guard group.utf8.count <= 4, group.utf8.allSatisfy({ $0.isHexDigit }) else { return false }
      count += 1
    }
    if doubleColons == 1 { return count <= 7 }
    return count == 8
  }
}

extension UInt8 {
  fileprivate var isHexDigit: Bool {
    (self >= 48 && self <= 57) || (self >= 65 && self <= 70) || (self >= 97 && self <= 102)
  }
}

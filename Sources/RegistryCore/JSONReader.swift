/// A one-pass JSON reader for the registry's small, known value schemas.
///
/// Listing a service decodes one value per instance; Foundation's `JSONDecoder` made that most of
/// the time of listing 10,000 instances. This reader walks the bytes once, builds no
/// intermediate tree and allocates only the strings it returns. It is strict where the JSON
/// grammar is (RFC 8259: no trailing commas, no raw control characters in strings, nothing after
/// the value) and where Go's `encoding/json` is for the fields it reads (integers only, no
/// fractions or exponents, as Go unmarshals into an `int`); unknown fields are checked and skipped.
struct JSONReader {
  /// What was wrong, and where.
  struct Failure: Error, CustomStringConvertible {
    var description: String
  }

  private let bytes: [UInt8]
  private var index = 0

  init(_ bytes: [UInt8]) {
    self.bytes = bytes
  }

  // MARK: - Values

  /// Reads an object, calling `field` with each key; `field` must read (or skip) the value.
  /// With `nullable`, `null` reads as an object with no fields.
  mutating func readObject(
    nullable: Bool = true,
    _ field: (inout JSONReader, String) throws -> Void
  ) throws {
    self.skipWhitespace()
    if nullable, self.consumeNull() { return }
    try self.expect(UInt8(ascii: "{"))
    self.skipWhitespace()
    if self.peek() == UInt8(ascii: "}") {
      self.index += 1
      return
    }
    while true {
      self.skipWhitespace()
      let key = try self.readString()
      self.skipWhitespace()
      try self.expect(UInt8(ascii: ":"))
      try field(&self, key)
      self.skipWhitespace()
      switch self.next() {
      case UInt8(ascii: ","): continue
      case UInt8(ascii: "}"): return
      default: throw self.failure("expected ',' or '}' in an object")
      }
    }
  }

  /// Reads a string; `null` reads as `nil`.
  mutating func readOptionalString() throws -> String? {
    self.skipWhitespace()
    if self.consumeNull() { return nil }
    return try self.readString()
  }

  /// Reads an integer that fits an `Int` (no fraction, no exponent); `null` reads as `nil`.
  mutating func readOptionalInt() throws -> Int? {
    self.skipWhitespace()
    if self.consumeNull() { return nil }
    let start = self.index
    let negative = self.peek() == UInt8(ascii: "-")
    if negative { self.index += 1 }
    var value = 0
    var digits = 0
    while let byte = self.peek(), byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") {
      if digits == 1 && value == 0 { throw self.failure("a number with a leading zero") }
      let digit = Int(byte - UInt8(ascii: "0"))
      let (shifted, overflow) = value.multipliedReportingOverflow(by: 10)
      let (sum, overflowSum) =
        negative
        ? shifted.subtractingReportingOverflow(digit) : shifted.addingReportingOverflow(digit)
      if overflow || overflowSum { throw self.failure("an integer that does not fit 64 bits") }
      value = sum
      digits += 1
      self.index += 1
    }
    if digits == 0 {
      self.index = start
      throw self.failure("expected an integer")
    }
    if let byte = self.peek(),
      byte == UInt8(ascii: ".") || byte == UInt8(ascii: "e") || byte == UInt8(ascii: "E")
    {
      throw self.failure("expected an integer, found a fraction or exponent")
    }
    return value
  }

  /// Reads an object of string values; `null` reads as an empty map.
  mutating func readStringMap() throws -> [String: String] {
    var map: [String: String] = [:]
    try self.readObject { reader, key in
      guard let value = try reader.readOptionalString() else {
        throw reader.failure("expected a string value for '\(key)', found null")
      }
      map[key] = value
    }
    return map
  }

  /// Checks and skips any JSON value.
  mutating func skipValue() throws {
    try self.skipValue(depth: 0)
  }

  /// Checks that nothing but whitespace is left.
  mutating func end() throws {
    self.skipWhitespace()
    if self.index != self.bytes.count { throw self.failure("unexpected data after the value") }
  }

  // MARK: - Internals

  private mutating func skipValue(depth: Int) throws {
    guard depth < 64 else { throw self.failure("values nested more than 64 deep") }
    self.skipWhitespace()
    switch self.peek() {
    case UInt8(ascii: "{"):
      try self.readObject { reader, _ in try reader.skipValue(depth: depth + 1) }
    case UInt8(ascii: "["):
      self.index += 1
      self.skipWhitespace()
      if self.peek() == UInt8(ascii: "]") {
        self.index += 1
        return
      }
      while true {
        try self.skipValue(depth: depth + 1)
        self.skipWhitespace()
        switch self.next() {
        case UInt8(ascii: ","): continue
        case UInt8(ascii: "]"): return
        default: throw self.failure("expected ',' or ']' in an array")
        }
      }
    case UInt8(ascii: "\""):
      _ = try self.readString()
    case UInt8(ascii: "t"):
      try self.expectWord("true")
    case UInt8(ascii: "f"):
      try self.expectWord("false")
    case UInt8(ascii: "n"):
      try self.expectWord("null")
    default:
      try self.skipNumber()
    }
  }

  private mutating func skipNumber() throws {
    if self.peek() == UInt8(ascii: "-") { self.index += 1 }
    guard self.skipDigits() > 0 else { throw self.failure("expected a value") }
    if self.peek() == UInt8(ascii: ".") {
      self.index += 1
      guard self.skipDigits() > 0 else { throw self.failure("expected digits after '.'") }
    }
    if let byte = self.peek(), byte == UInt8(ascii: "e") || byte == UInt8(ascii: "E") {
      self.index += 1
      if let sign = self.peek(), sign == UInt8(ascii: "+") || sign == UInt8(ascii: "-") {
        self.index += 1
      }
      guard self.skipDigits() > 0 else { throw self.failure("expected an exponent") }
    }
  }

  private mutating func skipDigits() -> Int {
    let start = self.index
    while let byte = self.peek(), byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") {
      self.index += 1
    }
    return self.index - start
  }

  private mutating func readString() throws -> String {
    try self.expect(UInt8(ascii: "\""))
    let start = self.index
    // Fast path: no escapes.
    while let byte = self.peek() {
      if byte == UInt8(ascii: "\"") {
        self.index += 1
        return String(decoding: self.bytes[start ..< self.index - 1], as: UTF8.self)
      }
      if byte == UInt8(ascii: "\\") { break }
      if byte < 0x20 { throw self.failure("a control character inside a string") }
      self.index += 1
    }
    var utf8 = Array(self.bytes[start ..< self.index])
    while true {
      guard let byte = self.next() else { throw self.failure("an unterminated string") }
      switch byte {
      case UInt8(ascii: "\""):
        return String(decoding: utf8, as: UTF8.self)
      case UInt8(ascii: "\\"):
        try self.readEscape(into: &utf8)
      case 0 ..< 0x20:
        throw self.failure("a control character inside a string")
      default:
        utf8.append(byte)
      }
    }
  }

  private mutating func readEscape(into utf8: inout [UInt8]) throws {
    guard let escaped = self.next() else { throw self.failure("an unterminated escape") }
    switch escaped {
    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): utf8.append(escaped)
    case UInt8(ascii: "b"): utf8.append(0x08)
    case UInt8(ascii: "f"): utf8.append(0x0C)
    case UInt8(ascii: "n"): utf8.append(0x0A)
    case UInt8(ascii: "r"): utf8.append(0x0D)
    case UInt8(ascii: "t"): utf8.append(0x09)
    case UInt8(ascii: "u"):
      var scalar = try self.readHex4()
      if (0xD800 ..< 0xDC00).contains(scalar) {
        // A high surrogate: a low one must follow, or the pair is replaced (as Go does).
        let mark = self.index
        if self.next() == UInt8(ascii: "\\"), self.next() == UInt8(ascii: "u") {
          let low = try self.readHex4()
          if (0xDC00 ..< 0xE000).contains(low) {
            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
          } else {
            self.index = mark
            scalar = 0xFFFD
          }
        } else {
          self.index = mark
          scalar = 0xFFFD
        }
      } else if (0xDC00 ..< 0xE000).contains(scalar) {
        scalar = 0xFFFD
      }
      utf8.append(contentsOf: String(Character(Unicode.Scalar(scalar) ?? "\u{FFFD}")).utf8)
    default:
      throw self.failure("an invalid escape '\\\(Character(Unicode.Scalar(escaped)))'")
    }
  }

  private mutating func readHex4() throws -> UInt32 {
    var value: UInt32 = 0
    for _ in 0 ..< 4 {
      guard let byte = self.next() else { throw self.failure("an unterminated \\u escape") }
      let digit: UInt8
      switch byte {
      case UInt8(ascii: "0") ... UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
      case UInt8(ascii: "a") ... UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
      case UInt8(ascii: "A") ... UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
      default: throw self.failure("a \\u escape with a non-hex digit")
      }
      value = value << 4 | UInt32(digit)
    }
    return value
  }

  private mutating func consumeNull() -> Bool {
    guard self.peek() == UInt8(ascii: "n") else { return false }
    return (try? self.expectWord("null")) != nil
  }

  private mutating func expectWord(_ word: StaticString) throws {
    let count = word.utf8CodeUnitCount
    guard self.index + count <= self.bytes.count else { throw self.failure("expected \(word)") }
    let matches = word.withUTF8Buffer { expected in
      expected.indices.allSatisfy { self.bytes[self.index + $0] == expected[$0] }
    }
    guard matches else { throw self.failure("expected \(word)") }
    self.index += count
  }

  private mutating func expect(_ byte: UInt8) throws {
    guard self.next() == byte else {
      throw self.failure("expected '\(Character(Unicode.Scalar(byte)))'")
    }
  }

  private mutating func skipWhitespace() {
    while let byte = self.peek(),
      byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09
    {
      self.index += 1
    }
  }

  private func peek() -> UInt8? {
    self.index < self.bytes.count ? self.bytes[self.index] : nil
  }

  private mutating func next() -> UInt8? {
    guard self.index < self.bytes.count else { return nil }
    defer { self.index += 1 }
    return self.bytes[self.index]
  }

  func failure(_ what: String) -> Failure {
    Failure(description: "\(what) at byte \(self.index)")
  }
}

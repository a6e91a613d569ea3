#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// How a ``ServiceInstance`` is stored as a value: the wire format other languages share.
///
/// - ``json``: the Go design's JSON, `{"Name":…,"Address":…,"Weight":…,"Group":…}` plus
///   optional `"Metadata"` and `"Version"`, byte-for-byte what Go's `encoding/json` writes for
///   the same struct. The default.
/// - ``etcdNaming``: etcd's naming format, `{"Op":0,"Addr":…,"Metadata":…}`, read by grpc-go's
///   etcd resolver.
///
/// Decoding ignores unknown fields and reports anything else that is wrong as a
/// ``RegistryError`` with code `malformedValue`.
public struct InstanceCodec: Sendable, CustomStringConvertible {
  /// A short name for logs and flags (`json`, `etcd-naming`).
  public let name: String
  private let encodeValue: @Sendable (ServiceInstance) -> [UInt8]
  private let decodeValue: @Sendable (_ bytes: [UInt8]) throws -> ServiceInstance

  private init(
    name: String,
    encode: @escaping @Sendable (ServiceInstance) -> [UInt8],
    decode: @escaping @Sendable ([UInt8]) throws -> ServiceInstance
  ) {
    self.name = name
    self.encodeValue = encode
    self.decodeValue = decode
  }

  public var description: String { self.name }

  /// The Go design's JSON, the default.
  public static var json: Self {
    Self(name: "json", encode: GoJSON.encode, decode: GoJSON.decode)
  }

  /// etcd's naming format (`{"Op":0,"Addr":…,"Metadata":…}`), for grpc-go's etcd resolver. The
  /// weight, group, version and metadata travel inside `Metadata`; the name comes from the key.
  ///
  /// - Warning: etcd's resolver hands `Metadata`, a JSON object here, to grpc-go as
  ///   `resolver.Address.Metadata`, and grpc-go's `round_robin` (1.33, Debian's) panics on it
  ///   ("hash of unhashable type map[string]interface {}"; etcd-io/etcd#19700). `pick_first`
  ///   works. `Tests/GoInteropTests/GoCodecTests.swift` runs both.
  public static var etcdNaming: Self {
    Self(name: "etcd-naming", encode: EtcdNaming.encode, decode: EtcdNaming.decode)
  }

  /// Looks a codec up by ``name``.
  public static func named(_ name: String) -> Self? {
    switch name {
    case "json": return .json
    case "etcd-naming": return .etcdNaming
    default: return nil
    }
  }

  /// The value bytes of `instance`.
  public func encode(_ instance: ServiceInstance) -> [UInt8] {
    self.encodeValue(instance)
  }

  /// Decodes a stored value.
  ///
  /// Fields the value leaves out are filled from its key: the name from `service`, the address
  /// from `address`. The result is validated like a registration.
  ///
  /// - Throws: ``RegistryError`` with code `malformedValue`, naming the key and what was wrong.
  public func decode(
    _ bytes: [UInt8],
    service: String,
    address: String
  ) throws(RegistryError) -> ServiceInstance {
    try self.decode(bytes, service: service, address: address, serviceIsValid: false)
  }

  /// ``decode(_:service:address:)`` for a caller that has validated `service` already (a
  /// listing decodes thousands of instances of one service): an instance named `service` skips
  /// the name check.
  package func decode(
    _ bytes: [UInt8],
    service: String,
    address: String,
    serviceIsValid: Bool
  ) throws(RegistryError) -> ServiceInstance {
    var instance: ServiceInstance
    do {
      instance = try self.decodeValue(bytes)
    } catch {
      throw self.malformed(bytes, service: service, address: address, cause: error)
    }
    try Self.complete(&instance, service: service, address: address, serviceIsValid: serviceIsValid)
    return instance
  }

  /// ``decode(_:service:address:serviceIsValid:)`` of a value read in place (from an etcd
  /// response): the canonical Go JSON is decoded without copying the value.
  package func decode(
    _ value: UnsafeRawBufferPointer,
    service: String,
    address: String,
    serviceIsValid: Bool
  ) throws(RegistryError) -> ServiceInstance {
    guard self.name == "json",
      var instance = value.withMemoryRebound(
        to: UInt8.self,
        { buffer -> ServiceInstance? in
          var reader = CanonicalReader(bytes: buffer)
          return reader.read()
        }
      )
    else {
      return try self.decode(
        Array(value),
        service: service,
        address: address,
        serviceIsValid: serviceIsValid
      )
    }
    try Self.complete(&instance, service: service, address: address, serviceIsValid: serviceIsValid)
    return instance
  }

  private func malformed(
    _ bytes: [UInt8],
    service: String,
    address: String,
    cause: any Error
  ) -> RegistryError {
    let preview = String(decoding: bytes.prefix(80), as: UTF8.self)
    return RegistryError(
      code: .malformedValue,
      message:
        "the value of \(service)/\(address) is not valid \(self.name) ('\(preview)'); rewrite it with this codec's format or delete it",
      cause: cause
    )
  }

  /// Fills what the value left out from its key and validates the result.
  private static func complete(
    _ instance: inout ServiceInstance,
    service: String,
    address: String,
    serviceIsValid: Bool
  ) throws(RegistryError) {
    if instance.name.isEmpty { instance.name = service }
    if instance.address.isEmpty { instance.address = address }
    do {
      try instance.validate(nameKnownValid: serviceIsValid ? service : nil)
    } catch {
      throw RegistryError(
        code: .malformedValue,
        message: "the value of \(service)/\(address) holds an invalid instance: \(error.message)",
        field: error.field
      )
    }
  }
}

/// Go's `encoding/json` output for the Go design's struct, field by field.
package enum GoJSON {
  package static func encode(_ instance: ServiceInstance) -> [UInt8] {
    var writer = JSONWriter()
    writer.beginObject()
    writer.key("Name")
    writer.string(instance.name)
    writer.key("Address")
    writer.string(instance.address)
    writer.key("Weight")
    writer.integer(instance.weight)
    writer.key("Group")
    writer.string(instance.group)
    if !instance.metadata.isEmpty {
      writer.key("Metadata")
      writer.stringMap(instance.metadata)
    }
    if !instance.version.isEmpty {
      writer.key("Version")
      writer.string(instance.version)
    }
    writer.endObject()
    return writer.bytes
  }

  /// Reads the fields by their exact names (as the writer spells them); a field that is
  /// absent or `null` keeps its zero value, as in Go; unknown fields are skipped.
  package static func decode(_ bytes: [UInt8]) throws -> ServiceInstance {
    let canonical = bytes.withUnsafeBufferPointer { buffer in
      var reader = CanonicalReader(bytes: buffer)
      return reader.read()
    }
    if canonical != nil {
      return canonical.unsafelyUnwrapped
    }
    return try self.decodeGeneral(bytes)
  }

  /// The general reader: any field order, whitespace, escapes, `null`s and unknown fields.
  package static func decodeGeneral(_ bytes: [UInt8]) throws -> ServiceInstance {
    var reader = JSONReader(bytes)
    var instance = ServiceInstance(name: "", address: "", weight: 0)
    try reader.readObject(nullable: false) { reader, key in
      switch key {
      case "Name": instance.name = try reader.readOptionalString() ?? ""
      case "Address": instance.address = try reader.readOptionalString() ?? ""
      case "Weight": instance.weight = try reader.readOptionalInt() ?? 0
      case "Group": instance.group = try reader.readOptionalString() ?? ""
      case "Metadata": instance.metadata = try reader.readStringMap()
      case "Version": instance.version = try reader.readOptionalString() ?? ""
      default: try reader.skipValue()
      }
    }
    try reader.end()
    return instance
  }
}

/// etcd's `naming` update format.
private enum EtcdNaming {
  struct DeleteOperation: Error, CustomStringConvertible {
    var description: String { "the value is a naming Delete operation (Op 1), not an endpoint" }
  }

  static func encode(_ instance: ServiceInstance) -> [UInt8] {
    var writer = JSONWriter()
    writer.beginObject()
    writer.key("Op")
    writer.integer(0)
    writer.key("Addr")
    writer.string(instance.address)
    writer.key("Metadata")
    writer.beginObject()
    writer.key("Weight")
    writer.integer(instance.weight)
    writer.key("Group")
    writer.string(instance.group)
    if !instance.version.isEmpty {
      writer.key("Version")
      writer.string(instance.version)
    }
    if !instance.metadata.isEmpty {
      writer.key("Metadata")
      writer.stringMap(instance.metadata)
    }
    writer.endObject()
    writer.endObject()
    return writer.bytes
  }

  struct MissingAddress: Error, CustomStringConvertible {
    var description: String { "the value has no \"Addr\"" }
  }

  static func decode(_ bytes: [UInt8]) throws -> ServiceInstance {
    var reader = JSONReader(bytes)
    var operation = 0
    var address: String?
    var instance = ServiceInstance(name: "", address: "", weight: 0)
    try reader.readObject(nullable: false) { reader, key in
      switch key {
      case "Op": operation = try reader.readOptionalInt() ?? 0
      case "Addr": address = try reader.readOptionalString()
      case "Metadata":
        // Other writers put arbitrary JSON here; only our own shape carries routing data.
        var attributes = reader
        if let decoded = try? Self.attributes(&attributes) {
          instance.weight = decoded.weight
          instance.group = decoded.group
          instance.version = decoded.version
          instance.metadata = decoded.metadata
          reader = attributes
        } else {
          try reader.skipValue()
        }
      default: try reader.skipValue()
      }
    }
    try reader.end()
    if operation == 1 { throw DeleteOperation() }
    guard let address else { throw MissingAddress() }
    instance.address = address
    return instance
  }

  private static func attributes(
    _ reader: inout JSONReader
  ) throws -> (weight: Int, group: String, version: String, metadata: [String: String]) {
    var result = (weight: 0, group: "", version: "", metadata: [String: String]())
    try reader.readObject { reader, key in
      switch key {
      case "Weight": result.weight = try reader.readOptionalInt() ?? 0
      case "Group": result.group = try reader.readOptionalString() ?? ""
      case "Version": result.version = try reader.readOptionalString() ?? ""
      case "Metadata": result.metadata = try reader.readStringMap()
      default: try reader.skipValue()
      }
    }
    return result
  }
}

/// A minimal JSON writer that escapes strings exactly as Go's `encoding/json` does (HTML-safe:
/// `<`, `>`, `&`, U+2028 and U+2029 as `\u` escapes), so values are byte-identical to Go's.
///
/// Backspace and form feed are written `\b` and `\f`, as Go 1.22 and later writes them; Go up
/// to 1.21 writes `\u0008` and `\u000c` (the same string to every reader).
/// `Tests/GoInteropTests/GoCodecTests.swift` compares the bytes with the installed Go's.
struct JSONWriter {
  private(set) var bytes: [UInt8] = []
  private var needsComma = false

  init() {
    self.bytes.reserveCapacity(128)
  }

  mutating func beginObject() {
    self.separate()
    self.bytes.append(UInt8(ascii: "{"))
    self.needsComma = false
  }

  mutating func endObject() {
    self.bytes.append(UInt8(ascii: "}"))
    self.needsComma = true
  }

  mutating func key(_ key: String) {
    self.separate()
    self.appendString(key)
    self.bytes.append(UInt8(ascii: ":"))
    self.needsComma = false
  }

  mutating func string(_ value: String) {
    self.separate()
    self.appendString(value)
    self.needsComma = true
  }

  mutating func integer(_ value: Int) {
    self.separate()
    self.bytes.append(contentsOf: String(value).utf8)
    self.needsComma = true
  }

  /// Go marshals maps with their keys sorted (byte order).
  mutating func stringMap(_ map: [String: String]) {
    self.beginObject()
    for key in map.keys.sorted(by: { $0.utf8.lexicographicallyPrecedes($1.utf8) }) {
      self.key(key)
      self.string(map[key] ?? "")
    }
    self.endObject()
  }

  private mutating func separate() {
    if self.needsComma {
      self.bytes.append(UInt8(ascii: ","))
      self.needsComma = false
    }
  }

  private static let hex = Array("0123456789abcdef".utf8)

  private mutating func appendString(_ value: String) {
    self.bytes.append(UInt8(ascii: "\""))
    for scalar in value.unicodeScalars {
      switch scalar.value {
      case 0x22: self.bytes.append(contentsOf: [0x5C, 0x22])  // \"
      case 0x5C: self.bytes.append(contentsOf: [0x5C, 0x5C])  // \\
      case 0x0A: self.bytes.append(contentsOf: [0x5C, UInt8(ascii: "n")])
      case 0x0D: self.bytes.append(contentsOf: [0x5C, UInt8(ascii: "r")])
      case 0x09: self.bytes.append(contentsOf: [0x5C, UInt8(ascii: "t")])
      case 0x08: self.bytes.append(contentsOf: [0x5C, UInt8(ascii: "b")])
      case 0x0C: self.bytes.append(contentsOf: [0x5C, UInt8(ascii: "f")])
      case 0x00 ..< 0x20, 0x3C, 0x3E, 0x26, 0x2028, 0x2029:
        self.appendUnicodeEscape(scalar.value)
      default:
        self.bytes.append(contentsOf: String(scalar).utf8)
      }
    }
    self.bytes.append(UInt8(ascii: "\""))
  }

  private mutating func appendUnicodeEscape(_ value: UInt32) {
    self.bytes.append(contentsOf: [0x5C, UInt8(ascii: "u")])
    for shift in stride(from: 12, through: 0, by: -4) {
      self.bytes.append(Self.hex[Int((value >> UInt32(shift)) & 0xF)])
    }
  }
}

/// Reads exactly what ``GoJSON/encode(_:)`` (and Go's `encoding/json`) writes for an instance:
/// the four fields in order, optional `Metadata` and `Version`, no whitespace, no escapes.
/// Anything else returns `nil`, and the general `JSONReader` takes over (with its errors). For
/// the input it accepts it gives what `JSONReader` gives, a few times faster: listing 10,000
/// instances decodes 10,000 of these.
private struct CanonicalReader {
  let bytes: UnsafeBufferPointer<UInt8>
  var index = 0

  init(bytes: UnsafeBufferPointer<UInt8>) {
    self.bytes = bytes
  }

  mutating func read() -> ServiceInstance? {
    guard self.literal("{\"Name\":"), let name = self.string(),
      self.literal(",\"Address\":"), let address = self.string(),
      self.literal(",\"Weight\":"), let weight = self.integer(),
      self.literal(",\"Group\":"), let group = self.string()
    else { return nil }
    var instance = ServiceInstance(name: name, address: address, weight: weight, group: group)
    if self.literal(",\"Metadata\":{") {
      var metadata: [String: String] = [:]
      if !self.literal("}") {
        repeat {
          guard let key = self.string(), self.literal(":"), let value = self.string() else {
            return nil
          }
          metadata[key] = value
        } while self.literal(",")
        guard self.literal("}") else { return nil }
      }
      instance.metadata = metadata
    }
    if self.literal(",\"Version\":") {
      guard let version = self.string() else { return nil }
      instance.version = version
    }
    guard self.literal("}"), self.index == self.bytes.count else { return nil }
    return instance
  }

  private mutating func literal(_ text: StaticString) -> Bool {
    let count = text.utf8CodeUnitCount
    guard self.bytes.count - self.index >= count, let base = self.bytes.baseAddress,
      memcmp(base + self.index, text.utf8Start, count) == 0
    else { return false }
    self.index += count
    return true
  }

  /// A string without escapes or control characters.
  private mutating func string() -> String? {
    guard self.index < self.bytes.count, self.bytes[self.index] == UInt8(ascii: "\"") else {
      return nil
    }
    let start = self.index + 1
    var end = start
    while end < self.bytes.count {
      let byte = self.bytes[end]
      if byte == UInt8(ascii: "\"") {
        self.index = end + 1
        return String(
          decoding: UnsafeBufferPointer(rebasing: self.bytes[start ..< end]),
          as: UTF8.self
        )
      }
      if byte == UInt8(ascii: "\\") || byte < 0x20 { return nil }
      end += 1
    }
    return nil
  }

  /// A non-negative integer without a leading zero, of at most 18 digits.
  private mutating func integer() -> Int? {
    var value = 0
    var digits = 0
    while self.index < self.bytes.count {
      let byte = self.bytes[self.index]
      guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { break }
      if digits == 1, value == 0 { return nil }
      // 18 digits cannot overflow an Int; longer numbers go to the general reader.
      guard digits < 18 else { return nil }
      value = value * 10 + Int(byte - UInt8(ascii: "0"))
      digits += 1
      self.index += 1
    }
    return digits == 0 ? nil : value
  }
}

import struct Foundation.Data
import class Foundation.JSONDecoder

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
    var instance: ServiceInstance
    do {
      instance = try self.decodeValue(bytes)
    } catch {
      let preview = String(decoding: bytes.prefix(80), as: UTF8.self)
      throw RegistryError(
        code: .malformedValue,
        message:
          "the value of \(service)/\(address) is not valid \(self.name) ('\(preview)'); rewrite it with this codec's format or delete it",
        cause: error
      )
    }
    if instance.name.isEmpty { instance.name = service }
    if instance.address.isEmpty { instance.address = address }
    do {
      try instance.validate()
    } catch {
      throw RegistryError(
        code: .malformedValue,
        message: "the value of \(service)/\(address) holds an invalid instance: \(error.message)",
        field: error.field
      )
    }
    return instance
  }
}

/// Go's `encoding/json` output for the Go design's struct, field by field.
private enum GoJSON {
  struct Wire: Decodable {
    var Name: String?
    var Address: String?
    var Weight: Int?
    var Group: String?
    var Metadata: [String: String]?
    var Version: String?
  }

  static func encode(_ instance: ServiceInstance) -> [UInt8] {
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

  static func decode(_ bytes: [UInt8]) throws -> ServiceInstance {
    let wire = try JSONDecoder().decode(Wire.self, from: Data(bytes))
    return ServiceInstance(
      name: wire.Name ?? "",
      address: wire.Address ?? "",
      weight: wire.Weight ?? 0,
      group: wire.Group ?? "",
      metadata: wire.Metadata ?? [:],
      version: wire.Version ?? ""
    )
  }
}

/// etcd's `naming` update format.
private enum EtcdNaming {
  struct Attributes: Decodable {
    var Weight: Int?
    var Group: String?
    var Version: String?
    var Metadata: [String: String]?
  }

  struct Wire: Decodable {
    var Op: Int?
    var Addr: String
    var Metadata: Attributes?

    enum CodingKeys: String, CodingKey {
      case Op, Addr, Metadata
    }

    init(from decoder: any Decoder) throws {
      let container = try decoder.container(keyedBy: CodingKeys.self)
      self.Op = try container.decodeIfPresent(Int.self, forKey: .Op)
      self.Addr = try container.decode(String.self, forKey: .Addr)
      // Other writers put arbitrary JSON here; only our own shape carries routing data.
      self.Metadata = try? container.decodeIfPresent(Attributes.self, forKey: .Metadata)
    }
  }

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

  static func decode(_ bytes: [UInt8]) throws -> ServiceInstance {
    let wire = try JSONDecoder().decode(Wire.self, from: Data(bytes))
    if wire.Op == 1 { throw DeleteOperation() }
    return ServiceInstance(
      name: "",
      address: wire.Addr,
      weight: wire.Metadata?.Weight ?? 0,
      group: wire.Metadata?.Group ?? "",
      metadata: wire.Metadata?.Metadata ?? [:],
      version: wire.Metadata?.Version ?? ""
    )
  }
}

/// A minimal JSON writer that escapes strings exactly as Go's `encoding/json` does (HTML-safe:
/// `<`, `>`, `&`, U+2028 and U+2029 as `\u` escapes), so values are byte-identical to Go's.
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

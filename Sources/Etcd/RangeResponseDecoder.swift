import GRPCCore

/// Decodes etcd's `RangeResponse` straight from the message bytes into an ``EtcdGetResult``:
/// one pass, one allocation per key and per value, no intermediate protobuf message or `Data`.
/// A listing of 10,000 keys is decoded several times faster than through SwiftProtobuf.
///
/// Field numbers are etcd's (`rpc.proto` and `kv.proto`): RangeResponse `header` 1, `kvs` 2,
/// `more` 3, `count` 4; ResponseHeader `cluster_id` 1, `member_id` 2, `revision` 3,
/// `raft_term` 4; KeyValue `key` 1, `create_revision` 2, `mod_revision` 3, `version` 4, `value`
/// 5, `lease` 6. Unknown fields are skipped, as protobuf requires.
struct RangeResponseDeserializer: MessageDeserializer {
  typealias Message = EtcdGetResult

  func deserialize<Bytes: GRPCContiguousBytes>(
    _ serializedMessageBytes: Bytes
  ) throws -> EtcdGetResult {
    try serializedMessageBytes.withUnsafeBytes { raw in
      try Self.decode(raw)
    }
  }

  static func decode(_ raw: UnsafeRawBufferPointer) throws(ProtobufWireError) -> EtcdGetResult {
    var reader = ProtobufWireReader(raw)
    var result = EtcdGetResult(
      header: EtcdResponseHeader(clusterID: 0, memberID: 0, revision: 0, raftTerm: 0),
      kvs: [],
      count: 0,
      more: false
    )
    while let (field, wireType) = try reader.nextField() {
      switch (field, wireType) {
      case (1, .lengthDelimited):
        var header = try reader.readMessage()
        while let (field, wireType) = try header.nextField() {
          switch (field, wireType) {
          case (1, .varint): result.header.clusterID = try header.readVarint()
          case (2, .varint): result.header.memberID = try header.readVarint()
          case (3, .varint): result.header.revision = Int64(bitPattern: try header.readVarint())
          case (4, .varint): result.header.raftTerm = try header.readVarint()
          default: try header.skip(wireType)
          }
        }
      case (2, .lengthDelimited):
        var message = try reader.readMessage()
        var kv = EtcdKeyValue(
          key: [],
          value: [],
          createRevision: 0,
          modRevision: 0,
          version: 0,
          lease: 0
        )
        while let (field, wireType) = try message.nextField() {
          switch (field, wireType) {
          case (1, .lengthDelimited): kv.key = try message.readBytes()
          case (2, .varint): kv.createRevision = Int64(bitPattern: try message.readVarint())
          case (3, .varint): kv.modRevision = Int64(bitPattern: try message.readVarint())
          case (4, .varint): kv.version = Int64(bitPattern: try message.readVarint())
          case (5, .lengthDelimited): kv.value = try message.readBytes()
          case (6, .varint): kv.lease = Int64(bitPattern: try message.readVarint())
          default: try message.skip(wireType)
          }
        }
        if result.kvs.isEmpty { result.kvs.reserveCapacity(reader.remaining / 64 + 1) }
        result.kvs.append(kv)
      case (3, .varint): result.more = try reader.readVarint() != 0
      case (4, .varint): result.count = Int64(bitPattern: try reader.readVarint())
      default: try reader.skip(wireType)
      }
    }
    return result
  }
}

/// A protobuf message that is not well formed.
struct ProtobufWireError: Error, CustomStringConvertible {
  var description: String

  init(_ description: String) {
    self.description = "malformed protobuf message: \(description)"
  }
}

/// Reads protobuf's wire format (varints, length-delimited fields) from a buffer it does not
/// own; every read is bounds-checked.
struct ProtobufWireReader {
  enum WireType: UInt8 {
    case varint = 0
    case fixed64 = 1
    case lengthDelimited = 2
    case startGroup = 3
    case endGroup = 4
    case fixed32 = 5
  }

  private let bytes: UnsafeRawBufferPointer
  private var offset: Int
  private let end: Int

  init(_ bytes: UnsafeRawBufferPointer) {
    self.bytes = bytes
    self.offset = 0
    self.end = bytes.count
  }

  private init(_ bytes: UnsafeRawBufferPointer, offset: Int, end: Int) {
    self.bytes = bytes
    self.offset = offset
    self.end = end
  }

  var remaining: Int { self.end - self.offset }

  /// The next field's number and wire type, or `nil` at the end.
  mutating func nextField() throws(ProtobufWireError) -> (Int, WireType)? {
    guard self.offset < self.end else { return nil }
    let tag = try self.readVarint()
    guard let wireType = WireType(rawValue: UInt8(tag & 7)) else {
      throw ProtobufWireError("wire type \(tag & 7) at byte \(self.offset)")
    }
    let field = tag >> 3
    guard field > 0, field <= 536_870_911 else {
      throw ProtobufWireError("field number \(field) at byte \(self.offset)")
    }
    return (Int(field), wireType)
  }

  mutating func readVarint() throws(ProtobufWireError) -> UInt64 {
    var value: UInt64 = 0
    var shift: UInt64 = 0
    while self.offset < self.end {
      let byte = self.bytes[self.offset]
      self.offset += 1
      value |= UInt64(byte & 0x7f) << shift
      if byte < 0x80 { return value }
      shift += 7
      guard shift < 64 else { throw ProtobufWireError("a varint longer than 10 bytes") }
    }
    throw ProtobufWireError("a varint cut off at the end")
  }

  private mutating func readLength() throws(ProtobufWireError) -> Int {
    let length = try self.readVarint()
    guard length <= UInt64(self.remaining) else {
      throw ProtobufWireError("a field of \(length) bytes with \(self.remaining) left")
    }
    return Int(length)
  }

  /// A length-delimited field's bytes as an array.
  mutating func readBytes() throws(ProtobufWireError) -> [UInt8] {
    let length = try self.readLength()
    let start = self.offset
    self.offset += length
    return Array(UnsafeRawBufferPointer(rebasing: self.bytes[start ..< start + length]))
  }

  /// A reader of the embedded message in a length-delimited field.
  mutating func readMessage() throws(ProtobufWireError) -> ProtobufWireReader {
    let length = try self.readLength()
    let nested = ProtobufWireReader(self.bytes, offset: self.offset, end: self.offset + length)
    self.offset += length
    return nested
  }

  mutating func skip(_ wireType: WireType) throws(ProtobufWireError) {
    switch wireType {
    case .varint:
      _ = try self.readVarint()
    case .fixed64, .fixed32:
      let size = wireType == .fixed64 ? 8 : 4
      guard self.remaining >= size else { throw ProtobufWireError("a fixed field cut off") }
      self.offset += size
    case .lengthDelimited:
      self.offset += try self.readLength()
    case .startGroup, .endGroup:
      throw ProtobufWireError("groups are not used by etcd's messages")
    }
  }
}

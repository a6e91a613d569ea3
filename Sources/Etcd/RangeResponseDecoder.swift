import GRPCCore

/// Decodes etcd's `RangeResponse` straight from the message bytes into an ``EtcdGetResult``:
/// one pass, one allocation per key and per value, no intermediate protobuf message or `Data`.
/// A listing of 10,000 keys is decoded several times faster than through SwiftProtobuf;
/// ``RangeVisitingDeserializer`` goes further and hands each key-value to a visitor in place.
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
    var kvs: [EtcdKeyValue] = []
    let fields = try RangeResponseScanner.scan(raw) { view in
      if kvs.isEmpty { kvs.reserveCapacity(raw.count / 128 + 1) }
      kvs.append(
        EtcdKeyValue(
          key: Array(view.key),
          value: Array(view.value),
          createRevision: view.createRevision,
          modRevision: view.modRevision,
          version: view.version,
          lease: view.lease
        )
      )
    }
    return EtcdGetResult(header: fields.header, kvs: kvs, count: fields.count, more: fields.more)
  }
}

/// A key-value of a range response, read in place: `key` and `value` point into the response
/// and are valid only while the visitor runs.
package struct EtcdKeyValueView {
  package var key: UnsafeRawBufferPointer
  package var value: UnsafeRawBufferPointer
  package var createRevision: Int64
  package var modRevision: Int64
  package var version: Int64
  package var lease: Int64

  package init(
    key: UnsafeRawBufferPointer,
    value: UnsafeRawBufferPointer,
    createRevision: Int64,
    modRevision: Int64,
    version: Int64,
    lease: Int64
  ) {
    self.key = key
    self.value = value
    self.createRevision = createRevision
    self.modRevision = modRevision
    self.version = version
    self.lease = lease
  }

  /// The key as text (for logs).
  package var keyString: String { String(decoding: self.key, as: UTF8.self) }
}

/// One page of a paged range read: its elements (none when read through a visitor), and what
/// paging needs.
struct EtcdRangePage<Element: Sendable>: Sendable {
  var header: EtcdResponseHeader
  var elements: [Element]
  /// The last key of the page (visited or not).
  var lastKey: [UInt8]?
  var more: Bool
}

/// Deserializes a range response by handing each key-value, in place, to `visit`. Not generic:
/// the visitor, compiled where it is written, does the per-key work specialized for its types.
struct RangeVisitingDeserializer: MessageDeserializer {
  typealias Message = EtcdRangePage<Never>
  let visit: @Sendable (EtcdKeyValueView) -> Void

  func deserialize<Bytes: GRPCContiguousBytes>(
    _ serializedMessageBytes: Bytes
  ) throws -> EtcdRangePage<Never> {
    try serializedMessageBytes.withUnsafeBytes { raw throws(ProtobufWireError) in
      var last: UnsafeRawBufferPointer?
      let fields = try RangeResponseScanner.scan(raw) { view in
        self.visit(view)
        last = view.key
      }
      return EtcdRangePage(
        header: fields.header,
        elements: [],
        lastKey: last.map { Array($0) },
        more: fields.more
      )
    }
  }
}

/// Walks etcd's `RangeResponse` wire format once.
package enum RangeResponseScanner {
  package struct Fields {
    package var header = EtcdResponseHeader(clusterID: 0, memberID: 0, revision: 0, raftTerm: 0)
    package var count: Int64 = 0
    package var more = false
  }

  /// The whole response as an ``EtcdGetResult`` (what ``RangeResponseDeserializer`` returns).
  package static func result(
    _ raw: UnsafeRawBufferPointer
  ) throws(ProtobufWireError) -> EtcdGetResult {
    try RangeResponseDeserializer.decode(raw)
  }

  /// Reads the response's fields, calling `keyValue` for each key-value in order.
  package static func scan(
    _ raw: UnsafeRawBufferPointer,
    keyValue: (EtcdKeyValueView) -> Void
  ) throws(ProtobufWireError) -> Fields {
    var reader = ProtobufWireReader(raw)
    var fields = Fields()
    while let (field, wireType) = try reader.nextField() {
      switch (field, wireType) {
      case (1, .lengthDelimited):
        var header = try reader.readMessage()
        while let (field, wireType) = try header.nextField() {
          switch (field, wireType) {
          case (1, .varint): fields.header.clusterID = try header.readVarint()
          case (2, .varint): fields.header.memberID = try header.readVarint()
          case (3, .varint): fields.header.revision = Int64(bitPattern: try header.readVarint())
          case (4, .varint): fields.header.raftTerm = try header.readVarint()
          default: try header.skip(wireType)
          }
        }
      case (2, .lengthDelimited):
        var message = try reader.readMessage()
        var view = EtcdKeyValueView(
          key: UnsafeRawBufferPointer(start: nil, count: 0),
          value: UnsafeRawBufferPointer(start: nil, count: 0),
          createRevision: 0,
          modRevision: 0,
          version: 0,
          lease: 0
        )
        while let (field, wireType) = try message.nextField() {
          switch (field, wireType) {
          case (1, .lengthDelimited): view.key = try message.readSlice()
          case (2, .varint): view.createRevision = Int64(bitPattern: try message.readVarint())
          case (3, .varint): view.modRevision = Int64(bitPattern: try message.readVarint())
          case (4, .varint): view.version = Int64(bitPattern: try message.readVarint())
          case (5, .lengthDelimited): view.value = try message.readSlice()
          case (6, .varint): view.lease = Int64(bitPattern: try message.readVarint())
          default: try message.skip(wireType)
          }
        }
        keyValue(view)
      case (3, .varint): fields.more = try reader.readVarint() != 0
      case (4, .varint): fields.count = Int64(bitPattern: try reader.readVarint())
      default: try reader.skip(wireType)
      }
    }
    return fields
  }
}

/// A protobuf message that is not well formed.
package struct ProtobufWireError: Error, CustomStringConvertible {
  package var description: String

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

  /// A length-delimited field's bytes, in place.
  mutating func readSlice() throws(ProtobufWireError) -> UnsafeRawBufferPointer {
    let length = try self.readLength()
    let start = self.offset
    self.offset += length
    return UnsafeRawBufferPointer(rebasing: self.bytes[start ..< start + length])
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

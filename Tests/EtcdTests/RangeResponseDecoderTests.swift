import Foundation
import SwiftProtobuf
import Testing

@testable import Etcd

/// The hand-written `RangeResponse` decoder against SwiftProtobuf's: the same result for the same
/// bytes, unknown fields skipped, malformed input refused with an error (never a crash).
@Suite("RangeResponse decoder")
struct RangeResponseDecoderTests {
  static func response(count: Int) -> Etcdserverpb_RangeResponse {
    var response = Etcdserverpb_RangeResponse()
    response.header.clusterID = 0xdead_beef_0000_0001
    response.header.memberID = 42
    response.header.revision = 1_234_567
    response.header.raftTerm = 9
    response.count = Int64(count)
    response.more = count % 2 == 1
    response.kvs = (0 ..< count).map { index in
      var kv = Etcdserverpb_KeyValue()
      kv.key = Data("/micro/svc/10.0.0.\(index):8080".utf8)
      kv.value = Data(
        #"{"Name":"svc","Address":"10.0.0.\#(index):8080","Weight":1,"Group":""}"#.utf8
      )
      kv.createRevision = Int64(index + 1)
      kv.modRevision = Int64(index * 3 + 2)
      kv.version = Int64(index % 5)
      kv.lease = index % 2 == 0 ? 0 : 0x7fff_ffff_ffff_0000 + Int64(index)
      return kv
    }
    return response
  }

  static func decode(_ bytes: [UInt8]) throws -> EtcdGetResult {
    try bytes.withUnsafeBytes { try RangeResponseDeserializer.decode($0) }
  }

  // Catches: a wrong field number or wire type (a field left at zero or mixed up).
  @Test(
    "decodes what SwiftProtobuf encodes, as SwiftProtobuf decodes it",
    arguments: [0, 1, 3, 1000]
  )
  func matchesSwiftProtobuf(count: Int) throws {
    let response = Self.response(count: count)
    let bytes: [UInt8] = try response.serializedBytes()
    #expect(try Self.decode(bytes) == EtcdGetResult(response))
  }

  @Test("skips unknown fields of every wire type")
  func unknownFields() throws {
    // Field 99 as a varint, field 98 fixed64, field 97 length-delimited, field 96 fixed32.
    let unknown: [UInt8] = [
      0x98, 0x06, 0x05, 0x91, 0x06, 1, 2, 3, 4, 5, 6, 7, 8, 0x8a, 0x06, 0x02, 0xaa, 0xbb, 0x85,
      0x06, 1, 2, 3, 4,
    ]
    // Protobuf merges concatenated messages: the unknown fields at the top level, then one more
    // key-value (field 2) with the unknown fields inside it.
    let kv: [UInt8] = try Self.response(count: 1).kvs[0].serializedBytes() + unknown
    let bytes: [UInt8] =
      try Self.response(count: 2).serializedBytes() + unknown + [0x12, UInt8(kv.count)] + kv
    let expected = EtcdGetResult(try Etcdserverpb_RangeResponse(serializedBytes: bytes))
    #expect(expected.kvs.count == 3)
    #expect(try Self.decode(bytes) == expected)
  }

  // Catches: an out-of-bounds read on a cut or corrupted response (a crash instead of an error).
  @Test("refuses every truncation and survives 20,000 corruptions (seeded)")
  func malformed() throws {
    let bytes: [UInt8] = try Self.response(count: 20).serializedBytes()
    for length in 0 ..< bytes.count {
      // A cut inside a field fails; a cut between top-level fields is a valid shorter message.
      _ = try? Self.decode(Array(bytes[..<length]))
    }
    #expect(throws: ProtobufWireError.self) { try Self.decode(Array(bytes.dropLast())) }
    #expect(throws: ProtobufWireError.self) { try Self.decode([0x12, 0x05, 0x0a]) }
    #expect(throws: ProtobufWireError.self) { try Self.decode([0x0b]) }  // a group
    #expect(throws: ProtobufWireError.self) { try Self.decode(Array(repeating: 0xff, count: 11)) }
    var state: UInt64 = 17
    func next() -> UInt64 {
      state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
      return state >> 33
    }
    var failures = 0
    for _ in 0 ..< 20_000 {
      var corrupted = bytes
      for _ in 0 ..< 1 + Int(next() % 4) {
        corrupted[Int(next() % UInt64(corrupted.count))] = UInt8(truncatingIfNeeded: next())
      }
      do {
        _ = try Self.decode(corrupted)
      } catch {
        failures += 1
      }
    }
    #expect(failures > 0)
  }
}

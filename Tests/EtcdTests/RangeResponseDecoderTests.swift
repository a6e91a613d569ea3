import Foundation
import RegistryPrimitives
import SwiftProtobuf
import Synchronization
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

/// The paged read's rules, driven with pages made up by the test (no etcd).
@Suite("Paged range reads")
struct PagedReadTests {
  static func page(_ keys: [String], more: Bool, revision: Int64) -> EtcdRangePage<String> {
    EtcdRangePage(
      header: EtcdResponseHeader(clusterID: 1, memberID: 1, revision: revision, raftTerm: 1),
      elements: keys,
      lastKey: keys.last.map { Array($0.utf8) },
      more: more
    )
  }

  // Catches: a restart that keeps what the failed attempt visited (duplicates), or later pages
  // read at another revision than the first (an inconsistent snapshot).
  @Test(
    "a compaction between pages starts over, after `restart`; later pages read the first's revision"
  )
  func compactionRestarts() async throws {
    let calls = Locked<[(key: String, revision: Int64, limit: Int64)]>([])
    let restarts = Locked(0)
    let result = try await EtcdClient.readPages(
      .prefix("k/"),
      pageSize: 2,
      restart: { restarts.withLock { $0 += 1 } },
      read: { range, options in
        let attempt = calls.withLock { calls in
          calls.append(
            (String(decoding: range.key, as: UTF8.self), options.revision, options.limit)
          )
          return calls.count
        }
        switch attempt {
        case 1: return Self.page(["k/a", "k/b"], more: true, revision: 10)
        case 2: throw EtcdError(code: .compacted, message: "compacted", compactRevision: 11)
        case 3: return Self.page(["k/a", "k/b"], more: true, revision: 12)
        default: return Self.page(["k/c"], more: false, revision: 12)
        }
      }
    )
    #expect(result.elements == ["k/a", "k/b", "k/c"])
    #expect(result.header.revision == 12)
    #expect(restarts.withLock { $0 } == 1)
    let seen = calls.withLock { $0 }
    #expect(seen.map(\.key) == ["k/", "k/b\0", "k/", "k/b\0"])
    #expect(seen.map(\.revision) == [0, 10, 0, 12])
    #expect(seen.allSatisfy { $0.limit == 2 })
  }

  @Test(
    "a page over the response cap is read again with half the keys, and later pages keep the limit"
  )
  func halving() async throws {
    let limits = Locked<[Int64]>([])
    let result = try await EtcdClient.readPages(.prefix("k/"), pageSize: 8) {
      range,
      options in
      limits.withLock { $0.append(options.limit) }
      if options.limit > 2 {
        throw EtcdError(code: .responseTooLarge, message: "too large")
      }
      return range.key == Array("k/".utf8)
        ? Self.page(["k/a", "k/b"], more: true, revision: 5)
        : Self.page(["k/c"], more: false, revision: 5)
    }
    #expect(result.elements == ["k/a", "k/b", "k/c"])
    #expect(limits.withLock { $0 } == [8, 4, 2, 2])
  }
}

import Testing

@testable import RegistryCore

/// The fast paths of listing (the canonical JSON reader, the host:port scanner) against the
/// general parsers they stand in for: the same answer for every input, hand-picked and random.
@Suite("Fast paths")
struct FastPathTests {
  /// Same instance, or both failing.
  static func sameJSON(_ text: String) -> Bool {
    let bytes = Array(text.utf8)
    let fast = try? GoJSON.decode(bytes)
    let general = try? GoJSON.decodeGeneral(bytes)
    return fast == general
  }

  // Catches: a fast path that accepts what the general reader refuses, or reads it differently.
  @Test(
    "the canonical reader agrees with the general JSON reader",
    arguments: [
      #"{"Name":"a","Address":"10.0.0.1:80","Weight":3,"Group":"g"}"#,
      #"{"Name":"a","Address":"10.0.0.1:80","Weight":0,"Group":""}"#,
      #"{"Name":"a","Address":"h:1","Weight":1,"Group":"","Metadata":{"zone":"a","k":"v"}}"#,
      #"{"Name":"a","Address":"h:1","Weight":1,"Group":"","Metadata":{}}"#,
      #"{"Name":"a","Address":"h:1","Weight":1,"Group":"","Metadata":{"k":"1","k":"2"}}"#,
      #"{"Name":"a","Address":"h:1","Weight":1,"Group":"","Version":"1.2.3"}"#,
      #"{"Name":"a","Address":"h:1","Weight":1,"Group":"","Metadata":{"a":"b"},"Version":"v"}"#,
      #"{"Name":"a\u00e9","Address":"h:1","Weight":1,"Group":""}"#,
      #"{"Name":"a\"b","Address":"h:1","Weight":1,"Group":""}"#,
      #"{"Name":"é","Address":"h:1","Weight":1,"Group":"\u2028"}"#,
      #"{"Name":"a","Address":"h:1","Weight":01,"Group":""}"#,
      #"{"Name":"a","Address":"h:1","Weight":-1,"Group":""}"#,
      #"{"Name":"a","Address":"h:1","Weight":1.5,"Group":""}"#,
      #"{"Name":"a","Address":"h:1","Weight":1e3,"Group":""}"#,
      #"{"Name":"a","Address":"h:1","Weight":99999999999999999999,"Group":""}"#,
      #"{"Name":"a","Address":"h:1","Weight":1,"Group":""} "#,
      #"{"Name":"a","Address":"h:1","Weight":1,"Group":""}x"#,
      #"{"Name":"a","Address":"h:1","Weight":1,"Group":"","Extra":true}"#,
      #"{"Address":"h:1","Name":"a","Weight":1,"Group":""}"#,
      #"{ "Name":"a","Address":"h:1","Weight":1,"Group":""}"#,
      #"{"Name":null,"Address":"h:1","Weight":1,"Group":""}"#,
      #"{"Name":"a","Address":"h:1","Weight":1,"Group":"","Metadata":{"k":null}}"#,
      #"{"Name":"a","Address":"h:1","Weight":1,"Group":"","Metadata":{"k":"v",}}"#,
      #"{"Name":"a","Address":"h:1","Weight":1"#,
      "{\"Name\":\"a\tb\",\"Address\":\"h:1\",\"Weight\":1,\"Group\":\"\"}",
      "",
    ]
  )
  func canonicalJSON(_ text: String) {
    #expect(Self.sameJSON(text), "\(text)")
  }

  @Test("the canonical reader agrees with the general reader on 20,000 mutated values (seeded)")
  func canonicalJSONRandom() {
    var random = SplitMix(seed: 18)
    let base = Array(
      #"{"Name":"user-server","Address":"10.0.0.7:8082","Weight":12,"Group":"A","Metadata":{"zone":"a"},"Version":"1"}"#
        .utf8
    )
    let alphabet = Array(#"{}[]":,\ 0123456789-.eanulrtx"#.utf8) + [0x00, 0x1f, 0xc3, 0xa9, 0xff]
    for _ in 0 ..< 20_000 {
      var bytes = base
      for _ in 0 ..< Int(random.next() % 3) + 1 {
        let index = Int(random.next() % UInt64(bytes.count))
        switch random.next() % 3 {
        case 0: bytes[index] = alphabet[Int(random.next() % UInt64(alphabet.count))]
        case 1: bytes.remove(at: index)
        default: bytes.insert(alphabet[Int(random.next() % UInt64(alphabet.count))], at: index)
        }
      }
      let fast = try? GoJSON.decode(bytes)
      let general = try? GoJSON.decodeGeneral(bytes)
      #expect(fast == general, "\(String(decoding: bytes, as: UTF8.self))")
      if fast != general { return }
    }
  }

  /// The same address, or both failing.
  static func sameAddress(_ text: String) -> Bool {
    let fast = try? ServiceAddress(parsing: text)
    let general = try? ServiceAddress(checking: text)
    return fast == general
  }

  @Test(
    "the host:port scanner agrees with the general address parser",
    arguments: [
      "10.0.0.7:8082", "0.0.0.0:1", "255.255.255.255:65535", "256.1.1.1:80", "1.2.3:80",
      "1.2.3.4.5:80", "01.2.3.4:80", "1..2.3:80", "a.b:1", "user-1.internal:8080", "-a:1", "a-:1",
      "a_b:1", "a.-b:1", "300.1.1.1:1", "1.2.3.4:0", "1.2.3.4:65536", "1.2.3.4:", ":80", "h:080",
      "h:123456", "[::1]:80", "::1:80", "h:1:2", "h", "", "é:1", "a..b:1", "a.:1",
      String(repeating: "a", count: 63) + ":1", String(repeating: "a", count: 64) + ":1",
      String(repeating: "a.", count: 126) + "a:1", String(repeating: "a.", count: 127) + "a:1",
    ]
  )
  func hostAndPort(_ text: String) {
    #expect(Self.sameAddress(text), "\(text)")
  }

  @Test("the host:port scanner agrees with the general parser on 20,000 random strings (seeded)")
  func hostAndPortRandom() {
    var random = SplitMix(seed: 7)
    let alphabet = Array("0123456789.:-_aZ[]%".utf8)
    for _ in 0 ..< 20_000 {
      let count = Int(random.next() % 24)
      let bytes = (0 ..< count).map { _ in alphabet[Int(random.next() % UInt64(alphabet.count))] }
      let text = String(decoding: bytes, as: UTF8.self)
      #expect(Self.sameAddress(text), "\(text)")
      if !Self.sameAddress(text) { return }
    }
  }
}

/// A seeded generator, so a failure can be replayed.
struct SplitMix: RandomNumberGenerator {
  var state: UInt64
  init(seed: UInt64) { self.state = seed }
  mutating func next() -> UInt64 {
    self.state &+= 0x9e37_79b9_7f4a_7c15
    var z = self.state
    z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
    z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
    return z ^ (z >> 31)
  }
}

@Suite("Snapshot changes")
struct SnapshotApplyTests {
  // Catches: an insertion at the wrong place (the set no longer sorted, so later binary searches
  // miss), an update that duplicates, a removal of the wrong instance.
  @Test("applying 5,000 random changes in place matches a naive model (seeded)")
  func matchesModel() {
    var random = SplitMix(seed: 3)
    var snapshot = RegistrySnapshot(service: "svc", instances: [], revision: 0)
    var model: [String: ServiceInstance] = [:]
    for revision in 1 ... 5_000 {
      let address = "10.0.\(random.next() % 8).\(random.next() % 40):80"
      let instance = ServiceInstance(
        name: "svc",
        address: address,
        weight: Int(random.next() % 4)
      )
      let event: RegistryEvent
      if random.next() % 3 == 0 {
        event = .removed(instance, revision: Int64(revision))
        model[address] = nil
      } else {
        event =
          model[address] == nil
          ? .added(instance, revision: Int64(revision))
          : .updated(instance, revision: Int64(revision))
        model[address] = instance
      }
      snapshot.apply(event)
      #expect(snapshot.revision == Int64(revision))
      #expect(snapshot.instance(at: address) == model[address])
    }
    let expected = model.values.sorted { $0.address < $1.address }
    #expect(snapshot.instances == expected)
    #expect(
      snapshot.applying(.removed(expected[0], revision: 9)).instances == Array(expected.dropFirst())
    )
  }
}

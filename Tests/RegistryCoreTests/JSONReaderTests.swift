import Foundation
import Testing

@testable import RegistryCore

/// The hand-written reader behind the codecs, checked against Foundation's `JSONDecoder` (the
/// decoder it replaced) on valid values, and on the malformed ones both must refuse.
@Suite("JSONReader")
struct JSONReaderTests {
  /// The Go design's fields, decoded the way the codec decoded them before (Foundation).
  struct Reference: Decodable, Equatable {
    var Name: String?
    var Address: String?
    var Weight: Int?
    var Group: String?
    var Metadata: [String: String]?
    var Version: String?
  }

  static let valid: [String] = [
    #"{"Name":"svc","Address":"10.0.0.1:80","Weight":3,"Group":"A"}"#,
    #"{ "Name" : "svc" , "Address":"10.0.0.1:80" ,"Weight": 0 ,"Group":"" }"#,
    "\n\t{\"Name\":\"svc\",\r\n\"Weight\":-7}\n",
    #"{"Name":"a\"b\\c\/d\b\f\n\r\t","Group":"\u00e9\u2028\ud83d\ude00<>&"}"#,
    #"{"Name":"żółw 名前 🐢","Metadata":{"zone":"eu-1","":"empty key","k\u0041":"v"}}"#,
    #"{"Weight":9223372036854775807,"Version":"1.4.2"}"#,
    #"{"Weight":-9223372036854775808}"#,
    #"{"Name":null,"Address":null,"Weight":null,"Group":null,"Metadata":null,"Version":null}"#,
    #"{"Extra":{"nested":[1,2.5,-3e10,true,false,null,"s",{"a":[]}]},"Zone":"x","Name":"n"}"#,
    #"{}"#,
    #"{"Metadata":{}}"#,
  ]

  @Test("valid values decode as Foundation decoded them", arguments: Self.valid)
  func matchesFoundation(_ text: String) throws {
    let reference = try JSONDecoder().decode(Reference.self, from: Data(text.utf8))
    var reader = JSONReader(Array(text.utf8))
    var decoded = Reference()
    try reader.readObject(nullable: false) { reader, key in
      switch key {
      case "Name": decoded.Name = try reader.readOptionalString()
      case "Address": decoded.Address = try reader.readOptionalString()
      case "Weight": decoded.Weight = try reader.readOptionalInt()
      case "Group": decoded.Group = try reader.readOptionalString()
      case "Metadata": decoded.Metadata = try reader.readStringMap()
      case "Version": decoded.Version = try reader.readOptionalString()
      default: try reader.skipValue()
      }
    }
    try reader.end()
    // Foundation reads a null map as absent; the reader as empty: the codec treats both as [:].
    if reference.Metadata == nil, decoded.Metadata == [:] { decoded.Metadata = nil }
    #expect(decoded == reference)
  }

  static let malformed: [String] = [
    "", " ", "null", "[]", "\"s\"", "1", "{", "}", #"{"Name""#, #"{"Name":}"#, #"{"Name":"a",}"#,
    #"{"Name":"a" "Group":"b"}"#, #"{"Name":'a'}"#, #"{Name:"a"}"#, #"{"Name":"a"} x"#,
    #"{"Name":"a"}{"#, "{\"Name\":\"a\u{1}b\"}", #"{"Name":"\x"}"#, #"{"Name":"\u12"}"#,
    #"{"Name":"abc"#, #"{"Weight":"3"}"#, #"{"Weight":3.5}"#, #"{"Weight":3e2}"#,
    #"{"Weight":01}"#, #"{"Weight":-}"#, #"{"Weight":+3}"#, #"{"Weight":9223372036854775808}"#,
    #"{"Weight":true}"#, #"{"Metadata":{"k":1}}"#, #"{"Metadata":{"k":null}}"#,
    #"{"Metadata":["k"]}"#, #"{"Extra":[1,]}"#, #"{"Extra":tru}"#, #"{"Extra":nul}"#,
    #"{"Extra":.5}"#, #"{"Extra":1.}"#, #"{"Extra":1e}"#,
    String(repeating: #"{"a":"#, count: 100) + "1" + String(repeating: "}", count: 100),
  ]

  @Test("malformed values are refused by the codec", arguments: Self.malformed)
  func refused(_ text: String) {
    #expect(throws: RegistryError.self) {
      _ = try InstanceCodec.json.decode(Array(text.utf8), service: "svc", address: "10.0.0.1:80")
    }
  }

  @Test(
    "a repeated field: the last one counts, as in Go's encoding/json (Foundation keeps the first)"
  )
  func repeatedField() throws {
    let text = #"{"Group":"first","Weight":1,"Group":"last"}"#
    let instance = try InstanceCodec.json.decode(Array(text.utf8), service: "s", address: "a:1")
    #expect(instance.group == "last")
  }

  @Test("the codec fills the name and address from the key and keeps every field")
  func codec() throws {
    let text = #"{"Weight":4,"Group":"B","Metadata":{"zone":"z1"},"Version":"7","Other":[1]}"#
    let instance = try InstanceCodec.json.decode(
      Array(text.utf8),
      service: "svc",
      address: "10.0.0.1:80"
    )
    #expect(
      instance
        == ServiceInstance(
          name: "svc",
          address: "10.0.0.1:80",
          weight: 4,
          group: "B",
          metadata: ["zone": "z1"],
          version: "7"
        )
    )
  }

  @Test("etcd's naming format: routing data from our Metadata shape, any other Metadata ignored")
  func naming() throws {
    let ours = #"{"Op":0,"Addr":"10.0.0.1:80","Metadata":{"Weight":2,"Group":"A","Version":"3"}}"#
    let decoded = try InstanceCodec.etcdNaming.decode(
      Array(ours.utf8),
      service: "svc",
      address: "10.0.0.1:80"
    )
    #expect(decoded.weight == 2 && decoded.group == "A" && decoded.version == "3")
    let foreign = #"{"Op":0,"Addr":"10.0.0.1:80","Metadata":{"Weight":"heavy","x":[1]}}"#
    let plain = try InstanceCodec.etcdNaming.decode(
      Array(foreign.utf8),
      service: "svc",
      address: "10.0.0.1:80"
    )
    #expect(plain.weight == 0 && plain.group == "")
    for bad in [#"{"Op":1,"Addr":"10.0.0.1:80"}"#, #"{"Op":0}"#, #"{"Op":0,"Addr":null}"#] {
      #expect(throws: RegistryError.self) {
        _ = try InstanceCodec.etcdNaming.decode(Array(bad.utf8), service: "s", address: "a:1")
      }
    }
  }
}

import RegistryCore
import Testing

@Suite("InstanceCodec")
struct InstanceCodecTests {
  @Test("the JSON codec writes exactly what Go's encoding/json writes")
  func goBytes() {
    let instance = ServiceInstance(
      name: "user-server",
      address: "10.0.0.7:8082",
      weight: 3,
      group: "A"
    )
    let bytes = InstanceCodec.json.encode(instance)
    #expect(
      String(decoding: bytes, as: UTF8.self)
        == #"{"Name":"user-server","Address":"10.0.0.7:8082","Weight":3,"Group":"A"}"#
    )
  }

  @Test("optional fields follow, metadata keys sorted, strings escaped as Go does")
  func goOptionalFields() {
    let instance = ServiceInstance(
      name: "svc",
      address: "[::1]:80",
      weight: 0,
      group: "",
      metadata: ["z": "last", "a": "<b>&\"\\\n\u{2028}\u{01}é"],
      version: "1.4.2"
    )
    let text = String(decoding: InstanceCodec.json.encode(instance), as: UTF8.self)
    #expect(
      text
        == #"{"Name":"svc","Address":"[::1]:80","Weight":0,"Group":"","Metadata":{"a":"\u003cb\u003e\u0026\"\\\n\u2028\u0001é","z":"last"},"Version":"1.4.2"}"#
    )
  }

  @Test("JSON round-trips every field", arguments: [InstanceCodec.json, InstanceCodec.etcdNaming])
  func roundTrip(_ codec: InstanceCodec) throws {
    let instance = ServiceInstance(
      name: "svc",
      address: "10.0.0.1:80",
      weight: 5,
      group: "B",
      metadata: ["k": "v"],
      version: "2"
    )
    let decoded = try codec.decode(codec.encode(instance), service: "svc", address: "10.0.0.1:80")
    #expect(decoded == instance)
  }

  @Test("a Go value with unknown fields decodes; missing fields come from the key")
  func unknownFields() throws {
    let value = #"{"Address":"10.0.0.1:80","Weight":2,"Extra":{"nested":[1,2]},"Zone":"x"}"#
    let decoded = try InstanceCodec.json.decode(
      Array(value.utf8),
      service: "svc",
      address: "10.0.0.1:80"
    )
    #expect(decoded == ServiceInstance(name: "svc", address: "10.0.0.1:80", weight: 2))
  }

  @Test("etcd's naming format is written as grpc-go's resolver reads it")
  func etcdNaming() throws {
    let instance = ServiceInstance(name: "svc", address: "10.0.0.1:80", weight: 2, group: "A")
    let text = String(decoding: InstanceCodec.etcdNaming.encode(instance), as: UTF8.self)
    #expect(text == #"{"Op":0,"Addr":"10.0.0.1:80","Metadata":{"Weight":2,"Group":"A"}}"#)
    let foreign = #"{"Op":0,"Addr":"10.0.0.2:80","Metadata":"opaque"}"#
    let decoded = try InstanceCodec.etcdNaming.decode(
      Array(foreign.utf8),
      service: "svc",
      address: "10.0.0.2:80"
    )
    #expect(decoded == ServiceInstance(name: "svc", address: "10.0.0.2:80", weight: 0))
  }

  @Test(
    "malformed values are a typed error naming the key",
    arguments: [
      "", "not json", "[1,2]", #"{"Name":"svc","Address":"10.0.0.1:80","Weight":"three"}"#,
      #"{"Name":"svc","Address":"0.0.0.0:80"}"#, #"{"Name":"svc","Address":"no-port"}"#,
      #"{"Name":"svc","Address":"10.0.0.1:80","Weight":-4}"#, "{\"Name\":\"svc\",\"Addr",
    ]
  )
  func malformed(_ value: String) {
    do {
      _ = try InstanceCodec.json.decode(Array(value.utf8), service: "svc", address: "10.0.0.1:80")
      Issue.record("decoding '\(value)' should fail")
    } catch {
      #expect(error.code == .malformedValue)
      #expect(error.message.contains("svc/10.0.0.1:80"))
    }
  }

  @Test("codecs are found by name")
  func named() {
    #expect(InstanceCodec.named("json")?.name == "json")
    #expect(InstanceCodec.named("etcd-naming")?.name == "etcd-naming")
    #expect(InstanceCodec.named("xml") == nil)
  }
}

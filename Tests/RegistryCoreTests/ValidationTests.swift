import RegistryCore
import Testing

@Suite("Validation and keys")
struct ValidationTests {
  @Test(
    "valid addresses parse",
    arguments: [
      ("10.0.0.7:8082", "10.0.0.7", 8082, false), ("[::1]:80", "::1", 80, true),
      ("[fd00::7]:65535", "fd00::7", 65535, true),
      ("user-1.internal:1", "user-1.internal", 1, false),
      ("localhost:8080", "localhost", 8080, false),
      ("[::ffff:10.0.0.1]:9", "::ffff:10.0.0.1", 9, true),
    ]
  )
  func validAddresses(_ text: String, _ host: String, _ port: Int, _ isIPv6: Bool) throws {
    let address = try ServiceAddress(parsing: text)
    #expect(address.host == host)
    #expect(address.port == port)
    #expect(address.isIPv6 == isIPv6)
    #expect(address.description == text)
  }

  @Test(
    "invalid addresses are refused with a reason",
    arguments: [
      "", "host", ":80", "host:", "host:0", "host:65536", "host:-1", "host:8o", "::1:80", "[::1]80",
      "[::1:80", "[zz::1]:80", "300.1.1.1:80", "bad host:80", "-host:80", "a..b:80",
      "[1:2:3:4:5:6:7:8:9]:80",
    ]
  )
  func invalidAddresses(_ text: String) {
    do {
      _ = try ServiceAddress(parsing: text)
      Issue.record("'\(text)' should be refused")
    } catch {
      #expect(error.code == .invalidArgument)
      #expect(error.field == "address")
      #expect(error.message.contains("host:port"))
    }
  }

  @Test(
    "unspecified hosts are refused with advice",
    arguments: ["0.0.0.0:80", "[::]:80", "[0:0::0]:80"]
  )
  func unspecified(_ address: String) {
    do {
      try ServiceInstance(name: "svc", address: address).validate()
      Issue.record("\(address) should be refused")
    } catch {
      #expect(error.field == "address")
      #expect(error.message.contains("unspecified"))
    }
  }

  @Test(
    "service names follow the rule",
    arguments: [
      ("user-server", true), ("a", true), ("v1.users_api", true), ("", false), ("a/b", false),
      ("a b", false), (String(repeating: "x", count: 253), true),
      (String(repeating: "x", count: 254), false),
      ("ünicode", false),
    ]
  )
  func names(_ name: String, _ valid: Bool) {
    let result = Result { () throws(RegistryError) in
      try ServiceInstance.validate(serviceName: name)
    }
    switch result {
    case .success: #expect(valid, "'\(name)' should be refused")
    case .failure(let error):
      #expect(!valid, "'\(name)' should be accepted: \(error)")
      #expect(error.field == "name")
    }
  }

  @Test("bounds on weight, metadata and version")
  func bounds() {
    let base = ServiceInstance(name: "svc", address: "10.0.0.1:80")
    var tooHeavy = base
    tooHeavy.weight = ServiceInstance.Limits.maximumWeight + 1
    var tooMuchMetadata = base
    tooMuchMetadata.metadata = Dictionary(uniqueKeysWithValues: (0 ... 64).map { ("k\($0)", "v") })
    var longValue = base
    longValue.metadata = ["k": String(repeating: "v", count: 4097)]
    var emptyKey = base
    emptyKey.metadata = ["": "v"]
    var badVersion = base
    badVersion.version = "1.0\n"
    for (instance, field) in [
      (tooHeavy, "weight"), (tooMuchMetadata, "metadata"), (longValue, "metadata"),
      (emptyKey, "metadata"), (badVersion, "version"),
    ] {
      #expect(throws: RegistryError.self) { try instance.validate() }
      do { try instance.validate() } catch { #expect(error.field == field) }
    }
    #expect(throws: Never.self) { try base.validate() }
  }

  @Test("keys: layout, trailing slash for listing, parsing")
  func keys() throws {
    let keyspace = RegistryKeyspace.default
    #expect(
      keyspace.key(service: "user-server", address: "10.0.0.7:8082")
        == "/micro/user-server/10.0.0.7:8082"
    )
    #expect(keyspace.servicePrefix("user") == "/micro/user/")
    #expect(!"/micro/user-server/1.2.3.4:5".hasPrefix(keyspace.servicePrefix("user")))
    let parsed = try #require(keyspace.parse("/micro/user-server/[::1]:80"))
    #expect(parsed.service == "user-server")
    #expect(parsed.address == "[::1]:80")
    #expect(keyspace.parse("/other/user-server/1.2.3.4:5") == nil)
    #expect(keyspace.parse("/micro/user-server") == nil)
    #expect(try RegistryKeyspace(prefix: "services/").prefix == "/services")
    #expect(
      try RegistryKeyspace(prefix: "/a/b//").key(service: "s", address: "h:1") == "/a/b/s/h:1"
    )
    #expect(throws: RegistryError.self) { try RegistryKeyspace(prefix: "has space") }
  }

  @Test("snapshot differences produce exactly the changes")
  func differences() {
    let a = ServiceInstance(name: "s", address: "h:1")
    let b = ServiceInstance(name: "s", address: "h:2")
    let b2 = ServiceInstance(name: "s", address: "h:2", weight: 9)
    let c = ServiceInstance(name: "s", address: "h:3")
    let old = RegistrySnapshot(service: "s", instances: [a, b], revision: 4)
    let new = RegistrySnapshot(service: "s", instances: [b2, c], revision: 9)
    #expect(
      old.changes(to: new) == [
        .removed(a, revision: 9), .updated(b2, revision: 9), .added(c, revision: 9),
      ]
    )
    var applied = old
    for event in old.changes(to: new) { applied = applied.applying(event) }
    #expect(applied == new)
    #expect(new.changes(to: new).isEmpty)
  }
}

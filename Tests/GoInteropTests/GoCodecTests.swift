import Etcd
import EtcdHarness
import EtcdRegistry
import Foundation
import RegistryCore
import RegistryTesting
import Testing

/// The instance codecs against Go itself: `go-interop json` marshals the same instances with
/// Go's `encoding/json` and reads Swift's bytes back (issue #17); `go-interop naming-call` dials
/// through etcd's grpc-go resolver, which reads what the registry writes with `.etcdNaming`.
@Suite("GoCodecTests", .serialized, .timeLimit(.minutes(10)))
struct GoCodecTests {
  /// One row of the table.
  struct Case: Sendable {
    var id: String
    var instance: ServiceInstance
    init(_ id: String, _ instance: ServiceInstance) {
      self.id = id
      self.instance = instance
    }
  }

  /// The table. Validation allows only `A-Z a-z 0-9 . _ -` in names and groups, so names and
  /// groups carry those (and the empty group); the odd characters go where validation lets them
  /// through: the version (anything but control characters) and metadata keys and values
  /// (anything). The address is a valid `host:port`: IPv4, IPv6 and a host name.
  static let cases: [Case] = [
    // The four fixed fields, nothing optional.
    Case(
      "plain",
      ServiceInstance(name: "user-server", address: "10.0.0.7:8082", weight: 3, group: "A")
    ),
    // Weight 0 (the default weight), the empty group, an IPv6 address, every name character.
    Case(
      "zero",
      ServiceInstance(name: "a.b_c-XYZ09", address: "[::1]:8080", weight: 0, group: "")
    ),
    // Weight 1, a host name, a group of every allowed character.
    Case(
      "one",
      ServiceInstance(name: "svc", address: "user-1.internal:9000", weight: 1, group: "zone-1.b_X")
    ),
    // The largest weight validation allows.
    Case(
      "max-weight",
      ServiceInstance(name: "svc", address: "10.0.0.1:1", weight: 1_000_000, group: "g")
    ),
    // A weight past validation's limit: written like any other, refused when read back.
    Case(
      "huge-weight",
      ServiceInstance(name: "svc", address: "10.0.0.1:2", weight: 2_000_000_000, group: "g")
    ),
    // <, > and & (Go writes \u003c, \u003e, \u0026) in the version and metadata keys and values.
    Case(
      "html",
      ServiceInstance(
        name: "web",
        address: "10.0.0.2:80",
        weight: 2,
        group: "B",
        metadata: ["<k>": "<script>alert('x')</script>", "a&b": "&amp; > <"],
        version: "1.0<rc>&beta"
      )
    ),
    // U+2028 and U+2029 (Go writes \u2028, \u2029) in the version and metadata.
    Case(
      "separators",
      ServiceInstance(
        name: "svc",
        address: "10.0.0.3:80",
        weight: 4,
        group: "",
        metadata: ["line\u{2028}": "\u{2029}para\u{2028}graph"],
        version: "v\u{2028}1\u{2029}"
      )
    ),
    // Non-ASCII, written raw: é precomposed and decomposed (kept byte for byte), 日本, emoji
    // outside the BMP (raw, not surrogate escapes), in the version and metadata.
    Case(
      "unicode",
      ServiceInstance(
        name: "svc",
        address: "[fd00::7]:8082",
        weight: 5,
        group: "eu",
        metadata: [
          "zone": "é", "日本": "東京", "emoji😀": "🚀🇫🇷", "cafe\u{301}": "e\u{301}",
        ],
        version: "β-2 日本"
      )
    ),
    // Quotes and backslashes; control characters Go writes by name (\t \n \r) or as \u00XX;
    // DEL, which Go leaves raw; in the version (no controls allowed there) and metadata.
    Case(
      "quotes-controls",
      ServiceInstance(
        name: "svc",
        address: "10.0.0.4:80",
        weight: 6,
        group: "q",
        metadata: [
          "q\"uote": "a \"b\" \\ c\\\\", "controls": "\u{0}\u{1}\u{7}\t\n\r\u{b}\u{1b}\u{1f}\u{7f}",
          "tab\tkey\n": "x",
        ],
        version: "say \"hi\" \\o/"
      )
    ),
    // Backspace and form feed in a metadata value: Go 1.22 and later writes \b and \f, as Swift
    // does; older Go writes \u0008 and \u000c (the test expects that form from an older Go).
    Case(
      "backspace-formfeed",
      ServiceInstance(
        name: "svc",
        address: "10.0.0.5:80",
        weight: 7,
        group: "",
        metadata: ["bf": "\u{8}x\u{c}"]
      )
    ),
    // Map keys in Go's order, by bytes: digits, upper case, _, lower case, ~, then "e\u{301}x"
    // before "f" (Swift's String order puts it after), é, CJK, emoji.
    Case(
      "key-order",
      ServiceInstance(
        name: "svc",
        address: "10.0.0.6:80",
        weight: 8,
        group: "",
        metadata: [
          "b": "1", "B": "2", "a": "3", "_": "4", "~": "5", "é": "6", "e\u{301}x": "7", "f": "8",
          "😀": "9", "日本": "10", "0": "11",
        ]
      )
    ),
    // An empty metadata value, and a version with no metadata.
    Case(
      "empty-value",
      ServiceInstance(
        name: "svc",
        address: "10.0.0.8:80",
        weight: 9,
        group: "C",
        metadata: ["empty": "", "k": "v"]
      )
    ),
    Case(
      "version-only",
      ServiceInstance(
        name: "svc",
        address: "10.0.0.9:80",
        weight: 10,
        group: "C",
        version: "2.0.1"
      )
    ),
    // The longest name and group validation allows.
    Case(
      "long",
      ServiceInstance(
        name: String(repeating: "n", count: 253),
        address: "10.0.0.10:65535",
        weight: 11,
        group: String(repeating: "g", count: 253),
        metadata: ["long": String(repeating: "日", count: 1_000)]
      )
    ),
  ]

  static let codecs = [InstanceCodec.json, InstanceCodec.etcdNaming]

  /// What Go did with one case (see GoInterop/src/grpcinterop/cmd/go-interop/codec.go).
  struct GoResult {
    /// Go's `json.Marshal` of the struct the codec mirrors.
    var goBytes: [UInt8]
    /// Go's `json.Marshal` of the Go design's untagged struct (json codec only).
    var legacyBytes: [UInt8]
    /// Why Go could not read Swift's bytes; empty when it could.
    var decodeError: String
    /// What Go read from Swift's bytes, as ``GoCodecTests/fields(_:)`` writes them.
    var decoded: [String]
    /// Go's `json.Marshal` of what it read.
    var remarshalled: [UInt8]
  }

  /// One run of `go-interop json` over the table.
  struct GoRun {
    /// `runtime.Version()`, such as `go1.19.8`.
    var version: String
    var results: [String: GoResult]

    /// Whether this Go writes backspace and form feed as `\b` and `\f` (Go 1.22 and later).
    var namesBackspaceAndFormFeed: Bool {
      guard self.version.hasPrefix("go1.") else { return true }  // devel builds are new
      let minor = self.version.dropFirst(4).prefix(while: \.isNumber)
      return (Int(minor) ?? 0) >= 22
    }

    /// The bytes this Go writes where Swift wrote `swift`: the same, but for backspace and form
    /// feed, which Go before 1.22 writes as `\u0008` and `\u000c`.
    func expectedGoBytes(for swift: [UInt8]) -> [UInt8] {
      if self.namesBackspaceAndFormFeed { return swift }
      var result: [UInt8] = []
      var index = 0
      while index < swift.count {
        // A backslash appears only in a string, and starts a two-byte escape or \uXXXX.
        guard swift[index] == UInt8(ascii: "\\"), index + 1 < swift.count else {
          result.append(swift[index])
          index += 1
          continue
        }
        switch swift[index + 1] {
        case UInt8(ascii: "b"): result.append(contentsOf: Array(#"\u0008"#.utf8))
        case UInt8(ascii: "f"): result.append(contentsOf: Array(#"\u000c"#.utf8))
        default: result.append(contentsOf: swift[index ... index + 1])
        }
        index += 2
      }
      return result
    }

    func result(_ id: String) throws -> GoResult {
      guard let result = self.results[id] else { throw GoInteropError("no Go result for \(id)") }
      return result
    }
  }

  static func hex(_ bytes: some Sequence<UInt8>) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var text: [UInt8] = []
    for byte in bytes {
      text.append(digits[Int(byte >> 4)])
      text.append(digits[Int(byte & 0xF)])
    }
    return String(decoding: text, as: UTF8.self)
  }

  static func unhex(_ text: Substring) throws -> [UInt8] {
    func nibble(_ digit: UInt8) throws -> UInt8 {
      switch digit {
      case UInt8(ascii: "0") ... UInt8(ascii: "9"): return digit - UInt8(ascii: "0")
      case UInt8(ascii: "a") ... UInt8(ascii: "f"): return digit - UInt8(ascii: "a") + 10
      default: throw GoInteropError("not hex: \(text.prefix(40))")
      }
    }
    let digits = Array(text.utf8)
    guard digits.count % 2 == 0 else { throw GoInteropError("odd hex: \(text.prefix(40))") }
    return try stride(from: 0, to: digits.count, by: 2).map {
      try nibble(digits[$0]) << 4 | nibble(digits[$0 + 1])
    }
  }

  /// An instance's fields as the Go program reads and writes them: strings as hex of their
  /// UTF-8 (so comparing them is byte-exact; `String ==` equates canonically equivalent
  /// strings), the weight in decimal, metadata as `key=value` hex pairs sorted by key bytes.
  static func fields(_ instance: ServiceInstance) -> [String] {
    let keys = instance.metadata.keys.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
    let metadata = keys.map { "\(hex($0.utf8))=\(hex((instance.metadata[$0] ?? "").utf8))" }
    return [
      hex(instance.name.utf8), hex(instance.address.utf8), String(instance.weight),
      hex(instance.group.utf8), hex(instance.version.utf8), metadata.joined(separator: ","),
    ]
  }

  static func goName(_ codec: InstanceCodec) -> String {
    codec.name == "json" ? "json" : "naming"
  }

  /// The bytes as text for a failure message: control characters and U+2028/U+2029 (which a
  /// terminal shows as line breaks) as `⟨U+XXXX⟩`.
  static func text(_ bytes: [UInt8]) -> String {
    var text = ""
    for scalar in String(decoding: bytes, as: UTF8.self).unicodeScalars {
      if scalar.value < 0x20 || scalar.value == 0x7F || scalar.value == 0x2028
        || scalar.value == 0x2029
      {
        let digits = String(scalar.value, radix: 16, uppercase: true)
        text += "⟨U+\(String(repeating: "0", count: max(0, 4 - digits.count)))\(digits)⟩"
      } else {
        text.unicodeScalars.append(scalar)
      }
    }
    return text
  }

  /// Waits until `process` printed a whole line (newline included: a long line may arrive in
  /// pieces) starting with `prefix`, and returns the rest of it.
  static func completeLine(
    of process: ChildProcess,
    startingWith prefix: String,
    within timeout: Duration
  ) async throws -> String {
    var found: String?
    try await waitUntil(
      "go-interop prints a line starting with '\(prefix)' (it printed: \(process.output.suffix(2_000)))",
      within: timeout,
      pollEvery: .milliseconds(20)
    ) {
      let lines = process.output.split(separator: "\n", omittingEmptySubsequences: false)
      if let line = lines.dropLast().first(where: { $0.hasPrefix(prefix) }) {
        found = String(line.dropFirst(prefix.count))
        return true
      }
      if !process.isRunning { throw GoInteropError("go-interop exited: \(process.output)") }
      return false
    }
    return found ?? ""
  }

  /// Runs `go-interop json` over the table with Swift's bytes from `codec`.
  static func runGo(_ codec: InstanceCodec) async throws -> GoRun {
    let process = try await GoInteropBinary.start(["json"])
    do {
      let version = try await process.line(startingWith: "GO ", within: .seconds(60))
      for item in self.cases {
        let line =
          [item.id, self.goName(codec)] + self.fields(item.instance)
          + [self.hex(codec.encode(item.instance))]
        try process.send(line.joined(separator: "\t"))
      }
      var results: [String: GoResult] = [:]
      for item in self.cases {
        let line = try await self.completeLine(
          of: process,
          startingWith: "RESULT \(item.id)\t",
          within: .seconds(30)
        )
        let columns = line.split(separator: "\t", omittingEmptySubsequences: false)
        guard columns.count == 10 else {
          throw GoInteropError("\(item.id): Go printed \(columns.count) columns, want 10: \(line)")
        }
        results[item.id] = GoResult(
          goBytes: try self.unhex(columns[0]),
          legacyBytes: try self.unhex(columns[1]),
          decodeError: self.text(try self.unhex(columns[2])),
          decoded: columns[3 ... 8].map(String.init),
          remarshalled: try self.unhex(columns[9])
        )
      }
      await process.stop()
      return GoRun(version: version, results: results)
    } catch {
      await process.stop()
      throw error
    }
  }

  // Catches: Swift writing any byte other than Go's encoding/json writes for the same struct (a
  // field out of order, missing or extra, an escape Go writes differently, map keys out of Go's
  // byte order).
  @Test("Swift writes exactly the bytes Go's encoding/json writes", arguments: codecs)
  func swiftWritesGoBytes(_ codec: InstanceCodec) async throws {
    let run = try await Self.runGo(codec)
    for item in Self.cases {
      let result = try run.result(item.id)
      let swift = codec.encode(item.instance)
      if result.goBytes != run.expectedGoBytes(for: swift) {
        Issue.record(
          "\(item.id) (\(run.version)): Go wrote \(Self.text(result.goBytes)), Swift wrote \(Self.text(swift))"
        )
      }
    }
  }

  // Catches: a Swift reader that misreads what Go wrote (an escape decoded wrongly, a field
  // dropped or taken from the key instead of the value, metadata changed), or that lets a weight
  // past validation's limit through.
  @Test("Swift reads every instance back from Go's bytes", arguments: codecs)
  func swiftReadsGoBytes(_ codec: InstanceCodec) async throws {
    let run = try await Self.runGo(codec)
    for item in Self.cases {
      let result = try run.result(item.id)
      // The key's service and address differ from the value's where the value carries them, so
      // a field the reader drops (and fills from the key) shows.
      let service = codec.name == "json" ? "key-service" : item.instance.name
      Self.check(item, decoding: result.goBytes, with: codec, service: service, as: item.instance)
      if codec.name == "json" {
        // The Go design's untagged struct: "Metadata":null when empty, no Version.
        var legacy = item.instance
        legacy.version = ""
        Self.check(item, decoding: result.legacyBytes, with: codec, service: service, as: legacy)
      }
    }
  }

  static func check(
    _ item: Case,
    decoding bytes: [UInt8],
    with codec: InstanceCodec,
    service: String,
    as expected: ServiceInstance
  ) {
    do {
      let decoded = try codec.decode(bytes, service: service, address: "192.0.2.1:9")
      if expected.weight > ServiceInstance.Limits.maximumWeight {
        Issue.record("\(item.id): a weight of \(expected.weight) was accepted")
      } else if Self.fields(decoded) != Self.fields(expected) || decoded != expected {
        Issue.record("\(item.id): \(Self.text(bytes)) read as \(Self.fields(decoded))")
      }
    } catch {
      if expected.weight > ServiceInstance.Limits.maximumWeight {
        #expect(error.code == .malformedValue && error.field == "weight", "\(item.id): \(error)")
      } else {
        Issue.record("\(item.id): \(Self.text(bytes)) was refused: \(error)")
      }
    }
  }

  // Catches: Swift bytes that Go's encoding/json refuses or reads differently (a wrong escape,
  // an unknown field, a key Go matches only case-insensitively, a number Go cannot read as an
  // int, a Metadata shape etcd's naming value does not have).
  @Test("Go's encoding/json reads every instance back from Swift's bytes", arguments: codecs)
  func goReadsSwiftBytes(_ codec: InstanceCodec) async throws {
    let run = try await Self.runGo(codec)
    for item in Self.cases {
      let result = try run.result(item.id)
      let swift = codec.encode(item.instance)
      guard result.decodeError.isEmpty else {
        Issue.record("\(item.id): Go could not read \(Self.text(swift)): \(result.decodeError)")
        continue
      }
      // The naming value carries no name: the resolver takes the service from the key.
      var expected = item.instance
      if codec.name != "json" { expected.name = "" }
      #expect(result.decoded == Self.fields(expected), "\(item.id): Go read \(Self.text(swift))")
      if result.remarshalled != run.expectedGoBytes(for: swift) {
        Issue.record(
          "\(item.id): Go wrote back \(Self.text(result.remarshalled)) for \(Self.text(swift))"
        )
      }
    }
  }

  /// `go-interop naming-call`, driven one command at a time.
  struct NamingClient {
    let process: ChildProcess
    private var command = 0

    init(_ process: ChildProcess) { self.process = process }

    /// One round of GetById calls: the addresses that answered (sorted) and the failed calls.
    mutating func call() async throws -> (answered: [String], failed: Int, error: String) {
      self.command += 1
      try self.process.send("call")
      let line = try await GoCodecTests.completeLine(
        of: self.process,
        startingWith: "ROUND \(self.command)\t",
        within: .seconds(120)
      )
      let columns = line.split(separator: "\t", omittingEmptySubsequences: false)
      guard columns.count == 3, let failed = Int(columns[1]) else {
        throw GoInteropError("naming-call printed '\(line)'")
      }
      return (columns[0].split(separator: ",").map(String.init), failed, String(columns[2]))
    }

    /// The endpoints under the target as etcd's endpoints manager reads them, as JSON.
    mutating func list() async throws -> String {
      self.command += 1
      try self.process.send("list")
      return try await GoCodecTests.completeLine(
        of: self.process,
        startingWith: "LIST \(self.command)\t",
        within: .seconds(30)
      )
    }

    /// Calls rounds until one is answered by exactly `addresses` with no failure, then checks
    /// that the next round is too.
    mutating func waitForAnswers(from addresses: [String]) async throws {
      var last: (answered: [String], failed: Int, error: String) = ([], 0, "")
      try await waitUntil(
        "grpc-go through etcd's resolver is answered by \(addresses) (last round: \(last))",
        within: .seconds(30),
        pollEvery: .milliseconds(100)
      ) {
        last = try await self.call()
        return last.answered == addresses && last.failed == 0
      }
      let next = try await self.call()
      #expect(next.answered == addresses && next.failed == 0, "\(next)")
    }
  }

  /// Two grpc-go servers registered as `user-server` by an `EtcdServiceRegistry` writing
  /// `.etcdNaming` values under a fresh prefix of a new etcd.
  struct NamingSetup {
    var endpoint: String
    /// `<prefix>/user-server`: the resolver's target and the keys' prefix.
    var target: String
    var registry: EtcdServiceRegistry
    var instances: [ServiceInstance]

    /// `go-interop naming-call` for this target with `balancer`.
    func arguments(balancer: String) -> [String] {
      ["naming-call", "-etcd", self.endpoint, "-target", self.target, "-balancer", balancer]
    }

    /// What `list` prints for `instances`: etcd's endpoints code reads Metadata into an
    /// interface{}, so Go writes it back with its keys sorted and the weight as a number.
    func listed(_ instances: [ServiceInstance]) -> String {
      let entries = instances.sorted { $0.address < $1.address }.map { instance in
        let zone = instance.metadata["zone", default: ""]
          .replacingOccurrences(of: "<", with: #"\u003c"#)
          .replacingOccurrences(of: ">", with: #"\u003e"#)
        return #"{"Key":"\#(self.target)/\#(instance.address)","Addr":"\#(instance.address)","#
          + #""Metadata":{"Group":"\#(instance.group)","Metadata":{"zone":"\#(zone)"},"#
          + #""Version":"\#(instance.version)","Weight":\#(instance.weight)}}"#
      }
      return "[" + entries.joined(separator: ",") + "]"
    }
  }

  static func withNamingSetup(_ body: (NamingSetup) async throws -> Void) async throws {
    try await withEtcdCluster { cluster in
      try await withGoServer { first in
        try await withGoServer { second in
          guard let endpoint = cluster.endpoints.first else {
            throw GoInteropError("etcd has no member")
          }
          let prefix = "/go-naming-\(UUID().uuidString.prefix(8))"
          let configuration = EtcdServiceRegistry.Config.defaults {
            $0.etcd = .defaults { $0.endpoints = cluster.endpoints }
            $0.keyPrefix = prefix
            $0.codec = .etcdNaming
          }
          try await withEtcdServiceRegistry(config: configuration, logger: testLogger()) {
            registry in
            let instances = [first.address, second.address].enumerated().map { index, address in
              ServiceInstance(
                name: "user-server",
                address: address,
                weight: index + 2,
                group: "A",
                metadata: ["zone": "日本<\(index)>"],
                version: "1.\(index)"
              )
            }
            for instance in instances { try await registry.register(instance) }
            try await body(
              NamingSetup(
                endpoint: endpoint,
                target: "\(prefix)/user-server",
                registry: registry,
                instances: instances
              )
            )
          }
        }
      }
    }
  }

  // Catches: naming values that etcd's own endpoints code cannot read (grpc-go then reaches no
  // server) or reads without the weight, group, version or metadata, and a deregistration that
  // grpc-go's resolver never sees (calls keep going to the deregistered server).
  @Test(
    "grpc-go (pick_first) through etcd's resolver calls what the registry writes with .etcdNaming, and leaves a deregistered instance"
  )
  func namingResolverPickFirst() async throws {
    try await Self.withNamingSetup { setup in
      let addresses = setup.instances.map(\.address)
      var client = NamingClient(
        try await GoInteropBinary.start(setup.arguments(balancer: "pick_first"))
      )
      do {
        _ = try await Self.completeLine(
          of: client.process,
          startingWith: "READY",
          within: .seconds(60)
        )
        #expect(try await client.list() == setup.listed(setup.instances))

        // pick_first sends every call to one of the two; deregistering that one moves them.
        let round = try await client.call()
        guard round.failed == 0, round.answered.count == 1, let used = round.answered.first,
          let left = addresses.first(where: { $0 != used })
        else {
          throw GoInteropError("the first round through etcd's resolver: \(round)")
        }
        try await setup.registry.deregister(service: "user-server", address: used)
        try await client.waitForAnswers(from: [left])
        let remaining = setup.instances.filter { $0.address == left }
        #expect(try await client.list() == setup.listed(remaining))
        await client.process.stop()

        // A new resolver reads only the instance left.
        client = NamingClient(
          try await GoInteropBinary.start(setup.arguments(balancer: "pick_first"))
        )
        _ = try await Self.completeLine(
          of: client.process,
          startingWith: "READY",
          within: .seconds(60)
        )
        let fresh = try await client.call()
        #expect(fresh.answered == [left] && fresh.failed == 0, "\(fresh)")
        await client.process.stop()
      } catch {
        await client.process.stop()
        throw error
      }
    }
  }

  // Catches: a change in how grpc-go's round_robin takes the registry's naming values through
  // etcd's resolver: today it crashes on the JSON-object Metadata (a known issue, recorded as
  // such); the day both servers answer, the known issue stops reproducing and this test fails,
  // to be turned into a plain assertion.
  @Test("grpc-go (round_robin) through etcd's resolver crashes on the naming Metadata object")
  func namingResolverRoundRobin() async throws {
    try await Self.withNamingSetup { setup in
      let addresses = setup.instances.map(\.address).sorted()
      try await withKnownIssue(
        "grpc-go 1.33's round_robin keys a map by resolver.Address, whose Metadata etcd's resolver fills with the JSON object (etcd-io/etcd#19700)"
      ) {
        let run = try await Self.runOnce(setup.arguments(balancer: "round_robin"), input: "call\n")
        guard run.status == 0 else {
          let panic = run.stderr.split(separator: "\n").first { $0.hasPrefix("panic:") }
          throw GoInteropError(
            "go-interop exited (\(run.status)): \(panic.map(String.init) ?? String(run.stderr.suffix(500)))"
          )
        }
        let round = run.stdout.split(separator: "\n").first { $0.hasPrefix("ROUND 1\t") }
        #expect(round == "ROUND 1\t\(addresses.joined(separator: ","))\t0\t", "\(run.stdout)")
      } matching: { issue in
        "\(issue.error.map { "\($0)" } ?? "")".contains("hash of unhashable type")
      }
    }
  }

  /// Runs `go-interop` with `input` on its stdin to the end; returns its exit status and output.
  static func runOnce(
    _ arguments: [String],
    input: String,
    within timeout: Duration = .seconds(120)
  ) async throws -> (status: Int32, stdout: String, stderr: String) {
    let binary = try await GoInteropBinary.path()
    let run = try await Command.run(binary, arguments, input: input, timeout: timeout)
    guard !run.timedOut else {
      throw GoInteropError(
        "go-interop \(arguments[0]) did not exit within \(timeout): \(run.stderr)"
      )
    }
    return (run.status, run.stdout, run.stderr)
  }
}

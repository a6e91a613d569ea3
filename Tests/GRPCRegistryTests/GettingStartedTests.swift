import EtcdRegistry
import Foundation
import GRPCCore
import GRPCRegistry
import Logging
import RegistryCore
import ServiceLifecycle
import Testing
import UserService

// The code of the DocC article GettingStarted.md, compiled and run here. The last test checks
// that every Swift block of the article appears in this file, line for line (indentation aside),
// so the article cannot drift from code that builds (and likewise SecuringWithTLS.md against
// TLSTests.swift).

/// The getting-started story on the in-memory registry: a server registers, a client dials
/// `registry://user-server` and routes a call to group A.
private func gettingStarted(logger: Logger) async throws -> String {
  let registry = InMemoryRegistry()  // or an EtcdServiceRegistry, see below

  let server = RegisteredServer(
    config: RegisteredServer.Config(name: "user-server") {
      $0.port = 0  // any free port; the bound address is what gets registered
      $0.weight = 3
      $0.group = "A"
    },
    services: [UserDirectory(name: "user-server in group A")],
    registry: registry,
    logger: logger
  )

  return try await withThrowingTaskGroup(of: Void.self) { group in
    group.addTask { try await server.run() }
    let instance = try await server.registeredInstance()
    logger.info("registered", metadata: ["address": "\(instance.address)"])

    let transport = RegistryClientTransport(
      target: try RegistryTarget(parsing: "registry://user-server"),
      registry: registry,
      logger: logger
    )
    let name = try await withGRPCClient(transport: transport) { client in
      let users = User_UserMesService.Client(wrapping: client)
      let reply = try await withRegistryGroup("A") {
        try await users.getById(.with { $0.id = 1 })
      }
      return reply.user.name
    }

    server.beginGracefulShutdown()  // deregister, drain, stop
    try await group.waitForAll()
    return name
  }
}

/// The production shape: the registry on etcd and the server in a `ServiceGroup` that shuts
/// down on SIGTERM. Compiled, not run (it needs etcd and a signal).
@Sendable
private func productionServer(logger: Logger) async throws {
  let registry = try EtcdServiceRegistry(
    config: .defaults {
      $0.etcd.endpoints = ["10.0.0.2:2379", "10.0.0.3:2379", "10.0.0.4:2379"]
      $0.leaseTTL = .seconds(10)
    },
    logger: logger
  )
  let server = RegisteredServer(
    config: RegisteredServer.Config(name: "user-server") {
      $0.host = "0.0.0.0"
      $0.port = 8082
      $0.advertisedAddress = "10.0.0.7:8082"
      $0.weight = 3
      $0.group = "A"
    },
    services: [UserDirectory(name: "10.0.0.7:8082")],
    registry: registry,
    logger: logger
  )
  let group = ServiceGroup(
    configuration: ServiceGroupConfiguration(
      services: [
        // Shut down in reverse order: the server deregisters while the registry still runs.
        .init(service: registry),
        .init(service: server),
      ],
      gracefulShutdownSignals: [.sigterm, .sigint],
      logger: logger
    )
  )
  try await group.run()
}

@Suite("getting started article", .timeLimit(.minutes(1)))
struct GettingStartedTests {
  @Test("the article's story runs: register, dial registry://user-server, route to group A")
  func story() async throws {
    let name = try await gettingStarted(logger: testLogger())
    #expect(name == "user-server in group A")
    // The production example is compiled; referencing it keeps it from being dead code.
    let production: @Sendable (Logger) async throws -> Void = productionServer
    _ = production
  }

  @Test(
    "every Swift block of an article is code of its test file",
    arguments: [
      ("GettingStarted.md", "GettingStartedTests.swift", 5),
      ("SecuringWithTLS.md", "TLSTests.swift", 3),
    ]
  )
  func articleMatchesCode(article name: String, code file: String, blocksAtLeast: Int) throws {
    let testsDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    let root = testsDirectory.deletingLastPathComponent().deletingLastPathComponent()
    let article = try String(
      contentsOf: root.appendingPathComponent("Sources/GRPCRegistry/Documentation.docc/\(name)"),
      encoding: .utf8
    )
    let code = try String(
      contentsOf: testsDirectory.appendingPathComponent(file),
      encoding: .utf8
    )
    let codeLines = Self.normalizedLines(code)
    let blocks = Self.swiftBlocks(in: article)
    #expect(blocks.count >= blocksAtLeast, "\(name) has \(blocks.count) Swift blocks")
    for block in blocks {
      let lines = Self.normalizedLines(block)
      let found = (0 ... max(0, codeLines.count - lines.count)).contains { start in
        Array(codeLines[start ..< min(codeLines.count, start + lines.count)]) == lines
      }
      #expect(
        found,
        "this block of GettingStarted.md is not in GettingStartedTests.swift:\n\(block)"
      )
    }
  }

  static func swiftBlocks(in markdown: String) -> [String] {
    var blocks: [String] = []
    var current: [Substring]?
    for line in markdown.split(separator: "\n", omittingEmptySubsequences: false) {
      let trimmed = line.trimmingCharacters(in: .whitespaces)
      if current == nil, trimmed == "```swift" {
        current = []
      } else if current != nil, trimmed == "```" {
        blocks.append(current.map { $0.joined(separator: "\n") } ?? "")
        current = nil
      } else {
        current?.append(line)
      }
    }
    return blocks
  }

  static func normalizedLines(_ text: String) -> [String] {
    text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter {
      !$0.isEmpty
    }
  }
}

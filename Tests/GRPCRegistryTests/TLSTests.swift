import EtcdHarness
import Foundation
import GRPCConnection
import GRPCCore
import GRPCRegistry
import RegistryCore
import RegistryTesting
import Testing
import UserService

/// Certificates made with `openssl` for one test: the servers' CA (server certificate for
/// 127.0.0.1, client certificate) and an unrelated CA that nobody's certificate chains to.
struct TLSFixture {
  let directory: String
  let certificates: TestCertificates
  let otherCA: TestCertificates

  static func make() async throws -> TLSFixture {
    let directory = FileManager.default.temporaryDirectory
      .appendingPathComponent("grpc-registry-tls-\(UUID().uuidString)").path
    let certificates = try await TestCertificates.generate(in: directory, name: "services")
    let otherCA = try await TestCertificates.generate(in: directory, name: "other")
    return TLSFixture(directory: directory, certificates: certificates, otherCA: otherCA)
  }

  func remove() {
    try? FileManager.default.removeItem(atPath: self.directory)
  }

  /// The servers' TLS; with `mutual`, clients must present a certificate from the same CA.
  func serverTLS(mutual: Bool = false) -> RegisteredServer.TLS {
    RegisteredServer.TLS(
      certificateChain: .file(path: self.certificates.serverCertificate),
      privateKey: .file(path: self.certificates.serverKey),
      clientTrustRoots: mutual ? .file(path: self.certificates.caCertificate) : nil
    )
  }

  /// A client's TLS trusting `caFile`, with the client certificate when `withCertificate`.
  func clientTLS(
    trusting caFile: String? = nil,
    withCertificate: Bool = false
  )
    -> HTTP2Connection.TLS
  {
    .defaults {
      $0.trustRoots = .certificates(.file(path: caFile ?? self.certificates.caCertificate))
      if withCertificate {
        $0.certificateChain = .file(path: self.certificates.clientCertificate)
        $0.privateKey = .file(path: self.certificates.clientKey)
      }
    }
  }
}

/// Runs one call through a balanced transport with `config` and returns its error, or `nil`
/// when it succeeded.
private func callError(
  registry: InMemoryRegistry,
  config: RegistryClientTransport.Config
) async throws -> RPCError? {
  try await withBalancedClient(registry: registry, config: config) { _, users in
    var options = CallOptions.defaults
    options.timeout = .seconds(10)
    do {
      _ = try await users.getById(.with { $0.id = 1 }, options: options)
      return nil
    } catch let error as RPCError {
      return error
    }
  }
}

@Suite("TLS between services", .serialized, .timeLimit(.minutes(2)))
struct TLSTests {
  @Test(
    "TLS calls through the balanced transport reach every instance",
    arguments: [false, true]
  )
  func tlsCalls(stockConnections: Bool) async throws {
    let fixture = try await TLSFixture.make()
    defer { fixture.remove() }
    let registry = InMemoryRegistry()
    let servers = [
      try await TestServer.start(registry: registry, tls: fixture.serverTLS()),
      try await TestServer.start(registry: registry, tls: fixture.serverTLS()),
    ]
    let config = RegistryClientTransport.Config.defaults {
      $0.tls = fixture.clientTLS()
      if stockConnections { $0.connection = .posix }
    }
    let seen = try await withBalancedClient(registry: registry, config: config) {
      transport,
      users in
      try await waitUntilPreferred(transport, servers.map(\.address))
      var seen = Set<String>()
      for id in 0 ..< 20 { seen.insert(try await getName(users, id: Int64(id))) }
      return seen
    }
    #expect(seen == Set(servers.map(\.address)))
    for server in servers { try await server.stopGracefully() }
  }

  @Test("a plaintext client cannot call a TLS server")
  func plaintextClientFails() async throws {
    let fixture = try await TLSFixture.make()
    defer { fixture.remove() }
    let registry = InMemoryRegistry()
    let server = try await TestServer.start(registry: registry, tls: fixture.serverTLS())
    let error = try await callError(registry: registry, config: .defaults)
    #expect(error?.code == .unavailable, "\(String(describing: error))")
    try await server.stopGracefully()
  }

  @Test("mutual TLS: a client with a certificate from the trusted CA gets through")
  func mutualTLS() async throws {
    let fixture = try await TLSFixture.make()
    defer { fixture.remove() }
    let registry = InMemoryRegistry()
    let server = try await TestServer.start(
      registry: registry,
      tls: fixture.serverTLS(mutual: true)
    )
    let config = RegistryClientTransport.Config.defaults {
      $0.tls = fixture.clientTLS(withCertificate: true)
    }
    let name = try await withBalancedClient(registry: registry, config: config) { _, users in
      try await getName(users)
    }
    #expect(name == server.address)
    try await server.stopGracefully()
  }

  @Test("mutual TLS: a client without a certificate is refused, and told to configure one")
  func mutualTLSRefusesClientWithoutCertificate() async throws {
    let fixture = try await TLSFixture.make()
    defer { fixture.remove() }
    let registry = InMemoryRegistry()
    let server = try await TestServer.start(
      registry: registry,
      tls: fixture.serverTLS(mutual: true)
    )
    let config = RegistryClientTransport.Config.defaults { $0.tls = fixture.clientTLS() }
    let error = try #require(try await callError(registry: registry, config: config))
    #expect(error.code == .unavailable, "\(error)")
    #expect(error.message.contains("client certificate"), "\(error.message)")
    try await server.stopGracefully()
  }

  @Test(
    "a client that does not trust the server's CA fails saying so and what to configure",
    arguments: [false, true]
  )
  func untrustedServer(stockConnections: Bool) async throws {
    let fixture = try await TLSFixture.make()
    defer { fixture.remove() }
    let registry = InMemoryRegistry()
    let server = try await TestServer.start(registry: registry, tls: fixture.serverTLS())
    let config = RegistryClientTransport.Config.defaults {
      $0.tls = fixture.clientTLS(trusting: fixture.otherCA.caCertificate)
      if stockConnections { $0.connection = .posix }
    }
    let error = try #require(try await callError(registry: registry, config: config))
    #expect(error.code == .unavailable, "\(error)")
    #expect(error.message.contains("certificate that was not trusted"), "\(error.message)")
    #expect(error.message.contains("trust roots"), "\(error.message)")
    // The own connection names the address dialled; the stock transport only its host.
    let dialled = stockConnections ? "127.0.0.1" : server.address
    #expect(error.message.contains(dialled), "\(error.message)")
    try await server.stopGracefully()
  }
}

// The code of the DocC article SecuringWithTLS.md, compiled here; GettingStartedTests checks
// that every Swift block of the article is code of this file.

private func articleServerConfig() -> RegisteredServer.Config {
  let config = RegisteredServer.Config(name: "user-server") {
    $0.tls = .tls(
      certificateChain: .file(path: "/etc/user-server/server.pem"),
      privateKey: .file(path: "/etc/user-server/server.key")
    )
  }
  return config
}

private func articleMutualServerConfig() -> RegisteredServer.Config {
  RegisteredServer.Config(name: "user-server") {
    $0.tls = .mutualTLS(
      certificateChain: .file(path: "/etc/user-server/server.pem"),
      privateKey: .file(path: "/etc/user-server/server.key"),
      clientTrustRoots: .file(path: "/etc/pki/services-ca.pem")
    )
  }
}

private func articleClientConfig() -> RegistryClientTransport.Config {
  let config = RegistryClientTransport.Config.defaults {
    $0.tls = .defaults {
      $0.trustRoots = .certificates(.file(path: "/etc/pki/services-ca.pem"))
      // For mutual TLS:
      $0.certificateChain = .file(path: "/etc/user-client/client.pem")
      $0.privateKey = .file(path: "/etc/user-client/client.key")
    }
  }
  return config
}

@Suite("TLS article")
struct TLSArticleTests {
  @Test("the article's configurations say what it says they do")
  func configurations() {
    #expect(articleServerConfig().tls?.clientTrustRoots == nil)
    #expect(
      articleMutualServerConfig().tls?.clientTrustRoots == .file(path: "/etc/pki/services-ca.pem")
    )
    let client = articleClientConfig().tls
    #expect(client?.trustRoots == .certificates(.file(path: "/etc/pki/services-ca.pem")))
    #expect(client?.certificateChain == .file(path: "/etc/user-client/client.pem"))
  }
}

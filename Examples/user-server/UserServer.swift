#if Tools
import ArgumentParser
import EtcdRegistry
import Foundation
import GRPCRegistry
import Logging
import Metrics
import Prometheus
import RegistryCore
import ServiceLifecycle
import UserService

/// The example server: serves `user.UserMesService` and registers itself in etcd.
@main
struct UserServer: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "user-server",
    abstract: "Serves user.UserMesService and registers it in etcd until SIGTERM or SIGINT.",
    discussion: """
      Prints 'READY <advertised address>' on its own line once registered. On SIGTERM or SIGINT
      it deregisters, waits the drain delay, finishes its calls and exits 0.

      With --metrics-port it also serves the registry's and etcd client's metrics in the
      Prometheus text format at http://<listen host>:<port>/metrics, and prints
      'METRICS <host>:<port>' once it listens (port 0 picks a free port). Without it, no metrics
      are collected.
      """
  )

  @Option(help: "etcd endpoints, host:port[,host:port]. Required.")
  var etcd: String?

  @Option(help: "The service name to register.")
  var name = "user-server"

  @Option(help: "The address to listen on, host:port; port 0 picks a free port.")
  var listen = "127.0.0.1:0"

  @Option(help: "The address clients should dial, host:port (default: the bound address).")
  var advertise: String?

  @Option(help: "The instance's weight (0 counts as 1).")
  var weight = 1

  @Option(help: "The instance's group (empty for none).")
  var group = ""

  @Option(help: "Time to live of the registration's lease, in seconds.")
  var ttl = 10

  @Option(help: "The registry's key prefix.")
  var prefix = "/micro"

  @Option(help: "Seconds between deregistering and stopping, for clients to move away.")
  var drain = 1.0

  /// `--server-transport`: ArgumentParser validates the value and lists the choices.
  enum ServerTransportChoice: String, ExpressibleByArgument, CaseIterable {
    /// The project's `HTTP2Server`.
    case own
    /// grpc-swift's `HTTP2ServerTransport.Posix`.
    case stock
  }

  /// `--handler-execution`: where the own transport runs call handlers.
  enum HandlerExecutionChoice: String, ExpressibleByArgument, CaseIterable {
    /// `HTTP2Server.HandlerExecution.eventLoopWhenAlone`.
    case loop
    /// `HTTP2Server.HandlerExecution.concurrencyPool`.
    case pool
  }

  @Option(
    help:
      "The server transport: 'own' (the project's HTTP2Server, the default) or 'stock' (grpc-swift's HTTP2ServerTransport.Posix)."
  )
  var serverTransport = ServerTransportChoice.own

  @Option(
    help:
      "With --server-transport own, where call handlers run: 'loop' (the default: a connection's only call on the connection's event loop, HTTP2Server.HandlerExecution.eventLoopWhenAlone) or 'pool' (every handler on Swift concurrency's global executor)."
  )
  var handlerExecution = HandlerExecutionChoice.loop

  @Option(
    help:
      "Serve Prometheus metrics at /metrics on this port, on the --listen host (0 picks a free port; off when absent)."
  )
  var metricsPort: Int?
  @Option(help: "TLS: PEM file of the server's certificate chain (with --tls-key).")
  var tlsCert: String?

  @Option(help: "TLS: PEM file of the server's private key (with --tls-cert).")
  var tlsKey: String?

  @Option(help: "Mutual TLS: PEM file of the CA(s) client certificates must chain to.")
  var tlsClientCA: String?

  func validate() throws {
    guard let etcd, !etcd.isEmpty else {
      throw ValidationError(
        """
        user-server registers itself in etcd and needs its address: pass --etcd host:port[,host:port] \
        (for example --etcd 127.0.0.1:2379 for a local etcd). To see the registry without etcd, \
        run 'swift run registry-demo'.
        """
      )
    }
    guard self.ttl >= 2 else {
      throw ValidationError("--ttl must be at least 2 seconds (etcd's minimum)")
    }
    guard self.drain >= 0 else { throw ValidationError("--drain must not be negative") }
    if let metricsPort, !(0 ... 65535).contains(metricsPort) {
      throw ValidationError("--metrics-port must be 0 to 65535 (0 picks a free port)")
    }
    guard (self.tlsCert == nil) == (self.tlsKey == nil) else {
      throw ValidationError("--tls-cert and --tls-key go together")
    }
    guard self.tlsClientCA == nil || self.tlsCert != nil else {
      throw ValidationError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    }
  }

  func run() async throws {
    var logger = Logger(label: "user-server")
    logger.logLevel = .info
    let (host, port) = try Self.parseListen(self.listen)
    let endpoints = (self.etcd ?? "").split(separator: ",").map { String($0) }
    var metricsServer: MetricsServer?
    if let metricsPort = self.metricsPort {
      let collectors = PrometheusCollectorRegistry()
      let factory = PrometheusMetricsFactory(registry: collectors)
      // Everything that reads the global factory (the transport's defaults too) reports here.
      MetricsSystem.bootstrap(factory)
      metricsServer = MetricsServer(host: host, port: metricsPort, registry: collectors)
    }
    let registry = try EtcdServiceRegistry(
      config: .defaults {
        $0.etcd.endpoints = endpoints
        $0.keyPrefix = self.prefix
        $0.leaseTTL = .seconds(self.ttl)
      },
      logger: logger
    )
    let config = RegisteredServer.Config(name: self.name) {
      if self.serverTransport == .stock { $0.transport = .stock }
      if case .own(var server) = $0.transport {
        switch self.handlerExecution {
        case .loop: server.handlerExecution = .eventLoopWhenAlone
        case .pool: server.handlerExecution = .concurrencyPool
        }
        $0.transport = .own(server)
      }
      $0.host = host
      $0.port = port
      $0.advertisedAddress = self.advertise
      $0.weight = self.weight
      $0.group = self.group
      $0.drainDelay = .milliseconds(Int(self.drain * 1000))
      if let cert = self.tlsCert, let key = self.tlsKey {
        $0.tls = RegisteredServer.TLS(
          certificateChain: .file(path: cert),
          privateKey: .file(path: key),
          clientTrustRoots: self.tlsClientCA.map { .file(path: $0) }
        )
      }
    }
    let server = RegisteredServer(config: config, registry: registry, logger: logger) { server in
      [UserDirectory(name: { server.advertisedAddress ?? "" })]
    }
    // Shut down in reverse order: the server deregisters while the registry still runs, and
    // metrics stay available until both have stopped.
    var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
    if let metricsServer { services.append(.init(service: metricsServer)) }
    services += [
      .init(service: registry),
      .init(service: server),
      .init(service: ReadyReporter(server: server), successTerminationBehavior: .ignore),
    ]
    let group = ServiceGroup(
      configuration: ServiceGroupConfiguration(
        services: services,
        gracefulShutdownSignals: [.sigterm, .sigint],
        logger: logger
      )
    )
    do {
      try await group.run()
    } catch let error as GRPCRegistryError {
      FileHandle.standardError.write(Data("user-server: \(error.message)\n".utf8))
      throw ExitCode.failure
    }
  }

  static func parseListen(_ text: String) throws -> (String, Int) {
    guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
      (0 ... 65535).contains(port)
    else {
      throw ValidationError(
        "--listen '\(text)' is not host:port (port 0 to 65535), such as 0.0.0.0:8082"
      )
    }
    var host = String(text[..<colon])
    if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    return (host.isEmpty ? "0.0.0.0" : host, port)
  }
}

/// Prints `READY <address>` once the server is registered.
struct ReadyReporter: Service {
  let server: RegisteredServer

  func run() async throws {
    let instance = try await cancelWhenGracefulShutdown {
      try await self.server.registeredInstance()
    }
    print("READY \(instance.address)")
    // Whoever started us reads this line from a pipe: do not leave it in a buffer.
    fflush(nil)
  }
}
#endif

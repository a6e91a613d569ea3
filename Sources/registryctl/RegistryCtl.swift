#if Tools
import ArgumentParser
import Dispatch
import Etcd
import EtcdRegistry
import Foundation
import Logging
import RegistryCore

/// `registryctl`: operate the service registry on etcd.
///
/// Exit codes: 0 success, 1 not found or empty, 2 usage error, 3 etcd unreachable or access
/// denied.
@main
struct RegistryCtl: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "registryctl",
    abstract: "Operate the gRPC service registry on etcd.",
    discussion: """
      Connection settings come from flags (before or after the subcommand, as etcdctl takes
      them) or the environment: REGISTRY_ETCD_ENDPOINTS, REGISTRY_PREFIX, REGISTRY_ETCD_CACERT,
      REGISTRY_ETCD_CERT, REGISTRY_ETCD_KEY, REGISTRY_ETCD_USER (name:password), and then
      etcdctl's own ETCDCTL_ENDPOINTS, ETCDCTL_CACERT, ETCDCTL_CERT, ETCDCTL_KEY, ETCDCTL_USER
      (name:password, or name with ETCDCTL_PASSWORD).
      Exit codes: 0 ok, 1 not found or empty, 2 usage, 3 etcd unreachable or access denied.
      """,
    subcommands: [
      Services.self, List.self, Watch.self, Register.self, Deregister.self, Status.self,
    ]
  )

  static func main() async {
    do {
      var command = try parseAsRoot(
        Self.globalOptionsAfterSubcommand(Array(CommandLine.arguments.dropFirst()))
      )
      if var asyncCommand = command as? any AsyncParsableCommand {
        try await asyncCommand.run()
      } else {
        try command.run()
      }
    } catch let failure as Failure {
      FileHandle.standardError.write(Data("registryctl: \(failure.message)\n".utf8))
      Foundation.exit(failure.code)
    } catch {
      let code = exitCode(for: error)
      if code == .validationFailure {
        FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
        Foundation.exit(2)
      }
      exit(withError: error)
    }
  }
}

extension RegistryCtl {
  /// Moves options written before the subcommand (`registryctl --etcd HOST services`, as
  /// etcdctl accepts them) to after it, where the subcommand's parser reads them.
  static func globalOptionsAfterSubcommand(_ arguments: [String]) -> [String] {
    let names = Set(Self.configuration.subcommands.map { $0._commandName })
    guard let index = arguments.firstIndex(where: { names.contains($0) }), index > 0,
      arguments[..<index].first?.hasPrefix("-") == true
    else { return arguments }
    return [arguments[index]] + arguments[..<index] + arguments[(index + 1)...]
  }
}

/// An error with its exit code.
struct Failure: Error {
  var code: Int32
  var message: String

  static func notFound(_ message: String) -> Failure { Failure(code: 1, message: message) }

  /// Maps registry and etcd errors onto the exit codes.
  static func from(_ error: any Error) -> Failure {
    if let failure = error as? Failure { return failure }
    if let error = error as? EtcdError {
      switch error.code {
      case .unavailable, .timeout, .permissionDenied, .authFailed:
        return Failure(code: 3, message: error.message)
      case .invalidArgument:
        return Failure(code: 2, message: error.message)
      default:
        return Failure(code: 3, message: "\(error)")
      }
    }
    if let error = error as? RegistryError {
      switch error.code {
      case .unavailable, .timeout, .permissionDenied:
        return Failure(code: 3, message: error.message)
      case .invalidArgument:
        return Failure(code: 2, message: error.message)
      case .notFound:
        return Failure(code: 1, message: error.message)
      default:
        return Failure(code: 3, message: "\(error)")
      }
    }
    return Failure(code: 3, message: "\(error)")
  }
}

/// Flags shared by every subcommand.
struct ConnectionOptions: ParsableArguments {
  @Option(
    name: [.customLong("etcd"), .customLong("endpoints")],
    help:
      "etcd endpoints, host:port[,host:port]; http:// and https:// are accepted (env REGISTRY_ETCD_ENDPOINTS, ETCDCTL_ENDPOINTS)."
  )
  var endpoints: String?

  @Option(help: "Key prefix of the registry (env REGISTRY_PREFIX).")
  var prefix: String?

  @Option(help: "Value format: json (the Go design's) or etcd-naming.")
  var codec = "json"

  @Option(help: "CA certificate (PEM) to verify etcd with; enables TLS (env REGISTRY_ETCD_CACERT).")
  var cacert: String?

  @Option(help: "Client certificate (PEM) for mutual TLS (env REGISTRY_ETCD_CERT).")
  var cert: String?

  @Option(help: "Client key (PEM) for mutual TLS (env REGISTRY_ETCD_KEY).")
  var key: String?

  @Option(help: "etcd user as name:password (env REGISTRY_ETCD_USER).")
  var user: String?

  @Option(help: "Request timeout in seconds.")
  var timeout: Double = 5

  @Flag(help: "Log the client's own activity to stderr.")
  var verbose = false

  private var environment: [String: String] { ProcessInfo.processInfo.environment }

  /// The first of the environment variables `names` that is set and not empty.
  private func environment(_ names: String...) -> String? {
    names.lazy.compactMap { self.environment[$0] }.first { !$0.isEmpty }
  }

  private var endpointList: [String] {
    (self.endpoints ?? self.environment("REGISTRY_ETCD_ENDPOINTS", "ETCDCTL_ENDPOINTS")
      ?? "127.0.0.1:2379")
      .split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
  }

  /// The endpoints as `host:port` (etcdctl's URLs lose their scheme).
  var etcdEndpoints: [String] {
    self.endpointList.map { endpoint in
      for scheme in ["http://", "https://"] where endpoint.hasPrefix(scheme) {
        return String(endpoint.dropFirst(scheme.count))
      }
      return endpoint
    }
  }

  private var caCertificate: String? {
    self.cacert ?? self.environment("REGISTRY_ETCD_CACERT", "ETCDCTL_CACERT")
  }
  private var clientCertificate: String? {
    self.cert ?? self.environment("REGISTRY_ETCD_CERT", "ETCDCTL_CERT")
  }
  private var clientKey: String? {
    self.key ?? self.environment("REGISTRY_ETCD_KEY", "ETCDCTL_KEY")
  }
  /// `name:password`, from the flag or the environment (etcdctl's user may carry its password
  /// in ETCDCTL_PASSWORD).
  private var userAndPassword: String? {
    if let user = self.user ?? self.environment["REGISTRY_ETCD_USER"] { return user }
    guard let user = self.environment["ETCDCTL_USER"] else { return nil }
    if user.contains(":") { return user }
    return self.environment["ETCDCTL_PASSWORD"].map { "\(user):\($0)" } ?? user
  }

  var keyPrefix: String { self.prefix ?? self.environment["REGISTRY_PREFIX"] ?? "/micro" }

  func validate() throws {
    guard InstanceCodec.named(self.codec) != nil else {
      throw ValidationError("--codec must be json or etcd-naming, not '\(self.codec)'")
    }
    guard self.timeout > 0 else { throw ValidationError("--timeout must be positive") }
    if let user = self.userAndPassword, !user.contains(":") {
      throw ValidationError("the etcd user must be given as name:password")
    }
  }

  var instanceCodec: InstanceCodec { InstanceCodec.named(self.codec) ?? .json }

  var keyspace: RegistryKeyspace {
    get throws {
      do {
        return try RegistryKeyspace(prefix: self.keyPrefix)
      } catch {
        throw Failure(code: 2, message: error.message)
      }
    }
  }

  /// TLS with a CA given, or an `https://` endpoint (then the system's trust roots).
  var usesTLS: Bool {
    self.caCertificate != nil || self.endpointList.contains { $0.hasPrefix("https://") }
  }
  var usesMutualTLS: Bool { self.usesTLS && self.clientCertificate != nil }
  var usesAuth: Bool { self.userName != nil }
  /// The etcd user name, without the password.
  var userName: String? {
    self.userAndPassword.map { String($0.prefix { $0 != ":" }) }
  }

  /// Maps an error onto its exit code, adding what to do about a connection or access failure
  /// in terms of this command's flags.
  func failure(_ error: any Error) -> Failure {
    var failure = Failure.from(error)
    guard failure.code == 3 else { return failure }
    let code = (error as? EtcdError)?.code ?? ((error as? RegistryError)?.cause as? EtcdError)?.code
    let endpoints = self.etcdEndpoints.joined(separator: ",")
    let text = failure.message.lowercased()
    let hint: String
    switch code {
    case .authFailed?:
      hint =
        "check the user name and password given with --user name:password (or REGISTRY_ETCD_USER)"
    case .permissionDenied? where !self.usesAuth:
      hint =
        "etcd has authentication enabled: pass --user name:password (or set REGISTRY_ETCD_USER)"
    case .permissionDenied?:
      hint =
        "ask an etcd administrator to grant user '\(self.userName ?? "")' a role with read and write access to \(self.keyPrefix)"
    default:
      if self.usesTLS,
        ["certificate", "tls", "ssl", "handshake"].contains(where: { text.contains($0) })
      {
        hint =
          "check that --cacert (REGISTRY_ETCD_CACERT) is the CA that signed etcd's server certificate; for mutual TLS also pass --cert and --key (REGISTRY_ETCD_CERT, REGISTRY_ETCD_KEY)"
      } else if self.usesTLS {
        hint =
          "check that etcd is running at \(endpoints) and that --cacert (REGISTRY_ETCD_CACERT) is the CA that signed its certificate"
      } else {
        hint =
          "check that etcd is running at \(endpoints) (--etcd or REGISTRY_ETCD_ENDPOINTS); if it serves TLS, pass --cacert (REGISTRY_ETCD_CACERT)"
      }
    }
    failure.message += "\nhint: " + hint
    return failure
  }

  var etcdConfiguration: EtcdClient.Config {
    .defaults {
      $0.endpoints = self.etcdEndpoints
      $0.requestTimeout = .milliseconds(Int(self.timeout * 1000))
      // A member that accepts connections but never answers (a hung process) is given up
      // after 2 s, leaving the rest of the timeout for the next endpoint.
      $0.connectTimeout = .milliseconds(Int(min(self.timeout, 2) * 1000))
      if self.usesTLS {
        $0.tls = .defaults { tls in
          if let ca = self.caCertificate { tls.trustRoots = .certificates(.file(path: ca)) }
          tls.certificateChain = self.clientCertificate.map { .file(path: $0) }
          tls.privateKey = self.clientKey.map { .file(path: $0) }
        }
      }
      if let user = self.userAndPassword, let colon = user.firstIndex(of: ":") {
        $0.credentials = .init(
          username: String(user[..<colon]),
          password: String(user[user.index(after: colon)...])
        )
      }
    }
  }

  var logger: Logger {
    var logger = Logger(label: "registryctl") { StreamLogHandler.standardError(label: $0) }
    logger.logLevel = self.verbose ? .debug : .error
    return logger
  }

  func registryConfiguration(ttl: Int = 10) -> EtcdServiceRegistry.Config {
    .defaults {
      $0.etcd = self.etcdConfiguration
      $0.keyPrefix = self.keyPrefix
      $0.codec = self.instanceCodec
      $0.leaseTTL = .seconds(ttl)
    }
  }

  /// Runs `body` with a client, mapping failures onto exit codes.
  func withClient<T: Sendable>(_ body: (EtcdClient) async throws -> T) async throws -> T {
    do {
      return try await withEtcdClient(
        config: self.etcdConfiguration,
        logger: self.logger,
        body
      )
    } catch {
      throw self.failure(error)
    }
  }
}

/// Waits for SIGINT or SIGTERM.
enum Signals {
  static func wait() async {
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
      let resumed = ResumeOnce(continuation)
      for signalNumber in [SIGINT, SIGTERM] {
        signal(signalNumber, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
        source.setEventHandler { resumed.resume() }
        source.resume()
        Sources.keep(source)
      }
    }
  }

  /// Keeps signal sources alive for the life of the process.
  enum Sources {
    nonisolated(unsafe) private static var sources: [any DispatchSourceSignal] = []
    private static let lock = NSLock()
    static func keep(_ source: any DispatchSourceSignal) {
      self.lock.lock()
      defer { self.lock.unlock() }
      self.sources.append(source)
    }
  }

  final class ResumeOnce: @unchecked Sendable {
    private let lock = NSLock()
    private var continuation: CheckedContinuation<Void, Never>?
    init(_ continuation: CheckedContinuation<Void, Never>) { self.continuation = continuation }
    func resume() {
      self.lock.lock()
      let continuation = self.continuation
      self.continuation = nil
      self.lock.unlock()
      continuation?.resume()
    }
  }
}
#endif

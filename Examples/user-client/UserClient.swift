#if Tools
import ArgumentParser
import EtcdRegistry
import Foundation
import GRPCConnection
import GRPCCore
import GRPCRegistry
import Logging
import RegistryCore
import RegistryPrimitives
import Synchronization
import UserService

/// The example client: calls user.UserMesService through the registry and reports where the
/// calls went.
@main
struct UserClient: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "user-client",
    abstract: "Calls user.UserMesService/GetById through etcd discovery and prints a JSON summary.",
    discussion: """
      Output: {"calls":N,"ok":N,"failed":N,"servers":{"<address>":N,…},"callsPerSecond":X}.
      Each response's user name is the address of the server that answered.
      """
  )

  @Option(help: "etcd endpoints, host:port[,host:port]. Required.")
  var etcd: String?

  @Option(help: "The target, registry://<service>[?group=<group>].")
  var target = "registry://user-server"

  @Option(help: "The group of every call (overrides the target's group).")
  var group: String?

  @Option(help: "The number of calls.")
  var calls = 1000

  @Option(help: "Calls in flight at once.")
  var concurrency = 8

  @Option(help: "The registry's key prefix.")
  var prefix = "/micro"

  @Option(help: "Seconds each call may take.")
  var timeout = 5.0

  @Option(
    help:
      "Print 'PROGRESS <calls ended>' on stderr each time this many more calls have ended (0: never)."
  )
  var progressEvery = 0

  @Option(help: "TLS to the servers: PEM file of the CA that signed their certificates.")
  var tlsCA: String?

  @Option(help: "Mutual TLS: PEM file of this client's certificate (with --tls-key).")
  var tlsCert: String?

  @Option(help: "Mutual TLS: PEM file of this client's private key (with --tls-cert).")
  var tlsKey: String?

  func validate() throws {
    guard let etcd, !etcd.isEmpty else {
      throw ValidationError(
        "user-client discovers servers in etcd: pass --etcd host:port[,host:port] (for example --etcd 127.0.0.1:2379)."
      )
    }
    guard self.calls >= 0 else { throw ValidationError("--calls must not be negative") }
    guard self.concurrency >= 1 else { throw ValidationError("--concurrency must be at least 1") }
    guard self.progressEvery >= 0 else {
      throw ValidationError("--progress-every must not be negative (0 turns progress off)")
    }
    guard (self.tlsCert == nil) == (self.tlsKey == nil) else {
      throw ValidationError("--tls-cert and --tls-key go together (mutual TLS needs both)")
    }
  }

  /// TLS towards the servers when any TLS option is given; the system's trust roots without
  /// --tls-ca.
  var tls: HTTP2Connection.TLS? {
    guard self.tlsCA != nil || self.tlsCert != nil else { return nil }
    return .defaults {
      if let ca = self.tlsCA { $0.trustRoots = .certificates(.file(path: ca)) }
      if let cert = self.tlsCert, let key = self.tlsKey {
        $0.certificateChain = .file(path: cert)
        $0.privateKey = .file(path: key)
      }
    }
  }

  func run() async throws {
    var logger = Logger(label: "user-client")
    logger.logLevel = .warning
    let target: RegistryTarget
    do {
      target = try RegistryTarget(parsing: self.target)
    } catch {
      throw ValidationError(error.message)
    }
    let endpoints = (self.etcd ?? "").split(separator: ",").map { String($0) }
    let configuration = EtcdServiceRegistry.Config.defaults {
      $0.etcd.endpoints = endpoints
      $0.keyPrefix = self.prefix
    }
    let summary = try await withEtcdServiceRegistry(config: configuration, logger: logger) {
      registry in
      let transport = RegistryClientTransport(
        target: target,
        registry: registry,
        config: .defaults { $0.tls = self.tls },
        logger: logger
      )
      return try await withGRPCClient(transport: transport) { client in
        try await self.callAll(User_UserMesService.Client(wrapping: client))
      }
    }
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    print(String(decoding: try encoder.encode(summary), as: UTF8.self))
    fflush(nil)
  }

  private func callAll(
    _ users: User_UserMesService.Client<RegistryClientTransport>
  ) async throws -> Summary {
    let next = Counter()
    let ended = Counter()
    let tally = SummaryBox(Summary(calls: self.calls))
    let timeout = Duration.milliseconds(Int(self.timeout * 1000))
    let start = ContinuousClock.now
    await withDiscardingTaskGroup { group in
      for _ in 0 ..< min(self.concurrency, max(self.calls, 1)) {
        group.addTask {
          while true {
            let index = next.increment()
            guard index <= self.calls else { return }
            var request = User_GetByIdReq()
            request.id = Int64(index)
            do {
              let name = try await withRegistryGroup(self.group) {
                // The connection enforces the deadline; a `CallOptions.timeout` would hold about
                // 1.5 KB per call for the whole timeout (the Operations article says why).
                try await HTTP2Connection.withCallDeadline(.now + timeout) {
                  try await users.getById(request).user.name
                }
              }
              tally.state.withLock {
                $0.ok += 1
                $0.servers[name, default: 0] += 1
              }
            } catch {
              tally.state.withLock {
                $0.failed += 1
                if $0.errors.count < 3 { $0.errors.append("\(error)") }
              }
            }
            if self.progressEvery > 0 {
              let count = ended.increment()
              if count % self.progressEvery == 0 {
                FileHandle.standardError.write(Data("PROGRESS \(count)\n".utf8))
              }
            }
          }
        }
      }
    }
    let elapsed = ContinuousClock.now - start
    let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    return tally.state.withLock { summary in
      summary.callsPerSecond =
        seconds > 0 ? (Double(summary.ok + summary.failed) / seconds).rounded() : 0
      return summary
    }
  }
}

/// The JSON summary the client prints.
struct Summary: Codable, Sendable {
  var calls: Int
  var ok = 0
  var failed = 0
  var servers: [String: Int] = [:]
  var callsPerSecond = 0.0
  var errors: [String] = []
}

/// The index of the next call, shared by the callers.
final class Counter: Sendable {
  private let value = Atomic<Int>(0)
  func increment() -> Int { self.value.add(1, ordering: .relaxed).newValue }
}

/// The summary, updated by the callers.
final class SummaryBox: Sendable {
  let state: Locked<Summary>
  init(_ summary: Summary) { self.state = Locked(summary) }
}
#endif

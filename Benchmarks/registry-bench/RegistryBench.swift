#if Tools
import ArgumentParser
import Etcd
import EtcdHarness
import Foundation
import Logging
import NIOCore
import NIOPosix

@main
struct RegistryBench: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "registry-bench",
    abstract: "Benchmarks the etcd client and the etcd registry; JSON lines on stdout.",
    discussion: """
      Scenarios: \(Scenario.all.map { "\($0.name) (\($0.summary))" }.joined(separator: "; ")).
      Only with --only: \(Scenario.optIn.map { "\($0.name) (\($0.summary))" }.joined(separator: "; ")).
      c, f and soak start the example user-server found next to this executable.
      Each run of each scenario prints one JSON object per line, and each scenario a final
      "run":"median" line; a table goes to stderr. See BENCHMARKS.md for what each one times.
      """
  )

  @Option(help: "Use this etcd (host:port) instead of starting a single-node etcd.")
  var etcd: String?

  @Option(help: "Comma-separated scenarios to run (default: all).")
  var only: String?

  @Option(help: "How many times to run each scenario.")
  var runs: Int = 3

  @Flag(
    inversion: .prefixedNo,
    help: "Run `etcdctl check perf --load=s` in the floor scenario (60 s per run)."
  )
  var checkPerf = true

  @Option(help: "The most one measured phase may take, in seconds; its loop stops there.")
  var phaseSeconds: Int = 60

  @Option(help: "Log level of the libraries' logs on stderr.")
  var logLevel: String = "warning"

  @Option(help: "How long the soak scenario runs, in minutes (1 to 60).")
  var minutes: Int = 2

  @Option(help: .hidden)
  var memChild: String?

  @Option(help: .hidden)
  var memPrefix: String?

  @Option(help: .hidden)
  var fleetChild: String?

  @Option(help: .hidden)
  var fleetService: String = "bench-fleet"

  @Option(help: .hidden)
  var fleetCount: Int = 1_000

  func validate() throws {
    guard self.runs >= 1, self.runs <= 100 else {
      throw ValidationError("--runs must be between 1 and 100")
    }
    guard self.phaseSeconds >= 1 else { throw ValidationError("--phase-seconds must be positive") }
    guard Logger.Level(rawValue: self.logLevel) != nil else {
      throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error")
    }
    guard (1 ... 60).contains(self.minutes) else {
      throw ValidationError("--minutes must be between 1 and 60")
    }
    let known = Scenario.all + Scenario.optIn
    for name in self.selectedNames where !known.contains(where: { $0.name == name }) {
      throw ValidationError(
        "unknown scenario '\(name)'; choose from \(known.map(\.name).joined(separator: ","))"
      )
    }
  }

  private var selectedNames: [String] {
    guard let only else { return Scenario.all.map(\.name) }
    return only.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
      .filter { !$0.isEmpty }
  }

  func run() async throws {
    // REGISTRY_BENCH_NIO_EXECUTOR=1: Swift concurrency's global executor is NIO's event loops
    // (inherited by conn's Swift servers), to compare the hops between tasks and event loops.
    if ProcessInfo.processInfo.environment["REGISTRY_BENCH_NIO_EXECUTOR"] == "1" {
      guard NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
      else { throw BenchError("could not make NIO's event loops the global executor") }
    }
    // `conn` re-runs this executable as its Swift server.
    if try await ConnectionScenario.serveIfAsked() { return }
    let level = Logger.Level(rawValue: self.logLevel) ?? .warning
    LoggingSystem.bootstrap { label in
      var handler = StreamLogHandler.standardError(label: label)
      handler.logLevel = level
      return handler
    }
    let logger = Logger(label: "registry-bench")
    if let role = self.memChild {
      // A helper process of scenario mem, started by registry-bench itself.
      try await MemoryChild.run(
        role: role,
        endpoint: self.etcd ?? "127.0.0.1:2379",
        prefix: self.memPrefix ?? "/registry-bench/mem",
        logger: logger
      )
      return
    }
    if let role = self.fleetChild {
      // A helper process of scenario fleet, started by registry-bench itself.
      try await FleetChild.run(
        role: role,
        endpoint: self.etcd ?? "127.0.0.1:2379",
        prefix: self.memPrefix ?? "/registry-bench/fleet",
        service: self.fleetService,
        count: self.fleetCount,
        logger: logger
      )
      return
    }
    let names = self.selectedNames
    let scenarios = (Scenario.all + Scenario.optIn).filter { names.contains($0.name) }

    var cluster: EtcdCluster?
    let endpoint: String
    if let etcd = self.etcd {
      endpoint = etcd
    } else {
      Report.progress("starting a single-node etcd (--unsafe-no-fsync)")
      let started = try await EtcdCluster.start(.defaults)
      cluster = started
      endpoint = started.endpoints[0]
    }
    do {
      try await self.benchmark(scenarios, endpoint: endpoint, logger: logger)
    } catch {
      ChildProcess.killAll()
      await cluster?.shutdown()
      throw error
    }
    await cluster?.shutdown()
  }

  private func benchmark(_ scenarios: [Scenario], endpoint: String, logger: Logger) async throws {
    let cores = ProcessInfo.processInfo.activeProcessorCount
    let namespace = "/registry-bench/\(UUID().uuidString.prefix(8).lowercased())"
    let etcdVersion = try await withEtcdClient(
      config: .defaults { $0.endpoints = [endpoint] },
      logger: logger
    ) { client in
      try await client.status().version
    }
    Report.progress("etcd \(etcdVersion) at \(endpoint); \(cores) cores; keys under \(namespace)")

    var records: [String: [RunRecord]] = [:]
    for run in 1 ... self.runs {
      for scenario in scenarios {
        let context = BenchContext(
          endpoint: endpoint,
          run: run,
          namespace: namespace,
          logger: logger,
          checkPerf: self.checkPerf,
          phaseLimit: .seconds(self.phaseSeconds),
          soakMinutes: self.minutes
        )
        Report.progress("run \(run)/\(self.runs): \(scenario.name) (\(scenario.summary))")
        let loadBefore = LoadAverage.current()
        let start = ContinuousClock.now
        let metrics: Metrics
        do {
          metrics = try await scenario.body(context)
        } catch {
          try? await self.cleanUp(namespace, endpoint: endpoint, logger: logger)
          throw error
        }
        let record = RunRecord(
          scenario: scenario.name,
          run: run,
          metrics: metrics,
          loadBefore: loadBefore,
          loadAfter: LoadAverage.current(),
          elapsed: ContinuousClock.now - start
        )
        Report.line(record, cores: cores)
        records[scenario.name, default: []].append(record)
        try await self.cleanUp(context.prefix(scenario.name), endpoint: endpoint, logger: logger)
      }
    }
    for scenario in scenarios {
      Report.medianLine(
        scenario: scenario.name,
        records[scenario.name] ?? [],
        cores: cores,
        etcdVersion: etcdVersion
      )
    }
    Report.table(scenarios.map { ($0.name, $0.summary, records[$0.name] ?? []) })
  }

  /// Deletes everything a scenario wrote (its prefix covers every mode's keys).
  private func cleanUp(_ prefix: String, endpoint: String, logger: Logger) async throws {
    try await withEtcdClient(
      config: .defaults { $0.endpoints = [endpoint] },
      logger: logger
    ) { client in
      _ = try await client.delete(.prefix(prefix))
    }
  }
}
#endif

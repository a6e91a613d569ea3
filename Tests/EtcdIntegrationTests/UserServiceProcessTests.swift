import EtcdHarness
import EtcdRegistry
import Foundation
import RegistryCore
import RegistryTesting
import Testing

/// Runs the example executables built next to the tests.
enum Executables {
  static func path(_ name: String) throws -> String {
    let registryctl = try RegistryCtl.executable
    let path = URL(fileURLWithPath: registryctl).deletingLastPathComponent().appendingPathComponent(
      name
    ).path
    guard FileManager.default.isExecutableFile(atPath: path) else {
      throw WaitTimeoutError(
        description:
          "\(name) was not built next to the tests; run `swift build --build-tests --traits Tools` first"
      )
    }
    return path
  }
}

/// A `user-server` child process, started and READY.
final class UserServerProcess: Sendable {
  let process: ChildProcess
  let address: String

  init(
    etcd: EtcdCluster,
    prefix: String,
    weight: Int = 1,
    ttl: Int = 5,
    extraArguments: [String] = []
  ) async throws {
    let process = try ChildProcess(
      try Executables.path("user-server"),
      [
        "--etcd", etcd.endpoints.joined(separator: ","), "--listen", "127.0.0.1:0", "--weight",
        "\(weight)", "--ttl", "\(ttl)", "--prefix", prefix, "--drain", "0.3",
      ] + extraArguments,
      standardError: .discard
    )
    self.address = try await process.line(startingWith: "READY ", within: .seconds(20))
    self.process = process
  }

  /// The address of the metrics endpoint, from the `METRICS <host:port>` line.
  var metricsAddress: String? {
    self.process.output.split(separator: "\n").first { $0.hasPrefix("METRICS ") }
      .map { String($0.dropFirst("METRICS ".count)) }
  }
}

/// What `user-client` prints.
struct ClientSummary: Decodable, Sendable {
  var calls: Int
  var ok: Int
  var failed: Int
  var servers: [String: Int]
}

/// A running `user-client`: its JSON summary on stdout, its `PROGRESS` lines on stderr.
final class UserClientProcess: Sendable {
  let process: ChildProcess

  init(
    etcd: EtcdCluster,
    prefix: String,
    calls: Int,
    concurrency: Int,
    progressEvery: Int = 0
  )
    throws
  {
    self.process = try ChildProcess(
      try Executables.path("user-client"),
      [
        "--etcd", etcd.endpoints.joined(separator: ","), "--prefix", prefix, "--calls",
        "\(calls)", "--concurrency", "\(concurrency)", "--progress-every", "\(progressEvery)",
      ]
    )
  }

  /// Waits until the client reports at least `calls` calls ended (its `--progress-every` lines).
  func waitForProgress(_ calls: Int, within timeout: Duration = .seconds(30)) async throws {
    try await waitUntil("user-client reports \(calls) calls ended", within: timeout) {
      let reported = self.process.errorOutput.split(separator: "\n").compactMap { line in
        line.hasPrefix("PROGRESS ") ? Int(line.dropFirst("PROGRESS ".count)) : nil
      }
      if reported.contains(where: { $0 >= calls }) { return true }
      if !self.process.isRunning {
        throw WaitTimeoutError(
          description: "user-client exited before \(calls) calls: \(self.process.errorOutput)"
        )
      }
      return false
    }
  }

  /// Waits for the client to exit and decodes its summary.
  func summary(within timeout: Duration = .seconds(60)) async throws -> ClientSummary {
    try await waitUntil("user-client exits", within: timeout) { !self.process.isRunning }
    // The pipe's last bytes may land just after the exit is seen.
    var summary: ClientSummary?
    try await waitUntil(
      "user-client's summary is read (stdout: \(self.process.output))",
      within: .seconds(5)
    ) {
      summary = try? JSONDecoder().decode(
        ClientSummary.self,
        from: Data(self.process.output.utf8)
      )
      return summary != nil
    }
    guard let summary else {
      throw WaitTimeoutError(description: "user-client printed no summary")
    }
    return summary
  }
}

/// Runs `user-client` to completion and decodes its JSON summary.
func runUserClient(
  etcd: EtcdCluster,
  prefix: String,
  calls: Int,
  concurrency: Int
) async throws -> ClientSummary {
  try await UserClientProcess(etcd: etcd, prefix: prefix, calls: calls, concurrency: concurrency)
    .summary()
}

@Suite("user-server and user-client on etcd", .timeLimit(.minutes(4)), .serialized)
struct UserServiceProcessTests {
  @Test(
    "calls through registry:// reach every server; a graceful stop fails no call; a SIGKILLed server leaves discovery within TTL + 1 s with bounded failures"
  )
  func endToEnd() async throws {
    let cluster = try await SharedEtcd.get()
    let prefix = uniquePrefix("users")
    let servers = [
      try await UserServerProcess(etcd: cluster, prefix: prefix, weight: 1),
      try await UserServerProcess(etcd: cluster, prefix: prefix, weight: 2),
      try await UserServerProcess(etcd: cluster, prefix: prefix, weight: 3),
    ]
    let summary = try await runUserClient(
      etcd: cluster,
      prefix: prefix,
      calls: 3000,
      concurrency: 8
    )
    #expect(summary.ok == 3000, "\(summary)")
    #expect(summary.failed == 0, "\(summary)")
    #expect(Set(summary.servers.keys) == Set(servers.map(\.address)), "\(summary)")

    // Graceful: SIGTERM during a run fails no call.
    let graceful = try UserClientProcess(
      etcd: cluster,
      prefix: prefix,
      calls: 6000,
      concurrency: 8,
      progressEvery: 500
    )
    // The stop lands inside the run: 1,000 of the 6,000 calls have ended.
    try await graceful.waitForProgress(1000)
    servers[0].process.signal(SIGTERM)
    let afterGraceful = try await graceful.summary()
    #expect(afterGraceful.ok + afterGraceful.failed == 6000)
    try await waitUntil("the stopped server exits", within: .seconds(10)) {
      !servers[0].process.isRunning
    }
    #expect(servers[0].process.terminationStatus == 0)
    #expect(afterGraceful.failed == 0, "\(afterGraceful)")

    // Abrupt: SIGKILL; failures are bounded by the calls in flight, and discovery drops it.
    let watcher = try RunningRegistry(cluster, prefix: prefix)
    let recorder = WatchRecorder(watcher.registry.watch("user-server"))
    defer { recorder.cancel() }
    try await recorder.waitForAddresses([servers[1].address, servers[2].address])
    let abrupt = try UserClientProcess(
      etcd: cluster,
      prefix: prefix,
      calls: 6000,
      concurrency: 8,
      progressEvery: 500
    )
    try await abrupt.waitForProgress(1000)
    servers[1].process.signal(SIGKILL)
    let killed = ContinuousClock.now
    try await recorder.waitForAddresses([servers[2].address], within: .seconds(7))
    let gone = ContinuousClock.now - killed
    print("SIGKILLed user-server left discovery after \(gone) (TTL 5 s)")
    #expect(gone < .seconds(6))
    let afterAbrupt = try await abrupt.summary()
    #expect(
      afterAbrupt.failed <= 8,
      "only calls in flight on the dead connection may fail: \(afterAbrupt)"
    )
    #expect(afterAbrupt.ok >= 6000 - 8)
    await watcher.stop()
  }
}

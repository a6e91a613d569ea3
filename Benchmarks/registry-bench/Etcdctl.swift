import Dispatch
import Foundation
import RegistryPrimitives
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// etcd's own command-line client, the second client the floor is compared with.
///
/// Each `etcdctl` invocation is a new process that dials etcd, so its per-operation times include
/// process start and connection set-up; ``version(endpoint:)`` times a process that does not
/// touch the network, to show that part on its own.
enum Etcdctl {
  struct Outcome: Sendable {
    var status: Int32
    var elapsed: Duration
    var output: String
  }

  static var isInstalled: Bool {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    return path.split(separator: ":").contains {
      FileManager.default.isExecutableFile(atPath: "\($0)/etcdctl")
    }
  }

  /// Runs `etcdctl --endpoints=<endpoint> <arguments>`, timed from spawn to exit.
  ///
  /// Its output goes to /dev/null unless `capture` is set; printing is part of the time either way.
  static func run(
    _ arguments: [String],
    endpoint: String?,
    capture: Bool = false
  ) async throws -> Outcome {
    let full = (endpoint.map { ["--endpoints=\($0)"] } ?? []) + arguments
    let outputPath =
      capture ? NSTemporaryDirectory() + "registry-bench-\(UUID().uuidString).out" : nil
    defer { if let outputPath { try? FileManager.default.removeItem(atPath: outputPath) } }
    let (status, elapsed) = await withCheckedContinuation {
      (continuation: CheckedContinuation<(Int32, Duration), Never>) in
      // waitpid blocks a thread; keep it off the concurrency pool.
      DispatchQueue.global().async {
        continuation.resume(returning: Spawn.runToExit(full, outputPath: outputPath))
      }
    }
    guard status >= 0 else {
      throw BenchError("could not start etcdctl; install Debian's etcd-client")
    }
    let output = outputPath.flatMap { try? String(contentsOfFile: $0, encoding: .utf8) } ?? ""
    return Outcome(status: status, elapsed: elapsed, output: output)
  }

  /// The result of `etcdctl check perf`.
  struct CheckPerf: Sendable {
    var throughput: Double
    var slowest: Duration
    var stddev: Duration
    var passed: Bool
  }

  /// Parses the three result lines of `etcdctl check perf` (`PASS: Throughput is 149 writes/s`,
  /// `PASS: Slowest request took 0.080914s`, `PASS: Stddev is 0.002181s`, or their `FAIL:` forms).
  static func parseCheckPerf(_ output: String) -> CheckPerf? {
    let lines = output.split(whereSeparator: { $0 == "\n" || $0 == "\r" }).map(String.init)
    func number(in line: String?, before suffix: String) -> Double? {
      guard let line, let end = line.range(of: suffix, options: .backwards) else { return nil }
      let head = line[..<end.lowerBound]
      let digits = head.reversed().prefix { $0.isNumber || $0 == "." }
      return Double(String(digits.reversed()))
    }
    let throughput = number(in: lines.first { $0.contains("writes/s") }, before: " writes/s")
    let slowest = number(in: lines.first { $0.contains("Slowest request") }, before: "s")
    let stddev = number(in: lines.first { $0.contains("Stddev") }, before: "s")
    guard let throughput, let slowest, let stddev else { return nil }
    let passed = !lines.contains { $0.hasPrefix("FAIL") }
    return CheckPerf(
      throughput: throughput,
      slowest: .nanoseconds(Int64(slowest * 1e9)),
      stddev: .nanoseconds(Int64(stddev * 1e9)),
      passed: passed
    )
  }
}

/// A long-running `etcdctl watch --prefix`, whose printed keys are recorded as they are read.
final class EtcdctlWatch: Sendable {
  private let pid: pid_t
  private let done = Locked(false)

  /// Starts the watch; every printed line that starts with `prefix` (the key lines) is recorded
  /// in `arrivals` at the instant it was read from the pipe.
  init(endpoint: String, prefix: String, arrivals: Arrivals) throws {
    var fds: [Int32] = [0, 0]
    guard pipe(&fds) == 0 else { throw BenchError("pipe failed: errno \(errno)") }
    let (readEnd, writeEnd) = (fds[0], fds[1])
    let arguments = ["--endpoints=\(endpoint)", "watch", "--prefix", prefix]
    guard let pid = Spawn.start(arguments, stdoutFD: writeEnd, closeInChild: readEnd) else {
      close(readEnd)
      close(writeEnd)
      throw BenchError("could not start etcdctl watch; install Debian's etcd-client")
    }
    close(writeEnd)
    self.pid = pid
    let thread = Thread {
      readLines(from: readEnd, chunkSize: 65536) { line, now in
        if line.hasPrefix(prefix) { arrivals.record(line, at: now) }
      }
    }
    thread.start()
  }

  /// Stops the process (SIGTERM) and reaps it.
  func stop() async {
    let first = self.done.withLock { done in
      defer { done = true }
      return !done
    }
    guard first else { return }
    kill(self.pid, SIGTERM)
    let pid = self.pid
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
      DispatchQueue.global().async {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1, errno == EINTR {}
        continuation.resume()
      }
    }
  }
}

/// posix_spawn of etcdctl, so a run is timed without Foundation's process bookkeeping.
private enum Spawn {
  static func runToExit(_ arguments: [String], outputPath: String?) -> (Int32, Duration) {
    let output = outputPath.map { open($0, O_WRONLY | O_CREAT | O_TRUNC, 0o644) } ?? -1
    defer { if output >= 0 { close(output) } }
    let begin = ContinuousClock.now
    guard let pid = start(arguments, stdoutFD: output >= 0 ? output : nil, closeInChild: nil)
    else { return (-1, .zero) }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) == -1, errno == EINTR {}
    let elapsed = ContinuousClock.now - begin
    // WIFEXITED / WEXITSTATUS, which Swift does not import as macros.
    let exited = status & 0x7F == 0
    return (exited ? (status >> 8) & 0xFF : 128 + (status & 0x7F), elapsed)
  }

  /// Starts etcdctl with stdin and stderr on /dev/null and stdout on `stdoutFD` (or /dev/null).
  static func start(_ arguments: [String], stdoutFD: Int32?, closeInChild: Int32?) -> pid_t? {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    if let stdoutFD {
      posix_spawn_file_actions_adddup2(&actions, stdoutFD, 1)
    } else {
      posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    }
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    if let closeInChild { posix_spawn_file_actions_addclose(&actions, closeInChild) }
    var environment = ProcessInfo.processInfo.environment
    environment["ETCDCTL_API"] = "3"
    let argv: [UnsafeMutablePointer<CChar>?] = (["etcdctl"] + arguments).map { strdup($0) } + [nil]
    let envp: [UnsafeMutablePointer<CChar>?] =
      environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer {
      for pointer in argv { free(pointer) }
      for pointer in envp { free(pointer) }
    }
    var pid = pid_t()
    guard posix_spawnp(&pid, "etcdctl", &actions, nil, argv, envp) == 0 else { return nil }
    return pid
  }
}

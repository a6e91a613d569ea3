import Foundation
import RegistryPrimitives
import Synchronization

/// Runs short helper commands (etcdctl, openssl, h2load in the tests) without blocking the
/// concurrency pool.
package enum Command {
  package struct Output {
    package var status: Int32
    package var stdout: String
    package var stderr: String
    /// Whether the run's `timeout` passed and the process was killed (SIGKILL) for it.
    package var timedOut = false
  }

  /// Finds `name` on `PATH`; `etcd` and `etcdctl` in `ETCD_BIN_DIR` first when it is set (the
  /// tests run against etcd 3.5 that way: `ETCD_BIN_DIR=$(scripts/etcd35-bin-dir)`).
  package static func locate(_ name: String) -> String? {
    if name.contains("/") { return FileManager.default.isExecutableFile(atPath: name) ? name : nil }
    if name == "etcd" || name == "etcdctl",
      let directory = ProcessInfo.processInfo.environment["ETCD_BIN_DIR"], !directory.isEmpty
    {
      let candidate = "\(directory)/\(name)"
      return FileManager.default.isExecutableFile(atPath: candidate) ? candidate : nil
    }
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
    for directory in path.split(separator: ":") {
      let candidate = "\(directory)/\(name)"
      if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
    }
    return nil
  }

  /// Runs `executable` (a path, or a name looked up as ``locate(_:)`` does) with `arguments` and
  /// collects its output; throws only when it cannot start.
  ///
  /// - Parameters:
  ///   - environment: set over this process's environment.
  ///   - input: what the command reads on its standard input (`/dev/null` when `nil`).
  ///   - timeout: after this long the command is killed with SIGKILL and the output says
  ///     `timedOut`; `nil` waits as long as it runs.
  ///
  /// Spawned with `posix_spawn` and reaped by `waitpid` on a thread of its own, not with
  /// Foundation's `Process`, which keeps every instance alive until the process exits (each is a
  /// leak report under AddressSanitizer, `scripts/sanitize address`).
  package static func run(
    _ executable: String,
    _ arguments: [String],
    environment: [String: String] = [:],
    input: String? = nil,
    timeout: Duration? = nil
  ) async throws -> Output {
    guard let path = locate(executable) else { throw HarnessError.missing(executable) }
    let directory = FileManager.default.temporaryDirectory
      .appendingPathComponent("harness-cmd-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    let outPath = directory.appendingPathComponent("out").path
    let errPath = directory.appendingPathComponent("err").path
    var inPath = "/dev/null"
    if let input {
      inPath = directory.appendingPathComponent("in").path
      guard FileManager.default.createFile(atPath: inPath, contents: Data(input.utf8)) else {
        throw HarnessError("could not write the input of \(path) to \(inPath)")
      }
    }

    var merged = ProcessInfo.processInfo.environment
    merged.merge(environment) { $1 }
    let pid = try spawn(
      path,
      arguments,
      environment: merged.map { "\($0.key)=\($0.value)" },
      stdin: inPath,
      stdout: outPath,
      stderr: errPath
    )
    let watchdog = timeout.map { timeout in
      Task {
        do { try await Task.sleep(for: timeout) } catch { return false }
        kill(pid, SIGKILL)
        return true
      }
    }
    let status = await waitForExit(pid)
    watchdog?.cancel()
    return Output(
      status: status,
      stdout: (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "",
      stderr: (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "",
      timedOut: await watchdog?.value ?? false
    )
  }

  /// Runs `executable` as ``run(_:_:environment:input:timeout:)`` does and returns its standard
  /// output.
  ///
  /// - Throws: ``HarnessError`` with the command line and its output when it cannot start or exits
  ///   with a status other than 0.
  package static func output(
    _ executable: String,
    _ arguments: [String],
    environment: [String: String] = [:]
  ) async throws -> String {
    let run = try await Self.run(executable, arguments, environment: environment)
    guard run.status == 0 else {
      throw HarnessError(
        "`\(([executable] + arguments).joined(separator: " "))` failed with status \(run.status): \(run.stderr)\(run.stdout)"
      )
    }
    return run.stdout
  }

  /// Starts `path` with its standard input from `stdin` and its output into two files.
  private static func spawn(
    _ path: String,
    _ arguments: [String],
    environment: [String],
    stdin: String,
    stdout: String,
    stderr: String
  ) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    let create = O_WRONLY | O_CREAT | O_TRUNC
    posix_spawn_file_actions_addopen(&actions, 0, stdin, O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, stdout, create, 0o644)
    posix_spawn_file_actions_addopen(&actions, 2, stderr, create, 0o644)

    let argv = ([path] + arguments).map { strdup($0) } + [nil]
    let envp = environment.map { strdup($0) } + [nil]
    defer {
      for pointer in argv { free(pointer) }
      for pointer in envp { free(pointer) }
    }
    var pid: pid_t = 0
    let result = posix_spawn(&pid, path, &actions, nil, argv, envp)
    guard result == 0 else {
      throw HarnessError("could not start \(path): \(String(cString: strerror(result)))")
    }
    return pid
  }

  /// Waits on a thread of its own (waitpid blocks) until `pid` exits; returns its exit status, or
  /// the number of the signal that ended it (as Foundation's `terminationStatus` does).
  private static func waitForExit(_ pid: pid_t) async -> Int32 {
    await withCheckedContinuation { continuation in
      Thread.detachNewThread {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1, errno == EINTR {}
        let signal = status & 0x7f
        continuation.resume(returning: signal == 0 ? (status >> 8) & 0xff : signal)
      }
    }
  }
}

/// Hands out free loopback TCP ports, never the same one twice in a process.
enum FreePorts {
  private static let handedOut = Locked(Set<Int>())

  static func next() throws -> Int {
    for _ in 0 ..< 100 {
      let port = try probe()
      let fresh = handedOut.withLock { $0.insert(port).inserted }
      if fresh { return port }
    }
    throw HarnessError("could not find a free loopback port after 100 tries")
  }

  private static func probe() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw HarnessError("socket() failed: errno \(errno)") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let bound = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
      }
    }
    guard bound == 0 else { throw HarnessError("bind() failed: errno \(errno)") }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let named = withUnsafeMutablePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    guard named == 0 else { throw HarnessError("getsockname() failed: errno \(errno)") }
    return Int(UInt16(bigEndian: address.sin_port))
  }
}

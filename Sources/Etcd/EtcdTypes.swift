/// The header etcd puts on every response.
public struct EtcdResponseHeader: Hashable, Sendable {
  /// The cluster's id; it changes when etcd is wiped and re-created.
  public var clusterID: UInt64
  /// The id of the member that answered.
  public var memberID: UInt64
  /// The store revision when the request was served.
  public var revision: Int64
  /// The raft term when the request was served.
  public var raftTerm: UInt64

}

extension EtcdResponseHeader {
  init(_ header: Etcdserverpb_ResponseHeader) {
    self.init(
      clusterID: header.clusterID,
      memberID: header.memberID,
      revision: header.revision,
      raftTerm: header.raftTerm
    )
  }
}

/// A key and its value, with etcd's revision bookkeeping.
public struct EtcdKeyValue: Hashable, Sendable {
  /// The key's bytes.
  public var key: [UInt8]
  /// The value's bytes (empty with `keysOnly`).
  public var value: [UInt8]
  /// The revision at which the key was created (since its last deletion).
  public var createRevision: Int64
  /// The revision of the last change of the key.
  public var modRevision: Int64
  /// The number of changes since creation (0 for a deleted key).
  public var version: Int64
  /// The lease the key is attached to, 0 for none.
  public var lease: Int64

  /// The key as UTF-8 text.
  public var keyString: String { String(decoding: self.key, as: UTF8.self) }
  /// The value as UTF-8 text.
  public var valueString: String { String(decoding: self.value, as: UTF8.self) }

}

extension EtcdKeyValue {
  init(_ kv: Etcdserverpb_KeyValue) {
    self.init(
      key: Array(kv.key),
      value: Array(kv.value),
      createRevision: kv.createRevision,
      modRevision: kv.modRevision,
      version: kv.version,
      lease: kv.lease
    )
  }
}

/// Which keys an operation applies to: one key, a prefix, a range, or everything from a key on.
public struct EtcdKeyRange: Hashable, Sendable {
  /// The first key.
  public var key: [UInt8]
  /// The end of the range (exclusive); empty for the single key `key`.
  public var rangeEnd: [UInt8]

  /// Exactly `key`.
  public static func key(_ key: String) -> Self { Self(key: Array(key.utf8), rangeEnd: []) }

  /// Every key that starts with `prefix`. Use a prefix with a trailing separator (such as
  /// `/micro/user/`) so that `user` does not match `user-server`.
  public static func prefix(_ prefix: String) -> Self {
    let key = Array(prefix.utf8)
    return Self(key: key, rangeEnd: Self.prefixEnd(key))
  }

  /// Keys from `start` (inclusive) to `end` (exclusive).
  public static func range(from start: String, to end: String) -> Self {
    Self(key: Array(start.utf8), rangeEnd: Array(end.utf8))
  }

  /// Every key from `start` on.
  public static func from(_ start: String) -> Self { Self(key: Array(start.utf8), rangeEnd: [0]) }

  /// Every key.
  public static var all: Self { Self(key: [0], rangeEnd: [0]) }

  /// Creates a range from raw bytes.
  public init(key: [UInt8], rangeEnd: [UInt8]) {
    self.key = key
    self.rangeEnd = rangeEnd
  }

  /// The smallest key greater than every key with this prefix: the prefix with its last byte
  /// below 0xff incremented; `[0]` (to the end of the keyspace) when every byte is 0xff.
  static func prefixEnd(_ prefix: [UInt8]) -> [UInt8] {
    var end = prefix
    while let last = end.last {
      if last < 0xFF {
        end[end.count - 1] = last + 1
        return end
      }
      end.removeLast()
    }
    return [0]
  }

  func validate(_ operation: String) throws(EtcdError) {
    guard !self.key.isEmpty else {
      throw EtcdError(
        code: .invalidArgument,
        message: "\(operation): the key is empty; etcd keys need at least one byte"
      )
    }
    if !self.rangeEnd.isEmpty, self.rangeEnd != [0],
      !self.key.lexicographicallyPrecedes(self.rangeEnd)
    {
      throw EtcdError(
        code: .invalidArgument,
        message:
          "\(operation): the range end must sort after the start key (an empty range); use .prefix or .key"
      )
    }
  }
}

/// Options of a read (`get`).
public struct EtcdGetOptions: Hashable, Sendable {
  /// The most keys to return; 0 for no limit. ``EtcdGetResult/more`` says whether more exist.
  public var limit: Int64 = 0
  /// Read at this revision instead of the latest; 0 for the latest.
  public var revision: Int64 = 0
  /// Serve from the member's local state without a consensus round: faster, possibly stale.
  public var serializable = false
  /// Return keys without values.
  public var keysOnly = false
  /// Return only the count.
  public var countOnly = false
  /// Sort order of the result.
  public var sortOrder: SortOrder = .none
  /// What to sort by.
  public var sortTarget: SortTarget = .key

  /// Default options: a linearizable read of the latest revision, no limit.
  public init() {}

  /// Sort orders.
  public struct SortOrder: Hashable, Sendable {
    let raw: Etcdserverpb_RangeRequest.SortOrder
    /// etcd's natural (key) order.
    public static var none: Self { Self(raw: .none) }
    /// Ascending.
    public static var ascending: Self { Self(raw: .ascend) }
    /// Descending.
    public static var descending: Self { Self(raw: .descend) }
  }

  /// Sort targets.
  public struct SortTarget: Hashable, Sendable {
    let raw: Etcdserverpb_RangeRequest.SortTarget
    /// By key.
    public static var key: Self { Self(raw: .key) }
    /// By version.
    public static var version: Self { Self(raw: .version) }
    /// By creation revision.
    public static var createRevision: Self { Self(raw: .create) }
    /// By modification revision.
    public static var modRevision: Self { Self(raw: .mod) }
    /// By value.
    public static var value: Self { Self(raw: .value) }
  }
}

/// The result of a `get`.
public struct EtcdGetResult: Hashable, Sendable {
  /// The response header; its revision is the revision the read saw.
  public var header: EtcdResponseHeader
  /// The keys found, in the requested order.
  public var kvs: [EtcdKeyValue]
  /// The number of keys in the range (not limited by `limit`).
  public var count: Int64
  /// Whether more keys exist beyond `limit`.
  public var more: Bool

}

extension EtcdGetResult {
  init(_ response: Etcdserverpb_RangeResponse) {
    self.init(
      header: EtcdResponseHeader(response.header),
      kvs: response.kvs.map(EtcdKeyValue.init),
      count: response.count,
      more: response.more
    )
  }
}

/// The result of a `put`.
public struct EtcdPutResult: Hashable, Sendable {
  /// The response header; its revision is the revision of the write.
  public var header: EtcdResponseHeader
  /// The previous key-value, when asked for with `previous: true` and the key existed.
  public var previous: EtcdKeyValue?

  init(_ response: Etcdserverpb_PutResponse) {
    self.header = EtcdResponseHeader(response.header)
    self.previous = response.hasPrevKv ? EtcdKeyValue(response.prevKv) : nil
  }
}

/// The result of a `delete`.
public struct EtcdDeleteResult: Hashable, Sendable {
  /// The response header.
  public var header: EtcdResponseHeader
  /// How many keys were deleted.
  public var deleted: Int64
  /// The deleted key-values, when asked for with `previous: true`.
  public var previous: [EtcdKeyValue]

  init(_ response: Etcdserverpb_DeleteRangeResponse) {
    self.header = EtcdResponseHeader(response.header)
    self.deleted = response.deleted
    self.previous = response.prevKvs.map(EtcdKeyValue.init)
  }
}

/// A granted lease.
///
/// Operations on a lease name it by its ``ID``, as etcd does (a key's lease, a lease revoked or
/// looked up); ``EtcdClient/keepAlive(_:)`` takes the granted lease itself, because its TTL paces
/// the renewals.
public struct EtcdLease: Hashable, Sendable {
  /// etcd's lease ID.
  public typealias ID = Int64

  /// The lease ID, to attach keys to.
  public var id: ID
  /// The time to live etcd granted (whole seconds).
  public var ttl: Duration
}

/// What etcd knows of a lease.
public struct EtcdLeaseInfo: Hashable, Sendable {
  /// The lease ID.
  public var id: EtcdLease.ID
  /// The time it has left (whole seconds); `nil` when it does not exist (expired or revoked).
  public var ttl: Duration?
  /// The time to live it was granted with.
  public var grantedTTL: Duration
  /// The keys attached to it, when asked for.
  public var keys: [[UInt8]]
}

/// A member of the etcd cluster.
public struct EtcdMember: Hashable, Sendable {
  /// The member id.
  public var id: UInt64
  /// The member's name (empty until it has started).
  public var name: String
  /// URLs for peer traffic.
  public var peerURLs: [String]
  /// URLs clients use.
  public var clientURLs: [String]
  /// Whether it is a non-voting learner.
  public var isLearner: Bool
}

/// The status of one member.
public struct EtcdStatus: Hashable, Sendable {
  /// The response header (its member id is the member that answered).
  public var header: EtcdResponseHeader
  /// The etcd version of the member.
  public var version: String
  /// The size of the backend database in bytes.
  public var dbSize: Int64
  /// The member id of the current leader, 0 when there is none.
  public var leader: UInt64
  /// The raft index.
  public var raftIndex: UInt64
  /// The raft term.
  public var raftTerm: UInt64
  /// Alarms or errors the member reports.
  public var errors: [String]
}

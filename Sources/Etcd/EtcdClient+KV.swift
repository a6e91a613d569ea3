import GRPCCore
import GRPCProtobuf
import SwiftProtobuf

import struct Foundation.Data

extension EtcdClient {
  /// Reads a key, a prefix or a range.
  ///
  /// ```swift
  /// let result = try await etcd.get(.prefix("/micro/user-server/"))
  /// for kv in result.kvs { print(kv.keyString, kv.valueString) }
  /// ```
  ///
  /// - Throws: ``EtcdError``: `invalidArgument` for an empty key or a reversed range, `compacted`
  ///   when `options.revision` has been compacted, `unavailable`/`timeout` when no endpoint
  ///   answers in time.
  public func get(
    _ range: EtcdKeyRange,
    options: EtcdGetOptions = EtcdGetOptions()
  ) async throws
    -> EtcdGetResult
  {
    try range.validate("get")
    return try await self.range(range, options, deserializer: RangeResponseDeserializer())
  }

  /// One Range request, its response decoded by `deserializer` (by hand: a listing of thousands
  /// of keys is the registry's hottest read).
  private func range<Deserializer: MessageDeserializer>(
    _ range: EtcdKeyRange,
    _ options: EtcdGetOptions,
    deserializer: Deserializer
  ) async throws -> Deserializer.Message where Deserializer.Message: Sendable {
    let request = Self.rangeRequest(range, options)
    return try await self.unary("get") { grpc, metadata, callOptions in
      try await grpc.unary(
        request: ClientRequest(message: request, metadata: metadata),
        descriptor: Etcdserverpb_KV.Method.Range.descriptor,
        serializer: ProtobufSerializer<Etcdserverpb_RangeRequest>(),
        deserializer: deserializer,
        options: callOptions
      ) { try $0.message }
    }
  }

  /// Reads a whole range in pages of at most `pageSize` keys, every page at the revision of the
  /// first, so the result is one consistent snapshot however many pages it takes.
  ///
  /// A range too big for one response (each response is capped, 4 MiB by default) is read
  /// this way; ``get(_:options:)`` of the same range fails with `responseTooLarge`. A page
  /// that still exceeds the cap (large values) is asked for again with half as many keys. When
  /// the snapshot's revision is compacted before the last page, the read starts over at the
  /// current revision.
  ///
  /// ```swift
  /// let all = try await etcd.getAll(.prefix("/micro/user-server/"))
  /// print(all.kvs.count, "keys at revision", all.header.revision)
  /// ```
  ///
  /// - Parameters:
  ///   - range: The keys to read.
  ///   - pageSize: The most keys per request (at least 1). etcd walks its index over the rest
  ///     of the range for every page, so a few large pages cost less than many small ones:
  ///     100,000 keys took 0.5 s in pages of 10,000 and 1.9 s in pages of 1,000 here.
  /// - Returns: Every key in the range in key order, the first page's header (its revision is
  ///   the snapshot's), `count` the number of keys, `more` false.
  /// - Throws: ``EtcdError`` as ``get(_:options:)``.
  public func getAll(_ range: EtcdKeyRange, pageSize: Int = 10_000) async throws -> EtcdGetResult {
    try range.validate("get")
    let result = try await Self.readPages(range, pageSize: pageSize) { range, options in
      let page = try await self.get(range, options: options)
      return EtcdRangePage(
        header: page.header,
        elements: page.kvs,
        lastKey: page.kvs.last?.key,
        more: page.more
      )
    }
    return EtcdGetResult(
      header: result.header,
      kvs: result.elements,
      count: Int64(result.elements.count),
      more: false
    )
  }

  /// ``getAll(_:pageSize:)`` that hands every key-value, in place, to `visit`, in key order: no
  /// copy of keys and values for a reader that decodes them at once (the registry's listing).
  /// `visit` runs while each response is decoded; the views are valid only during the call.
  /// When the read starts over (its revision was compacted between pages), `restart` runs
  /// first: forget what was visited. Returns the header of the first page (its revision is the
  /// snapshot's).
  package func visitAll(
    _ range: EtcdKeyRange,
    pageSize: Int = 10_000,
    restart: () -> Void = {},
    visit: @escaping @Sendable (EtcdKeyValueView) -> Void
  ) async throws -> EtcdResponseHeader {
    try range.validate("get")
    let deserializer = RangeVisitingDeserializer(visit: visit)
    return try await Self.readPages(range, pageSize: pageSize, restart: restart) { range, options in
      try await self.range(range, options, deserializer: deserializer)
    }.header
  }

  /// Reads pages of at most `pageSize` keys with `read`, every page at the first one's revision;
  /// a compaction of that revision meanwhile starts over (up to 3 times).
  static func readPages<Element: Sendable>(
    _ range: EtcdKeyRange,
    pageSize: Int,
    restart: () -> Void = {},
    read: (EtcdKeyRange, EtcdGetOptions) async throws -> EtcdRangePage<Element>
  ) async throws -> EtcdRangePage<Element> {
    var restarts = 0
    while true {
      if restarts > 0 { restart() }
      do {
        var options = EtcdGetOptions()
        options.limit = Int64(max(pageSize, 1))
        var all = try await Self.readPage(range, options: &options, read: read)
        // Every later page reads the snapshot the first one saw.
        options.revision = all.header.revision
        var page = all
        var pageRange = range
        while page.more, let last = page.lastKey {
          // The next key after `last` in byte order is `last` followed by a zero byte.
          pageRange.key = last + [0]
          page = try await Self.readPage(pageRange, options: &options, read: read)
          all.elements += page.elements
        }
        all.more = false
        return all
      } catch let error as EtcdError where error.code == .compacted && restarts < 3 {
        restarts += 1
      }
    }
  }

  /// One page; a page over the response cap is asked for again with half as many keys, and
  /// the smaller limit is kept for the pages after it.
  private static func readPage<Element>(
    _ range: EtcdKeyRange,
    options: inout EtcdGetOptions,
    read: (EtcdKeyRange, EtcdGetOptions) async throws -> EtcdRangePage<Element>
  ) async throws -> EtcdRangePage<Element> {
    while true {
      do {
        return try await read(range, options)
      } catch let error as EtcdError where error.code == .responseTooLarge && options.limit > 1 {
        options.limit = max(options.limit / 2, 1)
      }
    }
  }

  /// Reads one key; `nil` when it does not exist.
  public func get(_ key: String) async throws -> EtcdKeyValue? {
    try await self.get(.key(key)).kvs.first
  }

  /// Writes `value` at `key`, attached to `lease` (0 for none).
  ///
  /// - Parameters:
  ///   - previous: Return the key-value the write replaced.
  /// - Throws: ``EtcdError``: `leaseNotFound` when the lease is gone, `invalidArgument` for an
  ///   empty key or a value over etcd's request size limit (1.5 MiB by default).
  @discardableResult
  public func put(
    _ key: String,
    value: [UInt8],
    lease: Int64 = 0,
    previous: Bool = false
  ) async throws -> EtcdPutResult {
    try EtcdKeyRange.key(key).validate("put")
    let request = Self.putRequest(
      key: Array(key.utf8),
      value: value,
      lease: lease,
      previous: previous
    )
    let response = try await self.unary("put") { grpc, metadata, options in
      try await Etcdserverpb_KV.Client(wrapping: grpc).put(
        request,
        metadata: metadata,
        options: options
      )
    }
    return EtcdPutResult(response)
  }

  /// Writes a text value.
  @discardableResult
  public func put(
    _ key: String,
    value: String,
    lease: Int64 = 0,
    previous: Bool = false
  ) async throws
    -> EtcdPutResult
  {
    try await self.put(key, value: Array(value.utf8), lease: lease, previous: previous)
  }

  /// Deletes a key, a prefix or a range.
  @discardableResult
  public func delete(_ range: EtcdKeyRange, previous: Bool = false) async throws -> EtcdDeleteResult
  {
    try range.validate("delete")
    let request = Self.deleteRequest(range, previous: previous)
    let response = try await self.unary("delete") { grpc, metadata, options in
      try await Etcdserverpb_KV.Client(wrapping: grpc).deleteRange(
        request,
        metadata: metadata,
        options: options
      )
    }
    return EtcdDeleteResult(response)
  }

  /// Runs a transaction: if every comparison holds, the `then` operations, otherwise the `else`
  /// operations, atomically at one revision.
  ///
  /// ```swift
  /// // Create the key only if it does not exist.
  /// let result = try await etcd.transaction(
  ///   if: [.version(of: "/lock", .equal, 0)],
  ///   then: [.put("/lock", value: Array("me".utf8))],
  ///   else: [.get(.key("/lock"))]
  /// )
  /// ```
  public func transaction(
    if comparisons: [EtcdCompare],
    then success: [EtcdOperation],
    else failure: [EtcdOperation] = []
  ) async throws -> EtcdTransactionResult {
    var request = Etcdserverpb_TxnRequest()
    for comparison in comparisons {
      try comparison.range.validate("transaction comparison")
      request.compare.append(comparison.proto)
    }
    request.success = try success.map { try $0.proto() }
    request.failure = try failure.map { try $0.proto() }
    let response = try await self.unary("transaction") { grpc, metadata, options in
      try await Etcdserverpb_KV.Client(wrapping: grpc).txn(
        request,
        metadata: metadata,
        options: options
      )
    }
    return EtcdTransactionResult(response)
  }

  /// Compacts the history up to `revision`: older revisions can no longer be read or watched.
  public func compact(revision: Int64, physical: Bool = false) async throws {
    var request = Etcdserverpb_CompactionRequest()
    request.revision = revision
    request.physical = physical
    _ = try await self.unary("compact") { grpc, metadata, options in
      try await Etcdserverpb_KV.Client(wrapping: grpc).compact(
        request,
        metadata: metadata,
        options: options
      )
    }
  }

  static func rangeRequest(
    _ range: EtcdKeyRange,
    _ options: EtcdGetOptions
  ) -> Etcdserverpb_RangeRequest {
    var request = Etcdserverpb_RangeRequest()
    request.key = Data(range.key)
    request.rangeEnd = Data(range.rangeEnd)
    request.limit = options.limit
    request.revision = options.revision
    request.serializable = options.serializable
    request.keysOnly = options.keysOnly
    request.countOnly = options.countOnly
    request.sortOrder = options.sortOrder.raw
    request.sortTarget = options.sortTarget.raw
    return request
  }

  static func putRequest(
    key: [UInt8],
    value: [UInt8],
    lease: Int64,
    previous: Bool
  ) -> Etcdserverpb_PutRequest {
    var request = Etcdserverpb_PutRequest()
    request.key = Data(key)
    request.value = Data(value)
    request.lease = lease
    request.prevKv = previous
    return request
  }

  static func deleteRequest(
    _ range: EtcdKeyRange,
    previous: Bool
  ) -> Etcdserverpb_DeleteRangeRequest {
    var request = Etcdserverpb_DeleteRangeRequest()
    request.key = Data(range.key)
    request.rangeEnd = Data(range.rangeEnd)
    request.prevKv = previous
    return request
  }
}

/// A condition of a transaction.
public struct EtcdCompare: Sendable, Hashable {
  /// How a value is compared.
  public struct Operator: Sendable, Hashable {
    let raw: Etcdserverpb_Compare.CompareResult
    /// Equal.
    public static var equal: Self { Self(raw: .equal) }
    /// Not equal.
    public static var notEqual: Self { Self(raw: .notEqual) }
    /// Greater than.
    public static var greater: Self { Self(raw: .greater) }
    /// Less than.
    public static var less: Self { Self(raw: .less) }
  }

  let range: EtcdKeyRange
  let proto: Etcdserverpb_Compare

  private init(_ range: EtcdKeyRange, _ op: Operator, _ fill: (inout Etcdserverpb_Compare) -> Void)
  {
    var compare = Etcdserverpb_Compare()
    compare.key = Data(range.key)
    compare.rangeEnd = Data(range.rangeEnd)
    compare.result = op.raw
    fill(&compare)
    self.range = range
    self.proto = compare
  }

  /// Compares the key's version (0: the key does not exist).
  public static func version(of key: String, _ op: Operator, _ version: Int64) -> Self {
    Self(.key(key), op) {
      $0.target = .version
      $0.targetUnion = .version(version)
    }
  }

  /// Compares the key's creation revision (0: the key does not exist).
  public static func createRevision(of key: String, _ op: Operator, _ revision: Int64) -> Self {
    Self(.key(key), op) {
      $0.target = .create
      $0.targetUnion = .createRevision(revision)
    }
  }

  /// Compares the key's last modification revision.
  public static func modRevision(of key: String, _ op: Operator, _ revision: Int64) -> Self {
    Self(.key(key), op) {
      $0.target = .mod
      $0.targetUnion = .modRevision(revision)
    }
  }

  /// Compares the key's value.
  public static func value(of key: String, _ op: Operator, _ value: [UInt8]) -> Self {
    Self(.key(key), op) {
      $0.target = .value
      $0.targetUnion = .value(Data(value))
    }
  }

  /// Compares the key's lease.
  public static func lease(of key: String, _ op: Operator, _ lease: Int64) -> Self {
    Self(.key(key), op) {
      $0.target = .lease
      $0.targetUnion = .lease(lease)
    }
  }
}

/// An operation inside a transaction.
public struct EtcdOperation: Sendable, Hashable {
  private enum Kind: Hashable {
    case get(EtcdKeyRange, EtcdGetOptions)
    case put(String, [UInt8], lease: Int64, previous: Bool)
    case delete(EtcdKeyRange, previous: Bool)
  }

  private let kind: Kind

  /// A read.
  public static func get(_ range: EtcdKeyRange, options: EtcdGetOptions = EtcdGetOptions()) -> Self
  {
    Self(kind: .get(range, options))
  }

  /// A write.
  public static func put(
    _ key: String,
    value: [UInt8],
    lease: Int64 = 0,
    previous: Bool = false
  ) -> Self {
    Self(kind: .put(key, value, lease: lease, previous: previous))
  }

  /// A deletion.
  public static func delete(_ range: EtcdKeyRange, previous: Bool = false) -> Self {
    Self(kind: .delete(range, previous: previous))
  }

  func proto() throws(EtcdError) -> Etcdserverpb_RequestOp {
    var op = Etcdserverpb_RequestOp()
    switch self.kind {
    case .get(let range, let options):
      try range.validate("transaction get")
      op.request = .requestRange(EtcdClient.rangeRequest(range, options))
    case .put(let key, let value, let lease, let previous):
      try EtcdKeyRange.key(key).validate("transaction put")
      op.request = .requestPut(
        EtcdClient.putRequest(key: Array(key.utf8), value: value, lease: lease, previous: previous)
      )
    case .delete(let range, let previous):
      try range.validate("transaction delete")
      op.request = .requestDeleteRange(EtcdClient.deleteRequest(range, previous: previous))
    }
    return op
  }
}

/// The result of a transaction.
public struct EtcdTransactionResult: Sendable, Hashable {
  /// The result of one operation.
  public enum Response: Sendable, Hashable {
    /// A read's result.
    case get(EtcdGetResult)
    /// A write's result.
    case put(EtcdPutResult)
    /// A deletion's result.
    case delete(EtcdDeleteResult)
  }

  /// The response header; its revision is the transaction's.
  public var header: EtcdResponseHeader
  /// Whether the comparisons held (the `then` branch ran).
  public var succeeded: Bool
  /// The results of the branch that ran, in order.
  public var responses: [Response]

  init(_ response: Etcdserverpb_TxnResponse) {
    self.header = EtcdResponseHeader(response.header)
    self.succeeded = response.succeeded
    self.responses = response.responses.compactMap { op in
      switch op.response {
      case .responseRange(let range): return .get(EtcdGetResult(range))
      case .responsePut(let put): return .put(EtcdPutResult(put))
      case .responseDeleteRange(let delete): return .delete(EtcdDeleteResult(delete))
      default: return nil
      }
    }
  }
}

/// The key layout of a registry in a key-value store: `<prefix>/<service>/<address>`.
///
/// Listing and watching use the service prefix *with* its trailing slash
/// (`/micro/user-server/`), so that `user` never matches `user-server`.
///
/// ```swift
/// let keyspace = try RegistryKeyspace(prefix: "/micro")
/// keyspace.key(service: "user-server", address: "10.0.0.7:8082")  // "/micro/user-server/10.0.0.7:8082"
/// keyspace.servicePrefix("user-server")                           // "/micro/user-server/"
/// ```
public struct RegistryKeyspace: Hashable, Sendable {
  /// The prefix, with a leading slash and no trailing slash, such as `/micro`.
  public let prefix: String

  /// The Go design's default prefix, `/micro`.
  public static var `default`: Self { Self(normalized: "/micro") }

  /// Creates a key layout under `prefix`; a missing leading slash is added and trailing slashes
  /// are dropped.
  ///
  /// - Throws: ``RegistryError`` (`invalidArgument`) when the prefix holds spaces or control
  ///   characters, or is longer than 512 bytes.
  public init(prefix: String) throws(RegistryError) {
    guard prefix.utf8.count <= 512,
      !prefix.unicodeScalars.contains(where: {
        $0.properties.isWhitespace || $0.properties.generalCategory == .control
      })
    else {
      throw .invalid(
        "prefix",
        "key prefix '\(prefix.prefix(60))' must be at most 512 bytes without spaces or control characters, such as /micro"
      )
    }
    var normalized = prefix
    while normalized.hasSuffix("/") { normalized.removeLast() }
    if !normalized.hasPrefix("/") { normalized = "/" + normalized }
    if normalized == "/" { normalized = "" }
    self.init(normalized: normalized)
  }

  private init(normalized: String) {
    self.prefix = normalized
  }

  /// The prefix every key of this registry starts with, with its trailing slash (`/micro/`).
  public var rootPrefix: String { self.prefix + "/" }

  /// The key of one instance.
  public func key(service: String, address: String) -> String {
    "\(self.prefix)/\(service)/\(address)"
  }

  /// The key of one instance.
  public func key(for instance: ServiceInstance) -> String {
    self.key(service: instance.name, address: instance.address)
  }

  /// The prefix of every key of one service, with the trailing slash (`/micro/user-server/`).
  public func servicePrefix(_ service: String) -> String {
    "\(self.prefix)/\(service)/"
  }

  /// Splits a key of this layout into service and address; `nil` for keys outside it.
  public func parse(_ key: String) -> (service: String, address: String)? {
    // On the UTF-8 bytes: no Unicode-aware prefix or character counting per key.
    let root = self.rootPrefix.utf8
    let bytes = key.utf8
    guard bytes.starts(with: root) else { return nil }
    let rest = bytes[bytes.index(bytes.startIndex, offsetBy: root.count)...]
    guard let slash = rest.firstIndex(of: UInt8(ascii: "/")) else { return nil }
    let service = rest[..<slash]
    let address = rest[rest.index(after: slash)...]
    guard !service.isEmpty, !address.isEmpty else { return nil }
    return (String(Substring(service)), String(Substring(address)))
  }

}

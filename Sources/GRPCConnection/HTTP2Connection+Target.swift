extension HTTP2Connection {
  /// The one endpoint an ``HTTP2Connection`` connects to.
  ///
  /// ```swift
  /// let target = HTTP2Connection.Target.host("127.0.0.1", port: 2379)
  /// ```
  public struct Target: Sendable, Hashable, CustomStringConvertible {
    enum Kind: Hashable {
      case host(String, port: Int)
      case unixDomainSocket(path: String)
    }

    let kind: Kind

    /// A host name (resolved when connecting) or an IP address, and a port.
    public static func host(_ host: String, port: Int) -> Self {
      Self(kind: .host(Self.stripBrackets(host), port: port))
    }

    /// An IPv4 address and a port.
    public static func ipv4(host: String, port: Int) -> Self {
      Self(kind: .host(host, port: port))
    }

    /// An IPv6 address (with or without brackets) and a port.
    public static func ipv6(host: String, port: Int) -> Self {
      Self(kind: .host(Self.stripBrackets(host), port: port))
    }

    /// A Unix domain socket.
    public static func unixDomainSocket(path: String) -> Self {
      Self(kind: .unixDomainSocket(path: path))
    }

    /// `host:port` (IPv6 in brackets) or `unix:path`.
    public var description: String {
      switch self.kind {
      case .host(let host, let port):
        return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
      case .unixDomainSocket(let path):
        return "unix:\(path)"
      }
    }

    /// The default `:authority` for requests to this target.
    var defaultAuthority: String {
      switch self.kind {
      case .host:
        return self.description
      case .unixDomainSocket:
        return "localhost"
      }
    }

    /// The host name for TLS server name indication, if the target has one.
    var host: String? {
      switch self.kind {
      case .host(let host, _):
        return host
      case .unixDomainSocket:
        return nil
      }
    }

    private static func stripBrackets(_ host: String) -> String {
      if host.hasPrefix("["), host.hasSuffix("]") {
        return String(host.dropFirst().dropLast())
      }
      return host
    }
  }
}

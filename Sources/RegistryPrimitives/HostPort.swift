/// A `host:port` pair as written in endpoints and addresses: `127.0.0.1:2379`, `etcd-0:2379`,
/// `[::1]:2379` (brackets around an IPv6 host are removed).
///
/// The project's one split of `host:port` for places that only need the two parts (etcd
/// endpoints, test helpers). Registered addresses go through `ServiceAddress`, which also
/// validates the host and explains what is wrong.
package struct HostPort: Hashable, Sendable {
  package var host: String
  package var port: Int

  package init(host: String, port: Int) {
    self.host = host
    self.port = port
  }

  /// Splits `text` at its last colon; `nil` if there is no port in 1...65535, no host, or a URL
  /// scheme (`http://`), which callers must strip or reject with their own message.
  package init?(_ text: String) {
    var rest = Substring(text)
    if rest.contains("://") { return nil }
    guard let colon = rest.lastIndex(of: ":"),
      let port = Int(rest[rest.index(after: colon)...]), (1 ... 65535).contains(port)
    else { return nil }
    rest = rest[..<colon]
    if rest.hasPrefix("["), rest.hasSuffix("]") { rest = rest.dropFirst().dropLast() }
    guard !rest.isEmpty else { return nil }
    self.host = String(rest)
    self.port = port
  }
}

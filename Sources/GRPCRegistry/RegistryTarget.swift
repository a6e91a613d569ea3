public import GRPCNIOTransportHTTP2
import RegistryCore

/// A `registry://` target: the instances of one service in a `ServiceRegistry`, optionally
/// restricted to one group.
///
/// Use it with ``RegistryClientTransport`` (weighted, per-call groups) or, through
/// ``RegistryNameResolverFactory``, with grpc-swift's own `HTTP2ClientTransport.Posix`:
///
/// ```swift
/// let target = try RegistryTarget(parsing: "registry://user-server?group=A")
/// let same: RegistryTarget = .registry(service: "user-server", group: "A")
/// ```
public struct RegistryTarget: ResolvableTarget, Hashable, Sendable {
  /// The service name, such as `user-server`.
  public var service: String
  /// The group every call is restricted to unless it names its own (see ``withRegistryGroup(_:isolation:_:)``);
  /// `nil` for all instances.
  public var group: String?

  /// Creates a target. Nothing is checked until it is used; ``init(parsing:)`` checks its input.
  public init(service: String, group: String? = nil) {
    self.service = service
    self.group = group.flatMap { $0.isEmpty ? nil : $0 }
  }

  /// Parses `registry://<service>`, `registry:///<service>` or either with `?group=<group>`.
  ///
  /// - Throws: ``GRPCRegistryError`` with code `invalidTarget` and a message naming the rule
  ///   that failed.
  public init(parsing text: String) throws(GRPCRegistryError) {
    func fail(_ rule: String) -> GRPCRegistryError {
      GRPCRegistryError(
        code: .invalidTarget,
        message:
          "target '\(text)' is not a registry target: \(rule); use registry://<service>[?group=<group>], such as registry://user-server?group=A"
      )
    }
    let scheme = "registry://"
    guard text.utf8.count >= scheme.utf8.count,
      text.prefix(scheme.count).lowercased() == scheme
    else {
      throw fail("it does not start with registry://")
    }
    var rest = Substring(text.dropFirst(scheme.count))
    var query: Substring?
    if let mark = rest.firstIndex(of: "?") {
      query = rest[rest.index(after: mark)...]
      rest = rest[..<mark]
    }
    guard !rest.contains("#") else { throw fail("it has a fragment ('#')") }
    // registry:///name has an empty authority; registry://name uses the authority as the name.
    if rest.hasPrefix("/") { rest = rest.dropFirst() }
    guard !rest.isEmpty else { throw fail("the service name is missing") }
    guard !rest.contains("/") else {
      throw fail("the service name '\(rest)' contains '/'")
    }
    let service = String(rest)
    do {
      try ServiceInstance.validate(serviceName: service)
    } catch {
      throw fail(error.message)
    }

    var group: String?
    if let query {
      for item in query.split(separator: "&", omittingEmptySubsequences: true) {
        let pair = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
        guard pair.count == 2 else { throw fail("the query item '\(item)' has no '='") }
        guard pair[0] == "group" else {
          throw fail("the query parameter '\(pair[0])' is unknown (only 'group' is supported)")
        }
        guard group == nil else { throw fail("the group is given twice") }
        let value = String(pair[1])
        if !value.isEmpty, let problem = Self.groupProblem(value) {
          throw fail(problem)
        }
        group = value
      }
    }
    self.init(service: service, group: group)
  }

  /// Why `group` is not a valid group, or `nil` when it is.
  static func groupProblem(_ group: String) -> String? {
    var instance = ServiceInstance(name: "x", address: "127.0.0.1:1")
    instance.group = group
    do {
      try instance.validate()
      return nil
    } catch {
      return error.message
    }
  }
}

extension RegistryTarget: CustomStringConvertible {
  /// The target as a string, `registry://<service>[?group=<group>]`.
  public var description: String {
    if let group = self.group { return "registry://\(self.service)?group=\(group)" }
    return "registry://\(self.service)"
  }
}

extension ResolvableTarget where Self == RegistryTarget {
  /// A target for the instances of `service` in a registry, optionally restricted to `group`.
  ///
  /// ```swift
  /// let transport = try HTTP2ClientTransport.Posix(
  ///   target: .registry(service: "user-server"),
  ///   transportSecurity: .plaintext,
  ///   resolverRegistry: resolvers
  /// )
  /// ```
  public static func registry(service: String, group: String? = nil) -> Self {
    RegistryTarget(service: service, group: group)
  }
}

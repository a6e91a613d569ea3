/// One instance of a service: where to reach it and how to route to it.
///
/// This is the value every registry stores under `<prefix>/<name>/<address>`. Its JSON form is
/// the Go design's (`{"Name":…,"Address":…,"Weight":…,"Group":…}`), see ``InstanceCodec``.
///
/// ```swift
/// let instance = ServiceInstance(name: "user-server", address: "10.0.0.7:8082", weight: 3, group: "A")
/// try instance.validate()
/// ```
public struct ServiceInstance: Hashable, Sendable, Codable {
  /// The service name, such as `user-server`: 1 to 253 characters of `A-Z a-z 0-9 . _ -`.
  public var name: String
  /// The address clients dial, `host:port`; IPv6 hosts in brackets (`[::1]:8080`).
  public var address: String
  /// The relative share of calls this instance gets; 0 counts as the default weight 1.
  public var weight: Int
  /// An optional group (such as a zone, a canary set or a tenant); empty for none.
  public var group: String
  /// Free-form string metadata, carried to clients as is.
  public var metadata: [String: String]
  /// An optional version string of the instance's software.
  public var version: String

  /// Creates an instance description. Nothing is checked until ``validate()`` or registration.
  public init(
    name: String,
    address: String,
    weight: Int = 1,
    group: String = "",
    metadata: [String: String] = [:],
    version: String = ""
  ) {
    self.name = name
    self.address = address
    self.weight = weight
    self.group = group
    self.metadata = metadata
    self.version = version
  }

  /// The weight used for balancing: `weight`, with 0 meaning the default weight 1.
  public var effectiveWeight: Int { self.weight == 0 ? 1 : self.weight }

  enum CodingKeys: String, CodingKey {
    case name = "Name"
    case address = "Address"
    case weight = "Weight"
    case group = "Group"
    case metadata = "Metadata"
    case version = "Version"
  }

  public init(from decoder: any Decoder) throws {
    let container = try decoder.container(keyedBy: CodingKeys.self)
    self.name = try container.decodeIfPresent(String.self, forKey: .name) ?? ""
    self.address = try container.decodeIfPresent(String.self, forKey: .address) ?? ""
    self.weight = try container.decodeIfPresent(Int.self, forKey: .weight) ?? 0
    self.group = try container.decodeIfPresent(String.self, forKey: .group) ?? ""
    self.metadata = try container.decodeIfPresent([String: String].self, forKey: .metadata) ?? [:]
    self.version = try container.decodeIfPresent(String.self, forKey: .version) ?? ""
  }

  public func encode(to encoder: any Encoder) throws {
    var container = encoder.container(keyedBy: CodingKeys.self)
    try container.encode(self.name, forKey: .name)
    try container.encode(self.address, forKey: .address)
    try container.encode(self.weight, forKey: .weight)
    try container.encode(self.group, forKey: .group)
    if !self.metadata.isEmpty {
      try container.encode(self.metadata, forKey: .metadata)
    }
    if !self.version.isEmpty {
      try container.encode(self.version, forKey: .version)
    }
  }
}

extension ServiceInstance: CustomStringConvertible {
  public var description: String {
    var text = "\(self.name)@\(self.address) weight=\(self.weight)"
    if !self.group.isEmpty { text += " group=\(self.group)" }
    if !self.version.isEmpty { text += " version=\(self.version)" }
    return text
  }
}

extension ServiceInstance {
  /// Limits on what an instance may carry, so one bad registration cannot bloat every client.
  public enum Limits {
    /// Longest service name, in bytes.
    public static let nameLength = 253
    /// Largest weight.
    public static let maximumWeight = 1_000_000
    /// Longest group, in bytes.
    public static let groupLength = 253
    /// Longest version string, in bytes.
    public static let versionLength = 128
    /// Most metadata entries.
    public static let metadataEntries = 64
    /// Longest metadata key, in bytes.
    public static let metadataKeyLength = 253
    /// Longest metadata value, in bytes.
    public static let metadataValueLength = 4096
  }

  /// Checks a service name: 1 to 253 characters of `A-Z a-z 0-9 . _ -`.
  ///
  /// - Throws: ``RegistryError`` with code `invalidArgument` and field `name`.
  public static func validate(serviceName name: String) throws(RegistryError) {
    guard !name.isEmpty else {
      throw .invalid(
        "name",
        "the service name is empty; use 1 to 253 characters of A-Z a-z 0-9 . _ -"
      )
    }
    guard name.utf8.count <= Limits.nameLength else {
      throw .invalid(
        "name",
        "the service name is \(name.utf8.count) characters long; the limit is \(Limits.nameLength)"
      )
    }
    guard Self.allBytes(of: name, satisfy: Self.isNameByte) else {
      throw .invalid(
        "name",
        "the service name '\(name)' has a character outside A-Z a-z 0-9 . _ -; '/' in particular would break the key layout"
      )
    }
  }

  /// Checks every field against the rules of the registry's contract.
  ///
  /// The address must be a dialable `host:port`: the unspecified hosts `0.0.0.0` and `[::]` are
  /// refused, since no client can reach them (advertise the machine's real address instead).
  ///
  /// - Throws: ``RegistryError`` with code `invalidArgument`; its `field` names the field and its
  ///   message the rule.
  public func validate() throws(RegistryError) {
    try self.validate(nameKnownValid: nil)
  }

  /// ``validate()``, skipping the name check when the name is `nameKnownValid` (a service name
  /// already checked, as when a listing decodes thousands of instances of one service).
  func validate(nameKnownValid: String?) throws(RegistryError) {
    if self.name != nameKnownValid { try Self.validate(serviceName: self.name) }
    let address = try ServiceAddress(parsing: self.address)
    if address.isUnspecified {
      throw .invalid(
        "address",
        "address '\(self.address)' has the unspecified host \(address.host), which clients cannot dial; register the address clients should use (the machine's IP or DNS name)"
      )
    }
    guard self.weight >= 0, self.weight <= Limits.maximumWeight else {
      throw .invalid(
        "weight",
        "weight \(self.weight) is out of range; use 0 to \(Limits.maximumWeight) (0 means the default weight 1)"
      )
    }
    guard self.group.utf8.count <= Limits.groupLength else {
      throw .invalid("group", "the group is longer than \(Limits.groupLength) characters")
    }
    guard Self.allBytes(of: self.group, satisfy: Self.isNameByte) else {
      throw .invalid(
        "group",
        "the group '\(self.group)' has a character outside A-Z a-z 0-9 . _ -"
      )
    }
    guard self.version.utf8.count <= Limits.versionLength,
      // Printable ASCII needs no look at Unicode properties.
      Self.allBytes(of: self.version, satisfy: { $0 >= 0x20 && $0 < 0x7f })
        || !self.version.unicodeScalars.contains(where: {
          $0.properties.generalCategory == .control
        })
    else {
      throw .invalid(
        "version",
        "the version must be at most \(Limits.versionLength) characters with no control characters"
      )
    }
    guard self.metadata.count <= Limits.metadataEntries else {
      throw .invalid(
        "metadata",
        "metadata has \(self.metadata.count) entries; the limit is \(Limits.metadataEntries)"
      )
    }
    for (key, value) in self.metadata {
      guard !key.isEmpty, key.utf8.count <= Limits.metadataKeyLength else {
        throw .invalid(
          "metadata",
          "metadata key '\(key.prefix(40))' must be 1 to \(Limits.metadataKeyLength) characters"
        )
      }
      guard value.utf8.count <= Limits.metadataValueLength else {
        throw .invalid(
          "metadata",
          "metadata value of '\(key)' is \(value.utf8.count) bytes; the limit is \(Limits.metadataValueLength)"
        )
      }
    }
  }

  /// Whether every UTF-8 byte of `text` satisfies `predicate`; on the string's contiguous
  /// storage when it has one (native strings do), without the generic view iteration.
  @inline(__always)
  private static func allBytes(of text: String, satisfy predicate: (UInt8) -> Bool) -> Bool {
    if let result = text.utf8.withContiguousStorageIfAvailable({ bytes in
      for byte in bytes where !predicate(byte) { return false }
      return true
    }) {
      return result
    }
    return text.utf8.allSatisfy(predicate)
  }

  private static func isNameByte(_ byte: UInt8) -> Bool {
    (byte >= 48 && byte <= 57) || (byte >= 65 && byte <= 90) || (byte >= 97 && byte <= 122)
      || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
  }
}

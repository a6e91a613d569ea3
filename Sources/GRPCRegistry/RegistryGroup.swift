public import ServiceContextModule

/// The registry group of the calls made by the current task, set by
/// ``withRegistryGroup(_:isolation:_:)``.
enum RegistryGroupContext {
  @TaskLocal static var group: String?
}

/// Runs `body` with every call it makes through a ``RegistryClientTransport`` routed to the
/// instances of `group`, overriding the target's group: the Swift form of the Go design's group
/// in the request context, and the way to choose a call's group.
///
/// Precedence, innermost first: this function's group; else a `ServiceContext`'s
/// ``ServiceContextModule/ServiceContext/registryGroup`` (for code that already carries request
/// context in swift-service-context, such as middleware); else the target's group
/// (`registry://user-server?group=A`).
///
/// ```swift
/// let user = try await withRegistryGroup("A") {
///   try await client.getById(.with { $0.id = 7 })
/// }
/// ```
///
/// A group with no instances fails the call with `unavailable`; `nil` or `""` routes to the
/// target's group (all instances when it has none).
public func withRegistryGroup<Result>(
  _ group: String?,
  isolation: isolated (any Actor)? = #isolation,
  _ body: () async throws -> Result
) async rethrows -> Result {
  try await RegistryGroupContext.$group.withValue(
    group.flatMap { $0.isEmpty ? nil : $0 },
    operation: body,
    isolation: isolation
  )
}

/// The group the current task's calls are routed to: the one set by the innermost
/// ``withRegistryGroup(_:isolation:_:)``, else the `ServiceContext`'s
/// ``ServiceContextModule/ServiceContext/registryGroup``, else `nil` (the target's group).
var currentRegistryGroup: String? {
  if let group = RegistryGroupContext.group { return group }
  if let group = ServiceContext.current?.registryGroup, !group.isEmpty { return group }
  return nil
}

/// The `ServiceContext` key under which a call's registry group travels (read and written
/// through ``ServiceContextModule/ServiceContext/registryGroup``).
enum RegistryGroupKey: ServiceContextKey {
  typealias Value = String
  static var nameOverride: String? { "registry.group" }
}

extension ServiceContext {
  /// The registry group for the calls made in this context: a ``RegistryClientTransport`` routes
  /// them to the instances of this group unless ``withRegistryGroup(_:isolation:_:)`` set
  /// another one. `nil` or `""` means the target's group.
  ///
  /// ```swift
  /// var context = ServiceContext.current ?? .topLevel
  /// context.registryGroup = "A"
  /// let user = try await ServiceContext.withValue(context) {
  ///   try await client.getById(.with { $0.id = 7 })
  /// }
  /// ```
  public var registryGroup: String? {
    get { self[RegistryGroupKey.self] }
    set { self[RegistryGroupKey.self] = newValue }
  }
}

/// The metadata preference of the calls made by the current task, set by
/// ``withRegistryMetadataPreference(_:isolation:_:)``.
enum RegistryPreferenceContext {
  @TaskLocal static var preference: RegistryClientTransport.MetadataPreference?
}

/// Runs `body` with every call it makes through a ``RegistryClientTransport`` preferring the
/// instances whose metadata matches `preference` (see
/// ``RegistryClientTransport/MetadataPreference``), overriding the transport's
/// ``RegistryClientTransport/Config/metadataPreference``; `nil` means the transport's.
///
/// ```swift
/// let user = try await withRegistryMetadataPreference(.init(["zone": "eu-west-1a"])) {
///   try await client.getById(.with { $0.id = 7 })
/// }
/// ```
///
/// The preference works within the call's group, and falls back to all its instances when too
/// few preferred ones are usable.
public func withRegistryMetadataPreference<Result>(
  _ preference: RegistryClientTransport.MetadataPreference?,
  isolation: isolated (any Actor)? = #isolation,
  _ body: () async throws -> Result
) async rethrows -> Result {
  try await RegistryPreferenceContext.$preference.withValue(
    preference,
    operation: body,
    isolation: isolation
  )
}

/// The registry group of the calls made by the current task, set by
/// ``withRegistryGroup(_:isolation:_:)``.
enum RegistryGroupContext {
  @TaskLocal static var group: String?
}

/// Runs `body` with every call it makes through a ``RegistryClientTransport`` routed to the
/// instances of `group`, overriding the target's group: the Swift form of the Go design's group
/// in the request context.
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

/// The group set by the innermost ``withRegistryGroup(_:isolation:_:)`` around the current task,
/// if any.
public var currentRegistryGroup: String? {
  RegistryGroupContext.group
}

/// One benchmark scenario: a name for `--only`, what it measures, and how.
///
/// A scenario run gets a ``BenchContext`` and returns its numbers; the runner repeats it, prints
/// JSON lines and medians, and deletes the keys it wrote. To add a scenario (the gRPC ones of
/// issue 7: c, f, mem, soak), write a `Scenario` value and list it in ``all``.
struct Scenario: Sendable {
  var name: String
  var summary: String
  var body: @Sendable (BenchContext) async throws -> Metrics

  init(
    name: String,
    summary: String,
    body: @escaping @Sendable (BenchContext) async throws -> Metrics
  ) {
    self.name = name
    self.summary = summary
    self.body = body
  }

  /// Every scenario, in the order they run.
  static let all: [Scenario] = [
    FloorScenario.scenario,
    RegistryScenarios.registerToVisible,
    RegistryScenarios.deregisterToGone,
    RegistryScenarios.instancesAtScale,
    RegistryScenarios.registrationRate,
    RegistryScenarios.fanOut,
    ConnectionScenario.scenario,
  ]

  /// Scenarios of issue 7 that need the gRPC layer and are not written yet.
  static let planned = ["c", "f", "mem", "soak"]
}

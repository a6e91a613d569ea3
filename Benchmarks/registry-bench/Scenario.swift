/// One benchmark scenario: a name for `--only`, what it measures, and how.
///
/// A scenario run gets a ``BenchContext`` and returns its numbers; the runner repeats it, prints
/// JSON lines and medians, and deletes the keys it wrote. To add a scenario, write a `Scenario`
/// value and list it in ``all`` (or in ``optIn`` when it should only run when asked for).
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

  /// The scenarios of a default run, in the order they run.
  static let all: [Scenario] = [
    FloorScenario.scenario,
    RegistryScenarios.registerToVisible,
    RegistryScenarios.deregisterToGone,
    RegistryScenarios.instancesAtScale,
    RegistryScenarios.registrationRate,
    RegistryScenarios.fanOut,
    GRPCScenarios.crashToGone,
    GRPCScenarios.callRate,
    GRPCScenarios.memory,
    ConnectionScenario.scenario,
  ]

  /// Scenarios that run only when `--only` names them (soak runs for `--minutes`; big writes
  /// 100,000 instances; fleet starts 1,000 servers).
  static let optIn: [Scenario] = [
    GRPCScenarios.soak, RegistryScenarios.bigService, FleetScenario.scenario,
  ]
}

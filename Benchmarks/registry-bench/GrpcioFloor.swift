import EtcdHarness
import Foundation

/// The floor that is not ours: Python's grpcio (gRPC's C core) reading the same prefix range
/// from the same etcd, timed by `Benchmarks/grpcio-floor/etcd_range_floor.py` itself.
enum GrpcioFloor {
  /// The script, found next to this benchmark's sources (or at `REGISTRY_BENCH_GRPCIO_FLOOR`).
  static var script: String {
    if let path = ProcessInfo.processInfo.environment["REGISTRY_BENCH_GRPCIO_FLOOR"], !path.isEmpty
    {
      return path
    }
    return URL(fileURLWithPath: #filePath)
      .deletingLastPathComponent()
      .deletingLastPathComponent()
      .appendingPathComponent("grpcio-floor/etcd_range_floor.py").path
  }

  /// The script's p50 in milliseconds for `trials` prefix reads of `prefix` (which must hold
  /// `expect` keys), or a reason it could not run (grpcio missing, etcd unreachable).
  static func p50(
    endpoint: String,
    prefix: String,
    trials: Int,
    expect: Int
  ) async -> Result<Double, BenchError> {
    let run: Command.Output
    do {
      run = try await Command.run(
        "python3",
        [
          self.script, "--endpoint", endpoint, "--prefix", prefix, "--trials", "\(trials)",
          "--expect", "\(expect)",
        ]
      )
    } catch {
      return .failure(BenchError("could not start python3: \(error)"))
    }
    guard run.status == 0,
      let object = try? JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any],
      let p50 = object["p50_ms"] as? Double
    else {
      let message = run.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
      return .failure(BenchError("grpcio floor failed (exit \(run.status)): \(message)"))
    }
    return .success(p50)
  }
}

/// The numbers of one scenario run, in the order they were measured.
///
/// Keys carry their unit (`put_p50_ms`, `put_seq_per_s`, `put_n`), so a JSON line reads on its
/// own and medians can be taken key by key.
struct Metrics: Sendable {
  private(set) var entries: [(key: String, value: Double)] = []
  /// Free-form remarks about this run (a phase cut short by its time bound, timeouts).
  private(set) var notes: [String] = []

  subscript(key: String) -> Double? {
    self.entries.last { $0.key == key }?.value
  }

  mutating func set(_ key: String, _ value: Double) {
    if let index = self.entries.firstIndex(where: { $0.key == key }) {
      self.entries[index].value = value
    } else {
      self.entries.append((key, value))
    }
  }

  mutating func set(_ key: String, _ value: Int) {
    self.set(key, Double(value))
  }

  /// Records `name_p50_ms`, `name_p99_ms`, `name_mean_ms` and `name_n` of `samples`.
  mutating func latency(_ name: String, _ samples: [Duration]) {
    let summary = LatencySummary(samples)
    self.set("\(name)_p50_ms", summary.p50)
    self.set("\(name)_p99_ms", summary.p99)
    self.set("\(name)_mean_ms", summary.mean)
    self.set("\(name)_n", samples.count)
  }

  /// Records `name_per_s`: `count` operations in `elapsed`.
  mutating func rate(_ name: String, count: Int, elapsed: Duration) {
    let seconds = elapsed.seconds
    self.set("\(name)_per_s", seconds > 0 ? Double(count) / seconds : 0)
  }

  mutating func note(_ text: String) {
    self.notes.append(text)
  }

  /// Adds `other`'s numbers and notes (its values win for keys both have).
  mutating func merge(_ other: Metrics) {
    for entry in other.entries { self.set(entry.key, entry.value) }
    self.notes += other.notes
  }
}

/// Percentiles of a set of latencies, in milliseconds (nearest rank).
struct LatencySummary {
  var p50: Double
  var p99: Double
  var mean: Double

  init(_ samples: [Duration]) {
    let sorted = samples.map(\.milliseconds).sorted()
    self.p50 = Self.percentile(sorted, 0.50)
    self.p99 = Self.percentile(sorted, 0.99)
    self.mean = sorted.isEmpty ? .nan : sorted.reduce(0, +) / Double(sorted.count)
  }

  static func percentile(_ sorted: [Double], _ fraction: Double) -> Double {
    guard !sorted.isEmpty else { return .nan }
    let rank = Int((fraction * Double(sorted.count)).rounded(.up))
    return sorted[min(max(rank, 1), sorted.count) - 1]
  }
}

/// The median of `values` (the mean of the middle two for an even count); NaN when empty.
func median(_ values: [Double]) -> Double {
  let sorted = values.filter { !$0.isNaN }.sorted()
  guard !sorted.isEmpty else { return .nan }
  let middle = sorted.count / 2
  return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
}

extension Duration {
  var seconds: Double {
    let parts = self.components
    return Double(parts.seconds) + Double(parts.attoseconds) / 1e18
  }

  var milliseconds: Double { self.seconds * 1e3 }
}

import Foundation

/// The machine's load average from /proc/loadavg (Linux); `nil` elsewhere.
struct LoadAverage: Sendable {
  var one: Double
  var five: Double
  var fifteen: Double

  static func current() -> LoadAverage? {
    guard let text = try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8) else {
      return nil
    }
    let fields = text.split(separator: " ").prefix(3).compactMap { Double($0) }
    guard fields.count == 3 else { return nil }
    return LoadAverage(one: fields[0], five: fields[1], fifteen: fields[2])
  }
}

/// One finished scenario run.
struct RunRecord: Sendable {
  var scenario: String
  var run: Int
  var metrics: Metrics
  var loadBefore: LoadAverage?
  var loadAfter: LoadAverage?
  var elapsed: Duration
}

/// JSON lines to stdout (nothing else goes there) and a table to stderr.
enum Report {
  enum Value {
    case number(Double)
    case text(String)
    case numbers([Double])
    case texts([String])
  }

  static func emit(_ fields: [(String, Value)]) {
    let body = fields.map { "\(quote($0.0)):\(render($0.1))" }.joined(separator: ",")
    FileHandle.standardOutput.write(Data("{\(body)}\n".utf8))
  }

  static func line(_ record: RunRecord, cores: Int) {
    var fields: [(String, Value)] = [
      ("scenario", .text(record.scenario)), ("run", .number(Double(record.run))),
      ("cores", .number(Double(cores))),
    ]
    fields += loadFields("loadavg_before", record.loadBefore)
    fields += loadFields("loadavg_after", record.loadAfter)
    fields.append(("duration_s", .number(record.elapsed.seconds)))
    fields += record.metrics.entries.map { ($0.key, Value.number($0.value)) }
    if !record.metrics.notes.isEmpty { fields.append(("notes", .texts(record.metrics.notes))) }
    emit(fields)
  }

  /// The median of every metric over the runs of one scenario, keyed like the runs.
  static func medians(_ records: [RunRecord]) -> Metrics {
    var result = Metrics()
    var keys: [String] = []
    for record in records {
      for entry in record.metrics.entries where !keys.contains(entry.key) { keys.append(entry.key) }
    }
    for key in keys {
      result.set(key, median(records.compactMap { $0.metrics[key] }))
    }
    return result
  }

  static func medianLine(
    scenario: String,
    _ records: [RunRecord],
    cores: Int,
    etcdVersion: String
  ) {
    var fields: [(String, Value)] = [
      ("scenario", .text(scenario)), ("run", .text("median")),
      ("runs", .number(Double(records.count))),
      ("cores", .number(Double(cores))), ("etcd_version", .text(etcdVersion)),
    ]
    fields += loadFields("loadavg", LoadAverage.current())
    let loads = records.compactMap { $0.loadAfter?.one }
    if !loads.isEmpty { fields.append(("loadavg_1m_median_of_runs", .number(median(loads)))) }
    fields += medians(records).entries.map { ($0.key, Value.number($0.value)) }
    emit(fields)
  }

  /// A table per scenario: one row per metric, one column per run and the median.
  static func table(_ scenarios: [(name: String, summary: String, records: [RunRecord])]) {
    var text = ""
    for scenario in scenarios where !scenario.records.isEmpty {
      let medianRun = medians(scenario.records)
      text += "\n== \(scenario.name): \(scenario.summary)\n"
      let runs = scenario.records.map { "run \($0.run)" }
      let width = max(28, medianRun.entries.map(\.key.count).max() ?? 0)
      text += pad("metric", width) + (runs + ["median"]).map { pad($0, 11, left: true) }.joined()
      text += "\n"
      for entry in medianRun.entries {
        let values = scenario.records.map { $0.metrics[entry.key] } + [Optional(entry.value)]
        text += pad(entry.key, width)
        text += values.map { pad($0.map(format) ?? "-", 11, left: true) }.joined() + "\n"
      }
      let loads = scenario.records.map { $0.loadAfter.map { format($0.one) } ?? "-" }
      text += pad("loadavg_1m_after", width) + loads.map { pad($0, 11, left: true) }.joined()
      text += "\n"
      for record in scenario.records {
        for note in record.metrics.notes { text += "  note (run \(record.run)): \(note)\n" }
      }
    }
    FileHandle.standardError.write(Data(text.utf8))
  }

  static func progress(_ text: String) {
    FileHandle.standardError.write(Data("registry-bench: \(text)\n".utf8))
  }

  private static func loadFields(_ name: String, _ load: LoadAverage?) -> [(String, Value)] {
    guard let load else { return [] }
    return [(name, .numbers([load.one, load.five, load.fifteen]))]
  }

  static func format(_ value: Double) -> String {
    if value.isNaN { return "-" }
    if value == value.rounded(), abs(value) < 1e12 { return String(Int(value)) }
    if abs(value) >= 100 { return String(format: "%.1f", value) }
    return String(format: "%.3f", value)
  }

  private static func render(_ value: Value) -> String {
    switch value {
    case .number(let number): return number.isFinite ? format(number) : "null"
    case .text(let text): return quote(text)
    case .numbers(let numbers):
      return "[" + numbers.map { $0.isFinite ? format($0) : "null" }.joined(separator: ",") + "]"
    case .texts(let texts): return "[" + texts.map(quote).joined(separator: ",") + "]"
    }
  }

  private static func quote(_ text: String) -> String {
    var result = "\""
    for scalar in text.unicodeScalars {
      switch scalar {
      case "\"": result += "\\\""
      case "\\": result += "\\\\"
      case "\n": result += "\\n"
      case "\r": result += "\\r"
      case "\t": result += "\\t"
      default:
        if scalar.value < 0x20 {
          result += String(format: "\\u%04x", scalar.value)
        } else {
          result.unicodeScalars.append(scalar)
        }
      }
    }
    return result + "\""
  }

  private static func pad(_ text: String, _ width: Int, left: Bool = false) -> String {
    let padding = String(repeating: " ", count: max(0, width - text.count))
    return left ? padding + text : text + padding
  }
}

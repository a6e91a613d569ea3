public import Logging
import RegistryPrimitives
import Synchronization

/// Records what a logger logs, so a test can assert on the messages and metadata a library
/// writes (the log lines operators rely on are behaviour too).
public final class LogCapture: Sendable {
  /// One logged message, with its metadata rendered as strings.
  public struct Entry: Sendable, CustomStringConvertible {
    public var label: String
    public var level: Logger.Level
    public var message: String
    public var metadata: [String: String]

    public var description: String { "[\(self.level)] \(self.message) \(self.metadata)" }
  }

  private let recorded = Locked<[Entry]>([])

  public init() {}

  /// A logger whose messages at `level` and above are recorded here.
  public func logger(label: String = "test", level: Logger.Level = .debug) -> Logger {
    var logger = Logger(label: label) { label in Handler(label: label, capture: self) }
    logger.logLevel = level
    return logger
  }

  /// Everything recorded so far, oldest first.
  public var entries: [Entry] { self.recorded.withLock { $0 } }

  /// The entries whose message contains `text`.
  public func entries(containing text: String) -> [Entry] {
    self.entries.filter { $0.message.contains(text) }
  }

  fileprivate func append(_ entry: Entry) { self.recorded.withLock { $0.append(entry) } }

  private struct Handler: LogHandler {
    let label: String
    let capture: LogCapture
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
      get { self.metadata[key] }
      set { self.metadata[key] = newValue }
    }

    func log(event: LogEvent) {
      let merged = self.metadata.merging(event.metadata ?? [:]) { _, call in call }
      self.capture.append(
        Entry(
          label: self.label,
          level: event.level,
          message: event.message.description,
          metadata: merged.mapValues { $0.description }
        )
      )
    }
  }
}

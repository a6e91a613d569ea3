import CoreMetrics
import GRPCConnection
import GRPCCore
import RegistryPrimitives
import Synchronization

/// One registered instance as the transport sees it: its connection and the signal that closes
/// it once it has left the registry and its calls have finished.
final class Subchannel: Sendable {
  let id: UInt64
  let address: String
  let connection: InstanceConnection
  /// Fired when the connection should close gracefully.
  let close = Signal()
  /// The calls picked on this instance.
  let calls: Counter

  init(id: UInt64, address: String, connection: InstanceConnection, calls: Counter) {
    self.id = id
    self.address = address
    self.connection = connection
    self.calls = calls
  }
}

/// Records how a call's response stream ended, to tell transport failures (counted by outlier
/// detection) from application errors.
final class CallOutcome: Sendable {
  private let status = Atomic<Int>(-1)
  private let startedFlag = Atomic<Bool>(false)

  /// Whether the stream was handed to the call (after which it cannot be retried elsewhere).
  var started: Bool { self.startedFlag.load(ordering: .relaxed) }

  func markStarted() {
    self.startedFlag.store(true, ordering: .relaxed)
  }

  func record(_ code: Status.Code) {
    self.status.store(code.rawValue, ordering: .relaxed)
  }

  /// `true` for a transport failure, `false` for any other ending, `nil` if none was observed.
  var failure: Bool? {
    let raw = self.status.load(ordering: .relaxed)
    if raw < 0 { return nil }
    return raw == Status.Code.unavailable.rawValue
  }
}

/// The response parts of a call, passed through while noting the final status.
struct ObservedInbound: AsyncSequence, Sendable {
  typealias Element = RPCResponsePart<[UInt8]>
  typealias Failure = any Error

  let base: RPCAsyncSequence<RPCResponsePart<[UInt8]>, any Error>
  let outcome: CallOutcome

  func makeAsyncIterator() -> AsyncIterator {
    AsyncIterator(base: self.base.makeAsyncIterator(), outcome: self.outcome)
  }

  struct AsyncIterator: AsyncIteratorProtocol {
    var base: RPCAsyncSequence<RPCResponsePart<[UInt8]>, any Error>.AsyncIterator
    let outcome: CallOutcome

    mutating func next() async throws -> RPCResponsePart<[UInt8]>? {
      do {
        let part = try await self.base.next()
        if case .status(let status, _) = part { self.outcome.record(status.code) }
        return part
      } catch let error as RPCError {
        self.outcome.record(Status.Code(error.code))
        throw error
      }
    }
  }
}

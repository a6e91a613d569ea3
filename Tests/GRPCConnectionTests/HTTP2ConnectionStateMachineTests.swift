import GRPCCore
import Logging
import NIOCore
import NIOEmbedded
import Testing

@testable import GRPCConnection

extension ConnectionHandler {
  /// A client connection handler for tests that never hear from a server: no SETTINGS arrive,
  /// so its ready promise is settled (failed) at once; default windows, no keep-alive.
  static func withoutPeer(on eventLoop: any EventLoop) -> ConnectionHandler {
    let ready = eventLoop.makePromise(of: NIOLoopBound<ConnectionHandler>.self)
    ready.fail(CancellationError())
    return ConnectionHandler(
      settings: .init(
        streamWindowSize: 65535,
        connectionWindowSize: 65535,
        keepalive: nil,
        stallDetection: nil
      ),
      readyPromise: ready,
      logger: Logger(label: "test"),
      onEvent: { _ in }
    )
  }
}

/// The client connection's lifecycle (`HTTP2Connection.StateMachine`) driven event by event,
/// without sockets: which connection RPCs get, what the connection loop does next, and the races
/// the end-to-end tests found.
@Suite("Client connection state machine")
struct HTTP2ConnectionStateMachineTests {
  typealias Machine = HTTP2Connection.StateMachine

  /// A connection on an embedded channel: the state machine only keeps it and hands it out.
  static func connection(_ id: UInt64) -> ActiveConnection {
    let channel = EmbeddedChannel()
    let handler = ConnectionHandler.withoutPeer(on: channel.eventLoop)
    let connection = ActiveConnection(
      id: id,
      channel: channel,
      handler: NIOLoopBound(handler, eventLoop: channel.eventLoop),
      scheme: "http",
      streamWindowSize: 65535
    )
    // Closed at once (the machine never does I/O), so nothing outlives the test (LeakSanitizer).
    _ = try? channel.finish()
    return connection
  }

  /// Connects the machine's first connection; returns it.
  static func connect(_ machine: inout Machine) -> ActiveConnection {
    guard case .connect = machine.nextStep() else {
      Issue.record("expected the loop to connect")
      return Self.connection(0)
    }
    let id = machine.startAttempt()
    let connection = Self.connection(id)
    guard case .use = machine.ready(connection) else {
      Issue.record("expected the connection to be used")
      return connection
    }
    return connection
  }

  @Test("the first connection is made eagerly; RPCs then share it")
  func firstConnection() {
    var machine = Machine()
    #expect(machine.connectivity == .idle)
    let connection = Self.connect(&machine)
    #expect(machine.connectivity == .ready)
    guard case .reserved(let reserved) = machine.reserve(waitForReady: false) else {
      Issue.record("expected a reservation")
      return
    }
    #expect(reserved.id == connection.id)
    #expect(machine.connections[connection.id]?.reserved == 1)
    #expect(machine.release(connection.id) == false)
    #expect(machine.connections[connection.id]?.reserved == 0)
  }

  @Test(
    "a GOAWAY between the server's SETTINGS and ready: the connection is not adopted",
    arguments: [true, false]
  )
  func endedBeforeUse(byGoAway: Bool) {
    // Found in CI under load with a 200 ms max connection age: the server's GOAWAY (and close)
    // reached the connection before the loop adopted it; it became `current` though dead, and
    // every RPC failed for 30 s.
    var machine = Machine()
    _ = machine.nextStep()
    let id = machine.startAttempt()
    _ = byGoAway ? machine.draining(id) : machine.closed(id)
    guard case .endedBeforeUse = machine.ready(Self.connection(id)) else {
      Issue.record("a connection the server ended was adopted")
      return
    }
    #expect(machine.connectivity == .connecting)
    #expect(machine.connections.isEmpty)
    #expect(!machine.isCurrent(id))
    // No RPC gets it: they wait for the next connection.
    guard case .wait = machine.reserve(waitForReady: false) else {
      Issue.record("an RPC was given a connection the server ended, or failed")
      return
    }
    // The loop connects again, and that one is used.
    guard case .connect = machine.nextStep() else {
      Issue.record("the loop did not connect again")
      return
    }
    let next = machine.startAttempt()
    guard case .use = machine.ready(Self.connection(next)) else {
      Issue.record("the next connection was not used")
      return
    }
    #expect(machine.isCurrent(next))
  }

  @Test("events of a failed attempt do not touch the next one")
  func lateEventsOfFailedAttempt() {
    var machine = Machine()
    _ = machine.nextStep()
    let failed = machine.startAttempt()
    _ = machine.connectFailed(
      failed,
      RPCError(code: .unavailable, message: "Could not connect: refused.")
    )
    #expect(machine.connectivity == .transientFailure)
    _ = machine.nextStep()
    let next = machine.startAttempt()
    // The failed attempt's channel closes late.
    #expect(machine.closed(failed) == nil)
    guard case .use = machine.ready(Self.connection(next)) else {
      Issue.record("the failed attempt's close ended the next connection")
      return
    }
    #expect(machine.connectivity == .ready)
  }

  @Test("in transient failure an RPC fails fast unless it waits for ready")
  func transientFailure() {
    var machine = Machine()
    _ = machine.nextStep()
    let id = machine.startAttempt()
    _ = machine.connectFailed(id, RPCError(code: .unavailable, message: "refused"))
    guard case .fail(let error) = machine.reserve(waitForReady: false) else {
      Issue.record("expected a fast failure")
      return
    }
    #expect(error.message == "refused")
    guard case .wait(wakeLoop: false) = machine.reserve(waitForReady: true) else {
      Issue.record("expected a wait-for-ready RPC to wait")
      return
    }
  }

  @Test("after a GOAWAY the connection goes idle and reconnects when an RPC needs one")
  func idleAfterGoAway() {
    var machine = Machine()
    let connection = Self.connect(&machine)
    _ = machine.reserve(waitForReady: false)
    #expect(machine.draining(connection.id)?.state == .idle)
    #expect(!machine.isCurrent(connection.id))
    // No RPC wants a connection: the loop waits.
    guard case .waitForDemand = machine.nextStep() else {
      Issue.record("the loop reconnected without demand")
      return
    }
    // The first RPC wakes the loop, the second only waits.
    guard case .wait(wakeLoop: true) = machine.reserve(waitForReady: false),
      case .wait(wakeLoop: false) = machine.reserve(waitForReady: false)
    else {
      Issue.record("expected one wake-up for the demand")
      return
    }
    guard case .connect(let update) = machine.nextStep() else {
      Issue.record("the loop did not connect on demand")
      return
    }
    #expect(update?.state == .connecting)
    // The draining connection keeps its RPC until it is released.
    #expect(machine.connections[connection.id]?.draining == true)
    #expect(machine.connections[connection.id]?.reserved == 1)
  }

  @Test("shutdown closes idle connections at once and busy ones when their last RPC ends")
  func gracefulShutdown() {
    var machine = Machine()
    let busy = Self.connect(&machine)
    _ = machine.reserve(waitForReady: false)
    _ = machine.draining(busy.id)
    _ = machine.nextStep()
    let idleID = machine.startAttempt()
    _ = machine.ready(Self.connection(idleID))

    let (_, channels, update) = machine.shutdown(force: false)
    #expect(update?.state == .shutdown)
    #expect(channels.count == 1, "only the idle connection closes now")
    #expect(machine.release(busy.id) == true, "the busy one closes with its last RPC")
    guard case .fail(let error) = machine.reserve(waitForReady: true) else {
      Issue.record("an RPC started after shutdown")
      return
    }
    #expect(error.code == .failedPrecondition)
    guard case .stop = machine.nextStep() else {
      Issue.record("the loop did not stop")
      return
    }
  }

  @Test("a connection that completes its handshake after shutdown is closed, not used")
  func readyAfterShutdown() {
    var machine = Machine()
    _ = machine.nextStep()
    let id = machine.startAttempt()
    _ = machine.shutdown(force: false)
    guard case .close = machine.ready(Self.connection(id)) else {
      Issue.record("a connection was adopted after shutdown")
      return
    }
  }
}

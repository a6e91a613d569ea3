internal import GRPCCore
internal import NIOCore
import RegistryPrimitives

extension HTTP2Connection {
  struct Waiter {
    var continuation: CheckedContinuation<ActiveConnection, any Error>
    var waitForReady: Bool
    var timer: Scheduled<Void>?
  }

  /// The connection's lifecycle, guarded by a `Locked`; returns side effects to run unlocked.
  struct StateMachine {
    struct Entry {
      var connection: ActiveConnection
      var reserved = 0
      var draining = false
    }

    struct Update {
      var state: ConnectivityState
      var watchers: [AsyncStream<ConnectivityState>.Continuation]
    }

    enum ReserveAction {
      case reserved(ActiveConnection)
      /// `wakeLoop`: the connection was idle and the loop must start connecting.
      case wait(wakeLoop: Bool)
      case fail(RPCError)
    }

    private(set) var connectivity: ConnectivityState = .idle
    private var current: ActiveConnection?
    private var lastError: RPCError?
    /// Why the last connection attempt failed, if it did.
    var lastFailure: RPCError? { self.lastError }
    var started = false
    var shuttingDown = false
    var connections: [UInt64: Entry] = [:]
    var waiters: [UInt64: Waiter] = [:]
    var watchers: [UInt64: AsyncStream<ConnectivityState>.Continuation] = [:]
    var loopWakeup = Wakeup()
    var wakeupPending = false
    /// Set when an RPC (or ``HTTP2Connection/requestConnection()``) needs a connection while
    /// idle; the connection loop waits for it after a connection was lost or drained.
    var connectRequested = false
    /// The first connection is made eagerly; later ones on demand.
    var hadConnection = false
    private var nextID: UInt64 = 0
    /// The connection being established, and whether the server already ended it (a GOAWAY or
    /// a close between its SETTINGS and ``ready(_:)``), so that `ready` does not adopt it.
    private var establishing: (id: UInt64, ended: Bool)?

    mutating func makeID() -> UInt64 {
      self.nextID += 1
      return self.nextID
    }

    /// A connection attempt starts: its ID, under which its events arrive.
    mutating func startAttempt() -> UInt64 {
      let id = self.makeID()
      self.establishing = (id, false)
      return id
    }

    /// Records an end (GOAWAY or close) of the connection being established; returns whether
    /// `id` was that connection.
    private mutating func endedWhileEstablishing(_ id: UInt64) -> Bool {
      guard self.establishing?.id == id else { return false }
      self.establishing?.ended = true
      return true
    }

    mutating func setConnectivity(_ new: ConnectivityState) -> Update? {
      guard new != self.connectivity, self.connectivity != .shutdown else { return nil }
      self.connectivity = new
      return Update(state: new, watchers: Array(self.watchers.values))
    }

    private var shutdownError: RPCError {
      RPCError(
        code: .failedPrecondition,
        message: "The connection is shutting down; no new RPCs can start."
      )
    }

    mutating func reserve(waitForReady: Bool) -> ReserveAction {
      if self.shuttingDown {
        return .fail(self.shutdownError)
      }
      if let current = self.current, self.connections[current.id] != nil {
        self.connections[current.id]?.reserved += 1
        return .reserved(current)
      }
      if self.connectivity == .transientFailure, !waitForReady {
        return .fail(
          self.lastError
            ?? RPCError(code: .unavailable, message: "The connection is in transient failure.")
        )
      }
      if self.connectivity == .idle, self.hadConnection, !self.connectRequested {
        // An idle connection reconnects when an RPC needs it (grpc's connectivity semantics).
        self.connectRequested = true
        return .wait(wakeLoop: true)
      }
      return .wait(wakeLoop: false)
    }

    mutating func enqueue(_ waiter: Waiter, id: UInt64) -> ReserveAction {
      let action = self.reserve(waitForReady: waiter.waitForReady)
      if case .wait = action {
        self.waiters[id] = waiter
      }
      return action
    }

    /// Returns whether the connection's channel should now be closed.
    mutating func release(_ id: UInt64) -> Bool {
      guard let index = self.connections.index(forKey: id) else { return false }
      self.connections.values[index].reserved -= 1
      let entry = self.connections.values[index]
      return entry.draining && entry.reserved == 0 && self.shuttingDown
    }

    enum NextStep {
      case connect(Update?)
      case waitForDemand
      case stop
    }

    /// What the connection loop does next: connect (eagerly at first and after failed attempts,
    /// on demand after an established connection ended), wait, or stop.
    mutating func nextStep() -> NextStep {
      if self.shuttingDown { return .stop }
      if self.connectivity == .idle, self.hadConnection, !self.connectRequested {
        return .waitForDemand
      }
      self.connectRequested = false
      return .connect(self.setConnectivity(.connecting))
    }

    enum ReadyAction {
      /// Hand the connection to these waiters and publish the update.
      case use([Waiter], Update?)
      /// The server ended the connection before it could be used: close it and connect again.
      case endedBeforeUse
      /// Shutting down: close the connection and stop.
      case close
    }

    mutating func ready(_ connection: ActiveConnection) -> ReadyAction {
      let ended = self.establishing?.id == connection.id && self.establishing?.ended == true
      self.establishing = nil
      if self.shuttingDown {
        return .close
      }
      if ended {
        return .endedBeforeUse
      }
      let waiters = Array(self.waiters.values)
      self.waiters.removeAll()
      self.connections[connection.id] = Entry(connection: connection, reserved: waiters.count)
      self.current = connection
      self.hadConnection = true
      self.lastError = nil
      return .use(waiters, self.setConnectivity(.ready))
    }

    mutating func connectFailed(_ id: UInt64, _ error: RPCError) -> ([Waiter], Update?) {
      if self.establishing?.id == id {
        self.establishing = nil
      }
      self.lastError = error
      var failed: [Waiter] = []
      for (id, waiter) in self.waiters where !waiter.waitForReady {
        failed.append(waiter)
        self.waiters.removeValue(forKey: id)
      }
      return (failed, self.setConnectivity(.transientFailure))
    }

    func isCurrent(_ id: UInt64) -> Bool {
      !self.shuttingDown && self.current?.id == id
    }

    mutating func draining(_ id: UInt64) -> Update? {
      if self.endedWhileEstablishing(id) { return nil }
      self.connections[id]?.draining = true
      if self.current?.id == id {
        self.current = nil
        return self.shuttingDown ? nil : self.setConnectivity(.idle)
      }
      return nil
    }

    mutating func closed(_ id: UInt64) -> Update? {
      if self.endedWhileEstablishing(id) { return nil }
      self.connections.removeValue(forKey: id)
      if self.current?.id == id {
        self.current = nil
        return self.shuttingDown ? nil : self.setConnectivity(.idle)
      }
      return nil
    }

    mutating func shutdown(force: Bool) -> ([Waiter], [any Channel], Update?) {
      let waiters = Array(self.waiters.values)
      self.waiters.removeAll()
      var channels: [any Channel] = []
      if !self.shuttingDown || force {
        self.shuttingDown = true
        self.current = nil
        for (id, entry) in self.connections {
          self.connections[id]?.draining = true
          if force || entry.reserved == 0 {
            channels.append(entry.connection.channel)
          }
        }
      }
      return (waiters, channels, self.setConnectivity(.shutdown))
    }
  }
}

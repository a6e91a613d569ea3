import RegistryPrimitives

/// The life of a long-lived stream's loop (the lease keep-alive loop, the watch multiplexer):
/// ``run(_:)`` runs the loop until ``shutdown()``, then cancels it and waits for it to end;
/// ``stopped()`` waits until ``run(_:)`` has returned.
struct LoopLifetime: Sendable {
  private let shutdownSignal = Signal()
  private let stoppedSignal = Signal()

  /// Runs `loop` until ``shutdown()`` (which may come first: then `loop` starts cancelled).
  func run(_ loop: @escaping @Sendable () async -> Void) async {
    defer { self.stoppedSignal.fire() }
    await withTaskGroup(of: Void.self) { group in
      group.addTask { await loop() }
      await self.shutdownSignal.waitIgnoringCancellation()
      group.cancelAll()
    }
  }

  func shutdown() {
    self.shutdownSignal.fire()
  }

  func stopped() async {
    await self.stoppedSignal.waitIgnoringCancellation()
  }
}

import RegistryPrimitives
import Testing

/// The shared primitives every module uses: the one-shot signal, the timeout helper and the
/// `host:port` split.
@Suite("Primitives")
struct PrimitivesTests {
  struct Boom: Error {}
  struct TimedOut: Error {}

  @Test("a signal releases the waiters that came before and after it fired")
  func signalFires() async {
    let signal = Signal()
    #expect(!signal.isFired)
    let early = Task { await signal.wait() }
    let earlyIgnoring = Task { await signal.waitIgnoringCancellation() }
    signal.fire()
    signal.fire()  // a second fire does nothing
    await early.value
    await earlyIgnoring.value
    #expect(signal.isFired)
    await signal.wait()
    await signal.waitIgnoringCancellation()
  }

  @Test("a cancelled wait() returns without the signal; waitIgnoringCancellation() does not")
  func cancellation() async throws {
    let signal = Signal()
    let released = Locked(0)
    let cancellable = Task {
      await signal.wait()
      released.withLock { $0 += 1 }
    }
    let stubborn = Task {
      await signal.waitIgnoringCancellation()
      released.withLock { $0 += 10 }
    }
    cancellable.cancel()
    stubborn.cancel()
    await cancellable.value
    #expect(released.withLock { $0 } == 1, "only the cancellable wait returned")
    #expect(!signal.isFired)
    signal.fire()
    await stubborn.value
    #expect(released.withLock { $0 } == 11)
  }

  @Test("withTimeout returns the body's value, rethrows its error, or throws the timeout's")
  func timeout() async throws {
    let value = try await withTimeout(.seconds(30), onTimeout: { TimedOut() }, { 42 })
    #expect(value == 42)
    await #expect(throws: Boom.self) {
      try await withTimeout(.seconds(30), onTimeout: { TimedOut() }, { throw Boom() })
    }
    let cancelled = Locked(false)
    await #expect(throws: TimedOut.self) {
      // The signal never fires: the body waits until the timeout cancels it.
      let body: @Sendable () async -> Void = {
        await Signal().wait()
        cancelled.withLock { $0 = Task.isCancelled }
      }
      try await withTimeout(.milliseconds(20), onTimeout: { TimedOut() }, body)
    }
    #expect(cancelled.withLock { $0 }, "the body was cancelled when the time was up")
  }

  @Test(
    "HostPort splits host:port at the last colon",
    arguments: [
      ("127.0.0.1:2379", HostPort(host: "127.0.0.1", port: 2379)),
      ("etcd-0.etcd:2379", HostPort(host: "etcd-0.etcd", port: 2379)),
      ("[::1]:2379", HostPort(host: "::1", port: 2379)),
      ("localhost:65535", HostPort(host: "localhost", port: 65535)),
    ]
  )
  func hostPort(text: String, expected: HostPort) {
    #expect(HostPort(text) == expected)
  }

  @Test(
    "HostPort rejects what is not host:port",
    arguments: [
      "127.0.0.1", "127.0.0.1:", ":2379", "[]:2379", "host:0", "host:65536", "host:port",
      "http://127.0.0.1:2379", "", "host:-1",
    ]
  )
  func hostPortRejects(text: String) {
    #expect(HostPort(text) == nil)
  }
}

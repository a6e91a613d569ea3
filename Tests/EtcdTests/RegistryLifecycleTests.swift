import Testing

@testable import EtcdRegistry

/// The registry's lifecycle (`RegistryLifecycle`), event by event: who performs the shutdown,
/// whether the lease is revoked or left to expire, and that shutdown happens once.
@Suite("Registry lifecycle")
struct RegistryLifecycleTests {
  @Test("a registry never run shuts down once and revokes its lease")
  func shutdownWithoutRun() {
    var lifecycle = RegistryLifecycle()
    #expect(!lifecycle.isRunning)
    #expect(!lifecycle.isShutDown)
    #expect(lifecycle.beginShutdown() == .revokeLease)
    #expect(lifecycle.isShutDown)
    #expect(lifecycle.beginShutdown() == nil, "the second shutdown finds one under way")
  }

  @Test("a graceful shutdown during run() revokes the lease; run() ending leaves it shut down")
  func gracefulShutdown() {
    var lifecycle = RegistryLifecycle()
    lifecycle.runStarted()
    #expect(lifecycle.isRunning, "shutdown() waits for run() to perform the shutdown")
    #expect(lifecycle.beginShutdown() == .revokeLease)
    lifecycle.runEnded()
    #expect(!lifecycle.isRunning)
    #expect(lifecycle.isShutDown)
    #expect(lifecycle.run == .ended(cancelled: false))
  }

  @Test(
    "run() cancelled leaves the lease to expire, whether its shutdown comes before or after it ends"
  )
  func cancelled() {
    var during = RegistryLifecycle()
    during.runStarted()
    during.runCancelled()
    #expect(during.beginShutdown() == .leaveLeaseToExpire)

    // run() was cancelled and returned before anything shut down; shutdown() does it later.
    var after = RegistryLifecycle()
    after.runStarted()
    after.runCancelled()
    after.runEnded()
    #expect(!after.isRunning, "shutdown() does not wait for a run() that ended")
    #expect(after.beginShutdown() == .leaveLeaseToExpire)
  }

  @Test("a cancellation after the shutdown was decided, or without a run, changes nothing")
  func lateCancellation() {
    var lifecycle = RegistryLifecycle()
    lifecycle.runCancelled()
    #expect(lifecycle.run == .notStarted)

    lifecycle.runStarted()
    #expect(lifecycle.beginShutdown() == .revokeLease)
    lifecycle.runCancelled()
    #expect(lifecycle.beginShutdown() == nil)
    lifecycle.runEnded()
    #expect(lifecycle.run == .ended(cancelled: true))
  }
}

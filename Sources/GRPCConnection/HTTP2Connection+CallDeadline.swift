public import GRPCCore

extension HTTP2Connection {
  /// The deadline set by ``withCallDeadline(_:isolation:_:)`` for the calls of this task.
  @TaskLocal static var callDeadline: ContinuousClock.Instant?

  /// Runs `body` with `deadline` as the deadline of every call it starts on an
  /// `HTTP2Connection` (directly, or through a `RegistryClientTransport` built on them) that
  /// sets no `CallOptions.timeout` of its own.
  ///
  /// The connection enforces such a deadline itself: it sends it as `grpc-timeout`, bounds the
  /// wait for a connection with it, and resets the stream with `deadlineExceeded` when it passes,
  /// with a timer on the connection's event loop that is gone as soon as the call ends.
  ///
  /// Why not `CallOptions.timeout`: for a call with a timeout, `GRPCClient` races the call
  /// against a `Task.sleep` until the deadline and cancels the sleep when the call ends first.
  /// The Swift runtime on Linux keeps a cancelled sleep's task (about 1.7 KB) until its deadline
  /// would have passed (swiftlang/swift#60441), so memory grows with calls per second times the
  /// timeout: 20,000 calls/s with a 5 s timeout hold about 170 MB. Calls in a hot path with long
  /// timeouts should use this instead; the etcd client does for every request.
  ///
  /// - Parameters:
  ///   - deadline: When the calls give up with `deadlineExceeded`.
  ///   - body: Makes the calls (through a `GRPCClient`, or `withStream` directly).
  public static func withCallDeadline<T>(
    _ deadline: ContinuousClock.Instant,
    isolation: isolated (any Actor)? = #isolation,
    _ body: () async throws -> T
  ) async rethrows -> T {
    try await Self.$callDeadline.withValue(deadline, operation: body, isolation: isolation)
  }

  /// The deadline of a call made now with `options`: its `timeout` from now, else the deadline
  /// ``withCallDeadline(_:isolation:_:)`` set for the current task, else none.
  public static func deadline(of options: CallOptions) -> ContinuousClock.Instant? {
    options.timeout.map { ContinuousClock.now + $0 } ?? Self.callDeadline
  }

  /// What is left until `deadline`; throws `deadlineExceeded` if it has passed.
  static func remaining(until deadline: ContinuousClock.Instant?) throws -> Duration? {
    guard let deadline else { return nil }
    let remaining = ContinuousClock.now.duration(to: deadline)
    guard remaining > .zero else {
      throw RPCError(
        code: .deadlineExceeded,
        message: "The call's deadline passed before its stream could be opened."
      )
    }
    return remaining
  }
}

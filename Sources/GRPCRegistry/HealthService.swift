import GRPCCore
import RegistryPrimitives
import Synchronization

/// The server side of `grpc.health.v1.Health`: one status for the server as a whole (service
/// `""`) and optional statuses per service name. `Watch` streams every change; ``shutdown()``
/// sends NOT_SERVING and ends every stream, so the server's graceful shutdown is not held up by
/// clients watching it.
final class HealthService: Grpc_Health_V1_Health.ServiceProtocol, Sendable {
  typealias Status = Grpc_Health_V1_HealthCheckResponse.ServingStatus

  private struct State {
    var statuses: [String: Status] = ["": .notServing]
    var watchers: [UInt64: (service: String, continuation: AsyncStream<Status>.Continuation)] = [:]
    var nextID: UInt64 = 0
    var ended = false
  }

  private let state = Locked(State())

  /// Sets the status of `service` (`""` for the whole server) and tells its watchers.
  func setStatus(_ status: Status, for service: String = "") {
    let watchers = self.state.withLock { state -> [AsyncStream<Status>.Continuation] in
      state.statuses[service] = status
      return state.watchers.values.filter { $0.service == service }.map(\.continuation)
    }
    for watcher in watchers { watcher.yield(status) }
  }

  /// Sets every status to NOT_SERVING and ends every `Watch` stream.
  func shutdown() {
    let watchers = self.state.withLock { state -> [(String, AsyncStream<Status>.Continuation)] in
      state.ended = true
      for key in state.statuses.keys { state.statuses[key] = .notServing }
      defer { state.watchers.removeAll() }
      return state.watchers.values.map { ($0.service, $0.continuation) }
    }
    for (_, watcher) in watchers {
      watcher.yield(.notServing)
      watcher.finish()
    }
  }

  func check(
    request: ServerRequest<Grpc_Health_V1_HealthCheckRequest>,
    context: ServerContext
  ) async throws -> ServerResponse<Grpc_Health_V1_HealthCheckResponse> {
    let service = request.message.service
    guard let status = self.state.withLock({ $0.statuses[service] }) else {
      throw RPCError(code: .notFound, message: "Unknown service '\(service)'.")
    }
    var response = Grpc_Health_V1_HealthCheckResponse()
    response.status = status
    return ServerResponse(message: response)
  }

  func watch(
    request: ServerRequest<Grpc_Health_V1_HealthCheckRequest>,
    context: ServerContext
  ) async throws -> StreamingServerResponse<Grpc_Health_V1_HealthCheckResponse> {
    let service = request.message.service
    let (stream, continuation) = AsyncStream.makeStream(
      of: Status.self,
      bufferingPolicy: .bufferingNewest(1)
    )
    let id = self.state.withLock { state -> UInt64? in
      // Yielding under the lock orders the current status before any later change.
      continuation.yield(state.statuses[service] ?? .serviceUnknown)
      if state.ended { return nil }
      state.nextID += 1
      state.watchers[state.nextID] = (service, continuation)
      return state.nextID
    }
    if let id {
      continuation.onTermination = { [weak self] _ in
        _ = self?.state.withLock { $0.watchers.removeValue(forKey: id) }
      }
    } else {
      continuation.finish()
    }
    return StreamingServerResponse { writer in
      for await status in stream {
        var response = Grpc_Health_V1_HealthCheckResponse()
        response.status = status
        try await writer.write(response)
      }
      return [:]
    }
  }
}

import GRPCCore
import RegistryPrimitives
import Synchronization

/// The auth token of a client: fetched once, shared by every request, renewed when etcd says it
/// expired. Concurrent requests wait for the same authentication.
final class AuthTokens: Sendable {
  private let credentials: EtcdClient.Credentials?
  private let state = Locked<State>(State())

  private struct State {
    var token: String?
    var pending: Task<String, any Error>?
  }

  init(credentials: EtcdClient.Credentials?) {
    self.credentials = credentials
  }

  var isConfigured: Bool { self.credentials != nil }

  /// The metadata to send: `token` when auth is configured, nothing otherwise.
  func metadata(for client: EtcdClient) async throws -> Metadata {
    guard let credentials = self.credentials else { return [:] }
    let task: Task<String, any Error> = self.state.withLock { state in
      if let token = state.token { return Task { token } }
      if let pending = state.pending { return pending }
      // Authentication is shared by every waiting request, so it cannot belong to any one of
      // them: a task of its own, which ends with the request to etcd.
      let pending = Task { try await Self.authenticate(credentials, client: client) }
      state.pending = pending
      return pending
    }
    do {
      let token = try await task.value
      self.state.withLock { state in
        if state.pending == task {
          state.token = token
          state.pending = nil
        }
      }
      return ["token": .string(token)]
    } catch {
      self.state.withLock { state in
        if state.pending == task { state.pending = nil }
      }
      throw error
    }
  }

  /// Forgets the token that `metadata` carried, unless another request already renewed it.
  func invalidate(_ metadata: Metadata) {
    let used = metadata[stringValues: "token"].first(where: { _ in true })
    self.state.withLock { state in
      if state.token == used { state.token = nil }
    }
  }

  private static func authenticate(
    _ credentials: EtcdClient.Credentials,
    client: EtcdClient
  ) async throws -> String {
    var request = Etcdserverpb_AuthenticateRequest()
    request.name = credentials.username
    request.password = credentials.password
    let response = try await client.unary("authenticate", authenticated: false) {
      grpc,
      metadata,
      options in
      try await Etcdserverpb_Auth.Client(wrapping: grpc).authenticate(
        request,
        metadata: metadata,
        options: options
      )
    }
    client.logger.debug("etcd authenticated", metadata: ["etcd.user": "\(credentials.username)"])
    return response.token
  }
}

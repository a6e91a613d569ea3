public import GRPCCore

/// The example `user.UserMesService`: `GetById` answers `User(id: id, name: <name>)`, where the
/// name is the server's advertised address, so a client sees which instance served each call.
///
/// ```swift
/// let directory = UserDirectory(name: { server.advertisedAddress ?? "" })
/// ```
public struct UserDirectory: User_UserMesService.SimpleServiceProtocol {
  private let name: @Sendable () -> String

  /// A directory that answers with the name `name()` returns at the time of each call.
  public init(name: @escaping @Sendable () -> String) {
    self.name = name
  }

  /// A directory that always answers with `name`.
  public init(name: String) {
    self.name = { name }
  }

  public func getById(
    request: User_GetByIdReq,
    context: ServerContext
  ) async throws -> User_GetByIDResp {
    var user = User_User()
    user.id = request.id
    user.name = self.name()
    var response = User_GetByIDResp()
    response.user = user
    return response
  }
}

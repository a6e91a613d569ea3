import GRPCCore
import GRPCProtobuf
import UserService

/// Hand-written descriptors of `interop.InteropTest` (Protos/interop/interop.proto); its messages
/// are user.proto's, so no Swift code is generated for it.
enum InteropTest {
  static let service = ServiceDescriptor(fullyQualifiedService: "interop.InteropTest")
  static let slow = MethodDescriptor(service: service, method: "Slow")
  static let echo = MethodDescriptor(service: service, method: "Echo")
  static let fail = MethodDescriptor(service: service, method: "Fail")
  static let list = MethodDescriptor(service: service, method: "List")
  static let collect = MethodDescriptor(service: service, method: "Collect")
  static let chat = MethodDescriptor(service: service, method: "Chat")
  /// A method no server implements.
  static let missing = MethodDescriptor(service: service, method: "Missing")
}

/// The Swift implementation of `interop.InteropTest`, the same behaviour as the Go server's.
struct InteropTestService: RegistrableRPCService {
  let name: @Sendable () -> String

  func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
    let name = self.name
    router.registerHandler(
      forMethod: InteropTest.slow,
      deserializer: ProtobufDeserializer<User_GetByIdReq>(),
      serializer: ProtobufSerializer<User_GetByIDResp>()
    ) { request, _ in
      let message = try await request.messages.first { _ in true } ?? User_GetByIdReq()
      // grpc-swift ends a call whose deadline passed or that the client reset by cancelling the
      // RPC's cancellation handle, not the handler's task: a plain `Task.sleep` would run on for
      // its whole time (and hold up the server's graceful shutdown), unlike the Go handler.
      let sleep = Task { try await Task.sleep(for: .milliseconds(message.id)) }
      try await withRPCCancellationHandler {
        try await sleep.value
      } onCancelRPC: {
        sleep.cancel()
      }
      return StreamingServerResponse(
        single: ServerResponse(message: Self.response(message.id, name()))
      )
    }
    router.registerHandler(
      forMethod: InteropTest.echo,
      deserializer: ProtobufDeserializer<User_User>(),
      serializer: ProtobufSerializer<User_User>()
    ) { request, _ in
      let message = try await request.messages.first { _ in true } ?? User_User()
      return StreamingServerResponse(single: ServerResponse(message: message))
    }
    router.registerHandler(
      forMethod: InteropTest.fail,
      deserializer: ProtobufDeserializer<User_GetByIdReq>(),
      serializer: ProtobufSerializer<User_GetByIDResp>()
    ) { request, _ in
      let message = try await request.messages.first { _ in true } ?? User_GetByIdReq()
      if message.id == 0 {
        return StreamingServerResponse(single: ServerResponse(message: Self.response(0, name())))
      }
      let code = RPCError.Code(Status.Code(rawValue: Int(message.id)) ?? .unknown) ?? .unknown
      throw RPCError(code: code, message: "requested failure")
    }
    router.registerHandler(
      forMethod: InteropTest.list,
      deserializer: ProtobufDeserializer<User_GetByIdReq>(),
      serializer: ProtobufSerializer<User_User>()
    ) { request, _ in
      let message = try await request.messages.first { _ in true } ?? User_GetByIdReq()
      return StreamingServerResponse { writer in
        if message.id > 0 {
          for id in 1 ... message.id {
            try await writer.write(Self.user(id, name()))
          }
        }
        return [:]
      }
    }
    router.registerHandler(
      forMethod: InteropTest.collect,
      deserializer: ProtobufDeserializer<User_User>(),
      serializer: ProtobufSerializer<User_GetByIDResp>()
    ) { request, _ in
      var names: [String] = []
      for try await message in request.messages { names.append(message.name) }
      var response = User_GetByIDResp()
      response.user = Self.user(Int64(names.count), names.joined(separator: ","))
      return StreamingServerResponse(single: ServerResponse(message: response))
    }
    router.registerHandler(
      forMethod: InteropTest.chat,
      deserializer: ProtobufDeserializer<User_User>(),
      serializer: ProtobufSerializer<User_User>()
    ) { request, _ in
      StreamingServerResponse { writer in
        for try await message in request.messages { try await writer.write(message) }
        return [:]
      }
    }
  }

  static func user(_ id: Int64, _ name: String) -> User_User {
    var user = User_User()
    user.id = id
    user.name = name
    return user
  }

  static func response(_ id: Int64, _ name: String) -> User_GetByIDResp {
    var response = User_GetByIDResp()
    response.user = Self.user(id, name)
    return response
  }
}

/// The calls of the tests, over any client transport.
struct InteropClient: Sendable {
  let getById: @Sendable (Int64) async throws -> String
  let slow: @Sendable (_ milliseconds: Int64, CallOptions) async throws -> String
  let echo: @Sendable (User_User) async throws -> User_User
  let fail: @Sendable (_ code: Int64) async throws -> String
  let list: @Sendable (_ count: Int64) async throws -> [User_User]
  let collect: @Sendable ([String]) async throws -> User_User
  let chat: @Sendable ([String]) async throws -> [String]
  /// A Chat call that sends one message, calls `echoed` when the server's echo arrives, and then
  /// holds the stream open (it never half-closes) until the call is cancelled.
  let heldChat: @Sendable (_ echoed: @escaping @Sendable () -> Void) async throws -> Void
  let missing: @Sendable () async throws -> Void

  init<Transport: ClientTransport>(_ client: GRPCClient<Transport>) {
    let users = User_UserMesService.Client(wrapping: client)
    self.getById = { id in
      var request = User_GetByIdReq()
      request.id = id
      return try await users.getById(request).user.name
    }
    self.slow = { milliseconds, options in
      var request = User_GetByIdReq()
      request.id = milliseconds
      return try await client.unary(
        request: ClientRequest(message: request),
        descriptor: InteropTest.slow,
        serializer: ProtobufSerializer<User_GetByIdReq>(),
        deserializer: ProtobufDeserializer<User_GetByIDResp>(),
        options: options
      ) { try $0.message.user.name }
    }
    self.echo = { user in
      try await client.unary(
        request: ClientRequest(message: user),
        descriptor: InteropTest.echo,
        serializer: ProtobufSerializer<User_User>(),
        deserializer: ProtobufDeserializer<User_User>(),
        options: .defaults
      ) { try $0.message }
    }
    self.fail = { code in
      var request = User_GetByIdReq()
      request.id = code
      return try await client.unary(
        request: ClientRequest(message: request),
        descriptor: InteropTest.fail,
        serializer: ProtobufSerializer<User_GetByIdReq>(),
        deserializer: ProtobufDeserializer<User_GetByIDResp>(),
        options: .defaults
      ) { try $0.message.user.name }
    }
    self.list = { count in
      var request = User_GetByIdReq()
      request.id = count
      return try await client.serverStreaming(
        request: ClientRequest(message: request),
        descriptor: InteropTest.list,
        serializer: ProtobufSerializer<User_GetByIdReq>(),
        deserializer: ProtobufDeserializer<User_User>(),
        options: .defaults
      ) { response in
        var users: [User_User] = []
        for try await user in response.messages { users.append(user) }
        return users
      }
    }
    self.collect = { names in
      try await client.clientStreaming(
        request: StreamingClientRequest { writer in
          for name in names { try await writer.write(InteropTestService.user(0, name)) }
        },
        descriptor: InteropTest.collect,
        serializer: ProtobufSerializer<User_User>(),
        deserializer: ProtobufDeserializer<User_GetByIDResp>(),
        options: .defaults
      ) { try $0.message.user }
    }
    self.chat = { names in
      try await client.bidirectionalStreaming(
        request: StreamingClientRequest { writer in
          for name in names { try await writer.write(InteropTestService.user(0, name)) }
        },
        descriptor: InteropTest.chat,
        serializer: ProtobufSerializer<User_User>(),
        deserializer: ProtobufDeserializer<User_User>(),
        options: .defaults
      ) { response in
        var names: [String] = []
        for try await user in response.messages { names.append(user.name) }
        return names
      }
    }
    self.heldChat = { echoed in
      try await client.bidirectionalStreaming(
        request: StreamingClientRequest { writer in
          try await writer.write(InteropTestService.user(0, "held"))
          // Open until cancelled: the cancellation is what ends this call.
          while true { try await Task.sleep(for: .seconds(3600)) }
        },
        descriptor: InteropTest.chat,
        serializer: ProtobufSerializer<User_User>(),
        deserializer: ProtobufDeserializer<User_User>(),
        options: .defaults
      ) { response in
        for try await _ in response.messages { echoed() }
      }
    }
    self.missing = {
      try await client.unary(
        request: ClientRequest(message: User_GetByIdReq()),
        descriptor: InteropTest.missing,
        serializer: ProtobufSerializer<User_GetByIdReq>(),
        deserializer: ProtobufDeserializer<User_GetByIDResp>(),
        options: .defaults
      ) { _ = try $0.message }
    }
  }
}

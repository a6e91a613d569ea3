import GRPCCore

extension EtcdClient {
  /// Administration of etcd's auth: enough to set up users and roles (tests, bootstrap tools).
  ///
  /// Normal clients only need ``Config/credentials``.
  package struct AuthAdmin: Sendable {
    let client: EtcdClient

    /// Adds a user with a password.
    package func addUser(_ name: String, password: String) async throws {
      var request = Etcdserverpb_AuthUserAddRequest()
      request.name = name
      request.password = password
      _ = try await self.client.unary("user add") { grpc, metadata, options in
        try await Etcdserverpb_Auth.Client(wrapping: grpc).userAdd(
          request,
          metadata: metadata,
          options: options
        )
      }
    }

    /// Adds a role.
    package func addRole(_ name: String) async throws {
      var request = Etcdserverpb_AuthRoleAddRequest()
      request.name = name
      _ = try await self.client.unary("role add") { grpc, metadata, options in
        try await Etcdserverpb_Auth.Client(wrapping: grpc).roleAdd(
          request,
          metadata: metadata,
          options: options
        )
      }
    }

    /// Grants a role read and write permission on a key range.
    package func grantReadWrite(role: String, on range: EtcdKeyRange) async throws {
      var permission = Etcdserverpb_Permission()
      permission.permType = .readwrite
      permission.key = .init(range.key)
      permission.rangeEnd = .init(range.rangeEnd)
      var request = Etcdserverpb_AuthRoleGrantPermissionRequest()
      request.name = role
      request.perm = permission
      _ = try await self.client.unary("role grant permission") { grpc, metadata, options in
        try await Etcdserverpb_Auth.Client(wrapping: grpc).roleGrantPermission(
          request,
          metadata: metadata,
          options: options
        )
      }
    }

    /// Grants a role to a user.
    package func grantRole(_ role: String, to user: String) async throws {
      var request = Etcdserverpb_AuthUserGrantRoleRequest()
      request.user = user
      request.role = role
      _ = try await self.client.unary("user grant role") { grpc, metadata, options in
        try await Etcdserverpb_Auth.Client(wrapping: grpc).userGrantRole(
          request,
          metadata: metadata,
          options: options
        )
      }
    }

    /// Turns auth on (a `root` user with the `root` role must exist).
    package func enable() async throws {
      _ = try await self.client.unary("auth enable") { grpc, metadata, options in
        try await Etcdserverpb_Auth.Client(wrapping: grpc).authEnable(
          Etcdserverpb_AuthEnableRequest(),
          metadata: metadata,
          options: options
        )
      }
    }
  }

  /// User and role administration.
  package var authAdmin: AuthAdmin { AuthAdmin(client: self) }
}

import GRPCConnection
import GRPCCore

extension EtcdClient {
  /// The members of the cluster.
  public func members() async throws -> [EtcdMember] {
    let response = try await self.unary("member list") { grpc, metadata, options in
      try await Etcdserverpb_Cluster.Client(wrapping: grpc).memberList(
        Etcdserverpb_MemberListRequest(),
        metadata: metadata,
        options: options
      )
    }
    return response.members.map {
      EtcdMember(
        id: $0.id,
        name: $0.name,
        peerURLs: $0.peerUrls,
        clientURLs: $0.clientUrls,
        isLearner: $0.isLearner
      )
    }
  }

  /// The status of one endpoint (by default the one requests go to): version, leader, revision,
  /// database size. Unlike other requests this does not fail over: it asks that member.
  public func status(of endpoint: String? = nil) async throws -> EtcdStatus {
    let target: Endpoint
    if let endpoint {
      guard let match = self.endpoints.first(where: { $0.address == endpoint }) else {
        throw EtcdError(
          code: .invalidArgument,
          message:
            "'\(endpoint)' is not one of the client's endpoints (\(self.config.endpoints.joined(separator: ", ")))"
        )
      }
      target = match
    } else {
      target = self.pickEndpoint().1
    }
    do {
      let metadata = try await self.auth.metadata(for: self)
      let deadline = ContinuousClock.now + self.config.requestTimeout
      let response = try await HTTP2Connection.withCallDeadline(deadline) {
        try await Etcdserverpb_Maintenance.Client(wrapping: target.client).status(
          Etcdserverpb_StatusRequest(),
          metadata: metadata
        )
      }
      return EtcdStatus(
        header: EtcdResponseHeader(response.header),
        version: response.version,
        dbSize: response.dbSize,
        leader: response.leader,
        raftIndex: response.raftIndex,
        raftTerm: response.raftTerm,
        errors: response.errors
      )
    } catch let error as RPCError {
      throw EtcdError(rpc: error, operation: "status", endpoint: target.address)
    }
  }
}

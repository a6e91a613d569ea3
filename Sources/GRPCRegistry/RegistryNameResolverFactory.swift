public import GRPCCore
public import GRPCNIOTransportHTTP2
public import RegistryCore

/// A push-mode `NameResolverFactory` for ``RegistryTarget``s, so that grpc-swift's own
/// `HTTP2ClientTransport.Posix` can dial `registry://` targets.
///
/// Each resolution follows the registry's watch of the service: it yields the instances of the
/// target's group whenever they change, with a service config that selects round robin (grpc-swift
/// otherwise picks the first endpoint only). A registry error ends the resolution with that error,
/// so the channel keeps its last endpoints and subscribes again after a backoff; an empty set is
/// never yielded.
///
/// grpc-swift's endpoints carry no weights or groups and its round robin treats every endpoint
/// alike; for weights, per-call groups, failover and health checking use
/// ``RegistryClientTransport``.
///
/// ```swift
/// var resolvers = NameResolverRegistry.defaults
/// resolvers.registerFactory(RegistryNameResolverFactory(registry: registry))
/// let transport = try HTTP2ClientTransport.Posix(
///   target: .registry(service: "user-server"),
///   transportSecurity: .plaintext,
///   resolverRegistry: resolvers
/// )
/// ```
public struct RegistryNameResolverFactory: NameResolverFactory, Sendable {
  public typealias Target = RegistryTarget

  /// The registry the resolvers watch.
  public let registry: any ServiceRegistry
  /// The service config sent with every result; it selects round robin by default.
  public var serviceConfig: ServiceConfig

  /// Creates a factory for resolvers that watch `registry`.
  ///
  /// - Parameters:
  ///   - registry: The registry to watch.
  ///   - serviceConfig: The service config of every result; the default selects round robin.
  public init(
    registry: any ServiceRegistry,
    serviceConfig: ServiceConfig = ServiceConfig(loadBalancingConfig: [.roundRobin])
  ) {
    self.registry = registry
    self.serviceConfig = serviceConfig
  }

  public func resolver(for target: RegistryTarget) -> NameResolver {
    let sequence = Resolution(
      registry: self.registry,
      target: target,
      serviceConfig: self.serviceConfig
    )
    return NameResolver(
      names: RPCAsyncSequence(wrapping: sequence),
      updateMode: .push,
      authority: target.service
    )
  }
}

extension RegistryNameResolverFactory {
  /// The resolution results of one target: every iteration is a new registry watch.
  struct Resolution: AsyncSequence, Sendable {
    typealias Element = NameResolutionResult
    typealias Failure = any Error

    let registry: any ServiceRegistry
    let target: RegistryTarget
    let serviceConfig: ServiceConfig

    func makeAsyncIterator() -> AsyncIterator {
      AsyncIterator(
        snapshots: self.registry.watch(self.target.service).snapshots.makeAsyncIterator(),
        target: self.target,
        serviceConfig: self.serviceConfig
      )
    }

    struct AsyncIterator: AsyncIteratorProtocol {
      var snapshots: ServiceSnapshots.AsyncIterator
      let target: RegistryTarget
      let serviceConfig: ServiceConfig
      var last: [Endpoint]?

      mutating func next() async throws -> NameResolutionResult? {
        while true {
          guard let snapshot = try await self.snapshots.next() else {
            // The channel treats the end like an error and subscribes again; when it is
            // shutting down it has cancelled us, which must surface as CancellationError.
            try Task.checkCancellation()
            return nil
          }
          let instances = snapshot.instances.filter { instance in
            self.target.group.map { instance.group == $0 } ?? true
          }
          var endpoints: [Endpoint] = []
          for instance in instances {
            if let endpoint = try? await Self.endpoint(for: instance.address) {
              endpoints.append(endpoint)
            }
          }
          // An empty list would be ignored by the channel anyway; an unchanged one is noise.
          guard !endpoints.isEmpty, endpoints != self.last else { continue }
          self.last = endpoints
          return NameResolutionResult(
            endpoints: endpoints,
            serviceConfig: .success(self.serviceConfig)
          )
        }
      }

      static func endpoint(for address: String) async throws -> Endpoint {
        let parsed = try ServiceAddress(parsing: address)
        return Endpoint(addresses: try await HostResolver.socketAddresses(parsed))
      }
    }
  }
}

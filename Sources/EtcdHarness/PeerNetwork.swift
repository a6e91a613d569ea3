import NIOCore
import NIOPosix
import RegistryPrimitives
import Synchronization

/// The peer relays of one cluster, through which all raft traffic between its members flows, so
/// the harness can cut one member off from the others while its clients still reach it.
///
/// Every member advertises its relay's port as its peer URL, and etcd itself listens for peers on
/// a port of its own behind it. A relay learns which member dialed each connection from `/proc`
/// (see ``SocketOwner``) before it forwards a byte, and ``PeerLinkTable`` decides whether the
/// partition allows the link; isolating a member closes every link it sends or receives, and
/// its relay and the others refuse new ones until it rejoins.
final class PeerNetwork: Sendable {
  /// One member's relay: `advertisedPort` (in the peer URL) forwards to etcd's `listenPort`.
  struct Relay: Sendable {
    var member: String
    var advertisedPort: Int
    var listenPort: Int
  }

  /// One event loop and one lookup thread for every relay of the process, never shut down (like
  /// NIO's singletons) but the harness's own: a test that blocks or saturates the shared
  /// singletons must not stall the raft traffic of its etcd cluster.
  private static let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
  private static let lookups: NIOThreadPool = {
    let pool = NIOThreadPool(numberOfThreads: 1)
    pool.start()
    return pool
  }()

  private let table = Locked(PeerLinkTable<any Channel>())
  private let processes = Locked<[String: Int32]>([:])
  private let listeners = Locked<[any Channel]>([])

  init() {}

  /// Starts listening on the relay's advertised port.
  ///
  /// - Throws: ``HarnessError`` when the port cannot be bound.
  func start(_ relay: Relay) async throws {
    let bootstrap = ServerBootstrap(group: Self.group)
      .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
      // Nothing is read (nor forwarded) before the sender is known and the link is allowed.
      .childChannelOption(ChannelOptions.autoRead, value: false)
      .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
      .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.addHandler(
            RelayAcceptHandler(network: self, relay: relay)
          )
        }
      }
    let listener: any Channel
    do {
      listener = try await bootstrap.bind(host: "127.0.0.1", port: relay.advertisedPort).get()
    } catch {
      throw HarnessError(
        "could not listen for \(relay.member)'s peers on 127.0.0.1:\(relay.advertisedPort): \(error)"
      )
    }
    self.listeners.withLock { $0.append(listener) }
  }

  /// Records the process id of `member`, so relays can tell which member dialed.
  func register(member: String, pid: Int32) {
    self.processes.withLock { $0[member] = pid }
  }

  /// Whether `member` is cut off from its peers.
  func isIsolated(_ member: String) -> Bool {
    self.table.withLock { $0.isIsolated(member) }
  }

  /// Cuts `member` off from its peers; returns once every link it had is closed.
  func isolate(_ member: String) async {
    let cut = self.table.withLock { $0.isolate(member) }
    for connection in cut { try? await connection.close().get() }
  }

  /// Lets `member` reach its peers again.
  func rejoin(_ member: String) {
    self.table.withLock { $0.rejoin(member) }
  }

  /// The number of relayed connections now open.
  var linkCount: Int {
    self.table.withLock { $0.linkCount }
  }

  /// Stops every relay and closes every relayed connection.
  func close() async {
    let connections = self.table.withLock { $0.close() }
    let listeners = self.listeners.withLock { listeners in
      defer { listeners = [] }
      return listeners
    }
    for channel in listeners + connections { try? await channel.close().get() }
  }

  /// A relay accepted `inbound`: find its sender off the event loop, then link or refuse it.
  fileprivate func admit(_ inbound: any Channel, relay: Relay) {
    guard let dialerPort = inbound.remoteAddress?.port,
      !self.table.withLock({ $0.refusesEveryone(to: relay.member) })
    else {
      inbound.close(promise: nil)
      return
    }
    let processes = self.processes.withLock { $0.map { (name: $0.key, pid: $0.value) } }
    Self.lookups.runIfActive(eventLoop: inbound.eventLoop) {
      SocketOwner.owner(dialedFrom: dialerPort, to: relay.advertisedPort, among: processes)
    }.whenComplete { result in
      let sender: String? =
        switch result {
        case .success(let sender): sender
        case .failure: nil
        }
      self.link(inbound, from: sender, relay: relay)
    }
  }

  private func link(_ inbound: any Channel, from sender: String?, relay: Relay) {
    // The table decides atomically with `isolate`: a link it admits is cut by a later
    // isolation, and one it refuses is never forwarded.
    guard inbound.isActive,
      let id = self.table.withLock({
        $0.open(sender: sender, receiver: relay.member, connection: inbound)
      })
    else {
      inbound.close(promise: nil)
      return
    }
    inbound.closeFuture.whenComplete { _ in self.table.withLock { $0.remove(id) } }
    let (inboundGlue, outboundGlue) = GlueHandler.matchedPair()
    do {
      try inbound.pipeline.syncOperations.addHandler(inboundGlue)
    } catch {
      inbound.close(promise: nil)
      return
    }
    let boundGlue = NIOLoopBound(outboundGlue, eventLoop: inbound.eventLoop)
    ClientBootstrap(group: inbound.eventLoop)
      .channelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
      .connectTimeout(.seconds(2))
      .channelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.addHandler(boundGlue.value)
        }
      }
      .connect(host: "127.0.0.1", port: relay.listenPort)
      .whenComplete { result in
        switch result {
        case .success(let outbound):
          if self.table.withLock({ $0.attach(outbound, to: id) }) {
            inbound.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in
              inbound.close(promise: nil)
            }
          } else {
            outbound.close(promise: nil)
            inbound.close(promise: nil)
          }
        case .failure:
          // etcd is down (stopped, restarting): the member dials again.
          inbound.close(promise: nil)
        }
      }
  }
}

/// Starts the admission of each connection a relay accepts.
private final class RelayAcceptHandler: ChannelInboundHandler {
  typealias InboundIn = NIOAny

  private let network: PeerNetwork
  private let relay: PeerNetwork.Relay

  init(network: PeerNetwork, relay: PeerNetwork.Relay) {
    self.network = network
    self.relay = relay
  }

  func channelActive(context: ChannelHandlerContext) {
    self.network.admit(context.channel, relay: self.relay)
    context.fireChannelActive()
  }
}

/// The peer links of a cluster's relays and which of them a partition allows: a plain value that
/// takes events (a link opens, a member is isolated or rejoins, the cluster closes) and returns
/// the connections to cut; ``PeerNetwork`` performs the I/O.
///
/// A link is one TCP connection a member dialed to another member's advertised peer port, with
/// the connection the relay dialed on to etcd's own peer listener. Its sender is the member that
/// dialed, or `nil` when the relay could not tell.
package struct PeerLinkTable<Connection> {
  /// One relayed connection.
  package struct Link {
    /// The member that dialed, when known.
    package var sender: String?
    /// The member whose relay accepted the connection.
    package var receiver: String
    /// The accepted connection and, once connected, the one to etcd.
    package var connections: [Connection]
  }

  private enum State {
    case open(isolated: Set<String>, links: [Int: Link], nextID: Int)
    case closed
  }

  private var state: State = .open(isolated: [], links: [:], nextID: 0)

  /// An open table with no links and no isolated member.
  package init() {}

  /// Whether the partition lets `sender` reach `receiver`.
  ///
  /// A link from an unknown sender is allowed only while no member is isolated: it might come from
  /// the isolated member, and refusing it costs a healthy member no more than a redial.
  package static func allows(sender: String?, receiver: String, isolated: Set<String>) -> Bool {
    if isolated.contains(receiver) { return false }
    guard let sender else { return isolated.isEmpty }
    return !isolated.contains(sender)
  }

  /// Whether a connection to `receiver`'s relay is refused whoever dialed it (then the relay does
  /// not need to find out who did).
  package func refusesEveryone(to receiver: String) -> Bool {
    switch self.state {
    case .open(let isolated, _, _): return isolated.contains(receiver)
    case .closed: return true
    }
  }

  /// Whether `member` is cut off from its peers.
  package func isIsolated(_ member: String) -> Bool {
    switch self.state {
    case .open(let isolated, _, _): return isolated.contains(member)
    case .closed: return false
    }
  }

  /// The number of open links.
  package var linkCount: Int {
    switch self.state {
    case .open(_, let links, _): return links.count
    case .closed: return 0
    }
  }

  /// A relay accepted `connection`; returns the link's id, or `nil` when it must be closed.
  package mutating func open(
    sender: String?,
    receiver: String,
    connection: Connection
  ) -> Int? {
    guard case .open(let isolated, var links, let nextID) = self.state,
      Self.allows(sender: sender, receiver: receiver, isolated: isolated)
    else { return nil }
    links[nextID] = Link(sender: sender, receiver: receiver, connections: [connection])
    self.state = .open(isolated: isolated, links: links, nextID: nextID + 1)
    return nextID
  }

  /// The relay connected link `id` on to etcd; returns `false` when the link was cut meanwhile
  /// (then `connection` must be closed).
  package mutating func attach(_ connection: Connection, to id: Int) -> Bool {
    guard case .open(let isolated, var links, let nextID) = self.state,
      links[id] != nil
    else { return false }
    links[id]?.connections.append(connection)
    self.state = .open(isolated: isolated, links: links, nextID: nextID)
    return true
  }

  /// Link `id` closed by itself.
  package mutating func remove(_ id: Int) {
    guard case .open(let isolated, var links, let nextID) = self.state else { return }
    links[id] = nil
    self.state = .open(isolated: isolated, links: links, nextID: nextID)
  }

  /// Cuts `member` off; returns the connections of every link the partition no longer allows.
  package mutating func isolate(_ member: String) -> [Connection] {
    guard case .open(var isolated, var links, let nextID) = self.state else { return [] }
    isolated.insert(member)
    var cut: [Connection] = []
    for (id, link) in links
    where !Self.allows(sender: link.sender, receiver: link.receiver, isolated: isolated) {
      cut += link.connections
      links[id] = nil
    }
    self.state = .open(isolated: isolated, links: links, nextID: nextID)
    return cut
  }

  /// Lets `member` reach its peers again (new links only: the cut ones are gone).
  package mutating func rejoin(_ member: String) {
    guard case .open(var isolated, let links, let nextID) = self.state else { return }
    isolated.remove(member)
    self.state = .open(isolated: isolated, links: links, nextID: nextID)
  }

  /// Closes the table for good; returns every open connection.
  package mutating func close() -> [Connection] {
    guard case .open(_, let links, _) = self.state else { return [] }
    self.state = .closed
    return links.values.flatMap(\.connections)
  }
}

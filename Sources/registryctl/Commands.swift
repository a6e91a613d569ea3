#if Tools
import ArgumentParser
import Etcd
import EtcdRegistry
import Foundation
import RegistryCore

struct Services: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "List every service with its instance count and groups."
  )

  @OptionGroup var connection: ConnectionOptions

  @Option(help: "Output format: table or json.")
  var output: OutputFormat = .table

  func run() async throws {
    let keyspace = try self.connection.keyspace
    let codec = self.connection.instanceCodec
    let result = try await self.connection.withClient {
      try await $0.getAll(.prefix(keyspace.rootPrefix))
    }
    var services: [String: (count: Int, groups: Set<String>)] = [:]
    for kv in result.kvs {
      guard let (service, address) = keyspace.parse(kv.keyString),
        let instance = try? codec.decode(kv.value, service: service, address: address)
      else { continue }
      services[service, default: (0, [])].count += 1
      if !instance.group.isEmpty {
        services[service, default: (0, [])].groups.insert(instance.group)
      }
    }
    guard !services.isEmpty else {
      throw Failure.notFound("no services are registered under \(keyspace.rootPrefix)")
    }
    let names = services.keys.sorted()
    switch self.output {
    case .json:
      let rows = names.map { name in
        ServiceRow(
          service: name,
          instances: services[name]?.count ?? 0,
          groups: (services[name]?.groups ?? []).sorted()
        )
      }
      try printJSON(rows)
    case .table:
      printTable(
        ["SERVICE", "INSTANCES", "GROUPS"],
        names.map {
          [
            $0, "\(services[$0]?.count ?? 0)",
            (services[$0]?.groups ?? []).sorted().joined(separator: ","),
          ]
        }
      )
    }
  }

  struct ServiceRow: Encodable {
    var service: String
    var instances: Int
    var groups: [String]
  }
}

struct List: AsyncParsableCommand {
  static let configuration = CommandConfiguration(abstract: "List the instances of a service.")

  @OptionGroup var connection: ConnectionOptions

  @Argument(help: "The service name.")
  var service: String

  @Option(help: "Only instances of this group.")
  var group: String?

  @Option(help: "Output format: table or json.")
  var output: OutputFormat = .table

  func validate() throws {
    do {
      try ServiceInstance.validate(serviceName: self.service)
    } catch {
      throw ValidationError(error.message)
    }
  }

  func run() async throws {
    let keyspace = try self.connection.keyspace
    let codec = self.connection.instanceCodec
    let rows = try await self.connection.withClient { client -> [InstanceRow] in
      let result = try await client.getAll(.prefix(keyspace.servicePrefix(self.service)))
      var ttls: [Int64: Int64] = [:]
      var rows: [InstanceRow] = []
      for kv in result.kvs {
        guard let (_, address) = keyspace.parse(kv.keyString),
          let instance = try? codec.decode(kv.value, service: self.service, address: address)
        else { continue }
        if let group = self.group, instance.group != group { continue }
        var ttl: Int64?
        if kv.lease != 0 {
          if ttls[kv.lease] == nil {
            // Seconds left; -1 for a lease that expired meanwhile.
            let left = try await client.leaseInfo(kv.lease).ttl
            ttls[kv.lease] = left.map { $0.components.seconds } ?? -1
          }
          ttl = ttls[kv.lease]
        }
        rows.append(InstanceRow(instance: instance, leaseTTL: ttl))
      }
      return rows.sorted { $0.address < $1.address }
    }
    guard !rows.isEmpty else {
      let scope = self.group.map { " in group \($0)" } ?? ""
      throw Failure.notFound("service \(self.service) has no instances\(scope)")
    }
    switch self.output {
    case .json:
      try printJSON(rows)
    case .table:
      printTable(
        ["ADDRESS", "WEIGHT", "GROUP", "VERSION", "METADATA", "TTL"],
        rows.map {
          [
            $0.address, "\($0.weight)", $0.group, $0.version,
            $0.metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(
              separator: ","
            ),
            $0.leaseTTL.map { "\($0)s" } ?? "-",
          ]
        }
      )
    }
  }

  struct InstanceRow: Encodable {
    var name: String
    var address: String
    var weight: Int
    var group: String
    var version: String
    var metadata: [String: String]
    var leaseTTL: Int64?

    init(instance: ServiceInstance, leaseTTL: Int64?) {
      self.name = instance.name
      self.address = instance.address
      self.weight = instance.weight
      self.group = instance.group
      self.version = instance.version
      self.metadata = instance.metadata
      self.leaseTTL = leaseTTL
    }
  }
}

struct Watch: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Print each change of a service as it happens, until Ctrl-C."
  )

  @OptionGroup var connection: ConnectionOptions

  @Argument(help: "The service name.")
  var service: String

  func validate() throws {
    do {
      try ServiceInstance.validate(serviceName: self.service)
    } catch {
      throw ValidationError(error.message)
    }
  }

  func run() async throws {
    do {
      try await withEtcdServiceRegistry(
        config: self.connection.registryConfiguration(),
        logger: self.connection.logger
      ) { registry in
        try await withThrowingTaskGroup(of: Void.self) { group in
          group.addTask {
            for try await event in registry.watch(self.service) {
              let time = ISO8601DateFormatter.string(
                from: Date(),
                timeZone: .gmt,
                formatOptions: [.withInternetDateTime, .withFractionalSeconds]
              )
              switch event {
              case .snapshot(let snapshot):
                print(
                  "\(time) snapshot rev=\(snapshot.revision) instances=\(snapshot.instances.count)"
                )
                for instance in snapshot.instances { print("\(time)   \(instance)") }
              case .added(let instance, let revision):
                print("\(time) added rev=\(revision) \(instance)")
              case .updated(let instance, let revision):
                print("\(time) updated rev=\(revision) \(instance)")
              case .removed(let instance, let revision):
                print("\(time) removed rev=\(revision) \(instance)")
              }
              fflush(nil)
            }
          }
          group.addTask { await Signals.wait() }
          try await group.next()
          group.cancelAll()
        }
      }
    } catch {
      throw self.connection.failure(error)
    }
  }
}

struct Register: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract:
      "Register an instance and keep its lease alive until Ctrl-C or SIGTERM, then deregister it."
  )

  @OptionGroup var connection: ConnectionOptions

  @Argument(help: "The service name.")
  var service: String

  @Argument(help: "The instance address, host:port.")
  var address: String

  @Option(help: "Weight (0 counts as 1).")
  var weight = 1

  @Option(help: "Group.")
  var group = ""

  @Option(help: "Version string.")
  var version = ""

  @Option(help: "Metadata entry key=value (repeatable).")
  var metadata: [String] = []

  @Option(help: "Lease time to live in seconds.")
  var ttl = 10

  var instance: ServiceInstance {
    var entries: [String: String] = [:]
    for entry in self.metadata {
      if let equals = entry.firstIndex(of: "=") {
        entries[String(entry[..<equals])] = String(entry[entry.index(after: equals)...])
      }
    }
    return ServiceInstance(
      name: self.service,
      address: self.address,
      weight: self.weight,
      group: self.group,
      metadata: entries,
      version: self.version
    )
  }

  func validate() throws {
    guard self.metadata.allSatisfy({ $0.contains("=") }) else {
      throw ValidationError("--metadata takes key=value")
    }
    guard self.ttl >= 1 else { throw ValidationError("--ttl must be at least 1 second") }
    do {
      try self.instance.validate()
    } catch {
      throw ValidationError(error.message)
    }
  }

  func run() async throws {
    do {
      try await withEtcdServiceRegistry(
        config: self.connection.registryConfiguration(ttl: self.ttl),
        logger: self.connection.logger
      ) { registry in
        try await registry.register(self.instance)
        print("REGISTERED \(try self.connection.keyspace.key(for: self.instance))")
        fflush(nil)
        await Signals.wait()
      }
      print("DEREGISTERED \(self.service) \(self.address)")
    } catch {
      throw self.connection.failure(error)
    }
  }
}

struct Deregister: AsyncParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Remove an instance's registration.")

  @OptionGroup var connection: ConnectionOptions

  @Argument(help: "The service name.")
  var service: String

  @Argument(help: "The instance address, host:port.")
  var address: String

  func run() async throws {
    let key = try self.connection.keyspace.key(service: self.service, address: self.address)
    let deleted = try await self.connection.withClient { try await $0.delete(.key(key)).deleted }
    guard deleted > 0 else {
      throw Failure.notFound("\(self.service) has no instance at \(self.address)")
    }
    print("DEREGISTERED \(self.service) \(self.address)")
  }
}

struct Status: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Show etcd's members, leader, revision and database size."
  )

  @OptionGroup var connection: ConnectionOptions

  func run() async throws {
    let lines = try await self.connection.withClient { client -> [[String]] in
      let members = try await client.members()
      var rows: [[String]] = []
      for endpoint in self.connection.etcdEndpoints {
        do {
          let status = try await client.status(of: endpoint)
          let member = members.first { $0.id == status.header.memberID }
          rows.append([
            endpoint, member?.name ?? "?", status.version,
            status.leader == status.header.memberID ? "yes" : "no",
            "\(status.header.revision)", "\(status.dbSize)", status.errors.joined(separator: ";"),
          ])
        } catch {
          rows.append([
            endpoint, "?", "-", "-", "-", "-", "unreachable: \(Failure.from(error).message)",
          ])
        }
      }
      return rows
    }
    printTable(["ENDPOINT", "MEMBER", "VERSION", "LEADER", "REVISION", "DB SIZE", "ERRORS"], lines)
    let tls = self.connection.usesMutualTLS ? "on (mutual)" : self.connection.usesTLS ? "on" : "off"
    let auth = self.connection.userName.map { "on (user \($0))" } ?? "off"
    print("tls: \(tls)  auth: \(auth)")
    if lines.allSatisfy({ $0[2] == "-" }) {
      throw Failure(code: 3, message: "no endpoint answered")
    }
  }
}

enum OutputFormat: String, ExpressibleByArgument {
  case table, json
}

func printJSON(_ value: some Encodable) throws {
  let encoder = JSONEncoder()
  encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
  print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

func printTable(_ header: [String], _ rows: [[String]]) {
  let all = [header] + rows
  let widths = header.indices.map { column in
    all.map { $0.indices.contains(column) ? $0[column].count : 0 }.max() ?? 0
  }
  for row in all {
    let cells = row.enumerated().map { index, cell in
      index == row.count - 1
        ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
    }
    print(cells.joined(separator: "  "))
  }
}
#endif

import ArgumentParser
import Foundation
import RegistryCore
import Synchronization

/// The README's first command: the registry's story on the embedded in-memory registry.
@main
struct RegistryDemo: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "registry-demo",
    abstract:
      "Registers, watches, expires and deregisters service instances on the embedded registry."
  )

  @Option(help: "The service name to register.")
  var service = "user-server"

  @Option(help: "Time to live of each registration, in milliseconds.")
  var ttl = 600

  func run() async throws {
    let registry = InMemoryRegistry()
    let start = ContinuousClock.now
    func stamp() -> String {
      let elapsed = ContinuousClock.now - start
      let milliseconds =
        elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000
      return String(format: "%6d ms", milliseconds)
    }

    print("== watching '\(self.service)' on the embedded registry")
    let seen = EventCounter()
    // Each step waits until the watcher has printed what it caused, so the story reads in order.
    func waitForEvents(_ count: Int) async throws {
      try await self.waitFor(within: .seconds(5)) { seen.count.withLock { $0 >= count } }
    }
    let watcher = Task {
      for try await event in registry.watch(self.service) {
        defer { seen.count.withLock { $0 += 1 } }
        switch event {
        case .snapshot(let snapshot):
          print(
            "\(stamp())  snapshot  rev \(snapshot.revision): \(snapshot.instances.count) instances"
          )
        case .added(let instance, let revision):
          print("\(stamp())  added     rev \(revision): \(instance)")
        case .updated(let instance, let revision):
          print("\(stamp())  updated   rev \(revision): \(instance)")
        case .removed(let instance, let revision):
          print("\(stamp())  removed   rev \(revision): \(instance)")
        }
      }
    }

    let instances = [
      ServiceInstance(name: self.service, address: "127.0.0.1:8081", weight: 1, group: "A"),
      ServiceInstance(name: self.service, address: "127.0.0.1:8082", weight: 2, group: "A"),
      ServiceInstance(
        name: self.service,
        address: "127.0.0.1:8083",
        weight: 3,
        group: "B",
        version: "1.1.0"
      ),
    ]
    print("== three servers register with weights 1, 2, 3 and a \(self.ttl) ms time to live")
    for instance in instances { try registry.register(instance, ttl: .milliseconds(self.ttl)) }
    // Each server keeps its registration alive, as a lease keep-alive would.
    let keepers = instances.map { instance in
      Task {
        while !Task.isCancelled {
          try registry.keepAlive(service: instance.name, address: instance.address)
          try await Task.sleep(for: .milliseconds(self.ttl / 3))
        }
      }
    }
    try await waitForEvents(4)
    try await printTable(registry.instances(of: self.service))

    print("== 127.0.0.1:8083 re-registers with weight 5")
    try registry.register(
      ServiceInstance(
        name: self.service,
        address: "127.0.0.1:8083",
        weight: 5,
        group: "B",
        version: "1.1.0"
      ),
      ttl: .milliseconds(self.ttl)
    )
    try await waitForEvents(5)

    print("== 127.0.0.1:8082 shuts down gracefully: it deregisters")
    keepers[1].cancel()
    try await registry.deregister(service: self.service, address: "127.0.0.1:8082")
    try await waitForEvents(6)

    print("== 127.0.0.1:8081 crashes: its keep-alive stops and the registration expires")
    let crashed = ContinuousClock.now
    keepers[0].cancel()
    try await waitForEvents(7)
    let gone = (ContinuousClock.now - crashed).components
    print(
      "   gone \(gone.seconds * 1000 + gone.attoseconds / 1_000_000_000_000_000) ms after its keep-alive stopped (ttl \(self.ttl) ms, renewed every \(self.ttl / 3) ms)"
    )

    print("== invalid input is refused with a typed error")
    do {
      try await registry.register(ServiceInstance(name: self.service, address: "0.0.0.0:8080"))
    } catch let error as RegistryError {
      print("   \(error.code): \(error.message)")
    }

    try await printTable(registry.instances(of: self.service))
    print("== shutting down")
    keepers[2].cancel()
    await registry.shutdown()
    _ = try? await watcher.value
    print("== done")
  }

  private func waitFor(
    within timeout: Duration = .seconds(2),
    _ condition: () async throws -> Bool
  ) async throws {
    let deadline = ContinuousClock.now + timeout
    while try await !condition() {
      guard ContinuousClock.now < deadline else {
        throw ValidationError(
          "the demo's registry did not reach the expected state within \(timeout)"
        )
      }
      try await Task.sleep(for: .milliseconds(10))
    }
  }

  private func printTable(_ instances: [ServiceInstance]) {
    print("   ADDRESS          WEIGHT  GROUP  VERSION")
    for instance in instances {
      let address = instance.address.padding(toLength: 16, withPad: " ", startingAt: 0)
      let weight = String(instance.weight).padding(toLength: 6, withPad: " ", startingAt: 0)
      let group = instance.group.padding(toLength: 5, withPad: " ", startingAt: 0)
      print("   \(address) \(weight)  \(group)  \(instance.version)")
    }
  }
}

/// How many events the demo's watcher has printed.
final class EventCounter: Sendable {
  let count = Mutex(0)
}

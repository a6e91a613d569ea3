import Etcd
import EtcdHarness
import EtcdRegistry
import Foundation
import RegistryCore
import RegistryPrimitives
import RegistryTesting
import Synchronization
import Testing

@Suite("listing in pages", .timeLimit(.minutes(2)))
struct PagedListingTests {
  @Test(
    "getAll reads pages at one revision: each listing equals the range at its revision while writes go on"
  )
  func consistentWhileWriting() async throws {
    let cluster = try await SharedEtcd.get()
    try await withEtcdClient(config: .testing(cluster), logger: testLogger("etcd")) { etcd in
      let prefix = uniquePrefix("pages")
      for index in 0 ..< 120 {
        try await etcd.put("\(prefix)\(String(format: "%04d", index))", value: "v\(index)")
      }
      let writing = Locked(true)
      try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask {
          // Puts and deletes spread over the whole range, so most pages are overtaken.
          var round = 0
          while writing.withLock({ $0 }) {
            let index = (round * 37) % 160
            let key = "\(prefix)\(String(format: "%04d", index))"
            if round % 3 == 0 {
              try await etcd.delete(.key(key))
            } else {
              try await etcd.put(key, value: "w\(round)")
            }
            round += 1
          }
        }
        defer { writing.withLock { $0 = false } }
        var revisions = Set<Int64>()
        for _ in 0 ..< 15 {
          let paged = try await etcd.getAll(.prefix(prefix), pageSize: 7)
          var options = EtcdGetOptions()
          options.revision = paged.header.revision
          let whole = try await etcd.get(.prefix(prefix), options: options)
          // Breaks if a later page read the latest revision instead of the first page's.
          #expect(paged.kvs == whole.kvs, "the listing at revision \(paged.header.revision)")
          #expect(!paged.more)
          #expect(paged.count == Int64(paged.kvs.count))
          revisions.insert(paged.header.revision)
        }
        #expect(revisions.count > 1, "writes happened between the listings")
        writing.withLock { $0 = false }
        try await group.waitForAll()
      }
    }
  }

  @Test("a range over the 4 MiB response cap: get says to page, getAll pages with smaller pages")
  func overTheCap() async throws {
    let cluster = try await SharedEtcd.get()
    try await withEtcdClient(config: .testing(cluster), logger: testLogger("etcd")) { etcd in
      let prefix = uniquePrefix("big")
      let value = String(repeating: "x", count: 200_000)
      for index in 0 ..< 24 {
        try await etcd.put("\(prefix)\(String(format: "%02d", index))", value: value)
      }
      await #expect {
        _ = try await etcd.get(.prefix(prefix))
      } throws: { error in
        (error as? EtcdError)?.code == .responseTooLarge
          && (error as? EtcdError)?.message.contains("pages") == true
      }
      // 24 x 200 kB in pages of 1,000 keys is still 4.8 MB: the page size is halved until a
      // page fits.
      let all = try await etcd.getAll(.prefix(prefix), pageSize: 1000)
      #expect(all.kvs.count == 24)
      #expect(all.kvs.allSatisfy { $0.value.count == 200_000 })
    }
  }

  @Test("a registry with small pages lists and watches a service spanning many pages")
  func registryPages() async throws {
    let cluster = try await SharedEtcd.get()
    let prefix = uniquePrefix("regpages")
    let writer = try RunningRegistry(cluster, prefix: prefix)
    let reader = try RunningRegistry(cluster, prefix: prefix) { $0.listPageSize = 4 }
    let addresses = (1 ... 30).map { "127.0.0.1:\(1000 + $0)" }
    for address in addresses {
      try await writer.registry.register(ServiceInstance(name: "svc", address: address))
    }
    let listed = try await reader.registry.instances(of: "svc")
    #expect(listed.map(\.address) == addresses.sorted())
    let watch = WatchRecorder(reader.registry.watch("svc"))
    defer { watch.cancel() }
    try await watch.waitForAddresses(addresses.sorted())
    try await writer.registry.deregister(service: "svc", address: addresses[0])
    try await watch.waitForAddresses(Array(addresses.dropFirst()).sorted())
    await writer.stop()
    await reader.stop()
  }
}

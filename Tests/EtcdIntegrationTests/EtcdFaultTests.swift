import Etcd
import EtcdHarness
import Foundation
import RegistryPrimitives
import RegistryTesting
import Synchronization
import Testing

@Suite("EtcdClient faults", .timeLimit(.minutes(4)))
struct EtcdFaultTests {
  @Test("a restarted etcd: requests resume and the watch continues without loss")
  func restart() async throws {
    try await withEtcdClient { etcd, cluster in
      let p = uniquePrefix()
      let recorder = BatchRecorder(etcd.watch(.prefix(p)))
      try await waitUntil("the watch is live", within: .seconds(5)) {
        try await etcd.put(p + "0", value: "0")
        return !recorder.events.isEmpty
      }
      for i in 1 ... 10 { try await etcd.put(p + "\(i)", value: "\(i)") }
      try await cluster.members[0].restart()
      // Writes during the outage retry until etcd is back.
      for i in 11 ... 20 {
        try await waitUntil("put \(i) succeeds after the restart", within: .seconds(20)) {
          (try? await etcd.put(p + "\(i)", value: "\(i)")) != nil
        }
      }
      try await waitUntil("the watch saw every put", within: .seconds(20)) {
        Set(recorder.events.map(\.kv.keyString)).isSuperset(of: (1 ... 20).map { p + "\($0)" })
      }
      let revisions = recorder.events.map(\.kv.modRevision)
      #expect(revisions == revisions.sorted(), "in order")
      #expect(Set(revisions).count == revisions.count, "no event twice")
      #expect(recorder.error == nil)
      #expect(etcd.watchStreamsOpened >= 2, "the stream was reopened")
    }
  }

  @Test(
    "3 members: kill -9 the leader during puts; puts resume, the watch sees each event once in order, the lease lives"
  )
  func leaderKill() async throws {
    try await withEtcdClient(cluster: .defaults { $0.members = 3 }) { etcd, cluster in
      let p = uniquePrefix()
      let lease = try await etcd.grantLease(ttl: .seconds(5))
      try await etcd.put(p + "leased", value: "x", lease: lease.id)
      let lost = Locked(false)
      let keeper = Task {
        for await event in etcd.keepAlive(lease) where event == .lost {
          lost.withLock { $0 = true }
        }
      }
      defer { keeper.cancel() }
      let recorder = BatchRecorder(etcd.watch(.prefix(p + "n/")))
      try await waitUntil("the watch is live", within: .seconds(5)) {
        try await etcd.put(p + "n/0000", value: "0")
        return !recorder.events.isEmpty
      }
      let leader = try await cluster.leader()
      let writer = Task {
        var written = 0
        for i in 1 ... 300 {
          let key = p + "n/" + String(format: "%04d", i)
          try await waitUntil("put \(i) succeeds", within: .seconds(20)) {
            (try? await etcd.put(key, value: "\(i)")) != nil
          }
          written += 1
        }
        return written
      }
      try await waitUntil("some puts happened", within: .seconds(10)) { recorder.events.count > 50 }
      await leader.kill()
      #expect(try await writer.value == 300)
      let final = try await etcd.get(.prefix(p + "n/"))
      try await waitUntil("the watch caught up with the final state", within: .seconds(20)) {
        recorder.events.count >= final.kvs.count
      }
      // A put whose leader died after committing it can be retried and so applied twice: that
      // is two real events at two revisions. What the watch must never do is repeat or reorder
      // an event, or miss one: revisions strictly increase and every final value was seen.
      try await waitUntil("the watch saw the final revision of every key", within: .seconds(20)) {
        let seen = Set(recorder.events.map { "\($0.kv.keyString)@\($0.kv.modRevision)" })
        return final.kvs.allSatisfy { seen.contains("\($0.keyString)@\($0.modRevision)") }
      }
      let revisions = recorder.events.map(\.kv.modRevision)
      #expect(
        zip(revisions, revisions.dropFirst()).allSatisfy { $0 < $1 },
        "no event repeated or out of order"
      )
      #expect(Set(recorder.events.map(\.kv.keyString)) == Set(final.kvs.map(\.keyString)))
      #expect(recorder.error == nil)
      #expect(
        try await etcd.get(p + "leased") != nil,
        "the lease was kept alive through the election"
      )
      #expect(!lost.withLock { $0 })
    }
  }
}

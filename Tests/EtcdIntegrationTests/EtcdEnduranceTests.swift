import Etcd
import EtcdHarness
import Foundation
import RegistryTesting
import Testing

@Suite("EtcdClient endurance against etcd's grpc-go server", .timeLimit(.minutes(10)))
struct EtcdEnduranceTests {
  /// grpc-go sends a BDP ping with nearly every response; the stock Swift transport gives up
  /// after about 200 of them. 100,000 calls on one connection prove ours does not.
  @Test(
    "100,000 sequential and 100,000 concurrent puts with a watch open: no failure, no watch restart"
  )
  func endurance() async throws {
    let count = Int(ProcessInfo.processInfo.environment["ENDURANCE_PUTS"] ?? "") ?? 100_000
    try await withEtcdClient { etcd, _ in
      let p = uniquePrefix("endurance")
      let recorder = BatchRecorder(etcd.watch(.prefix(p)))
      try await waitUntil("the watch is live", within: .seconds(5)) {
        try await etcd.put(p + "start", value: "x")
        return !recorder.events.isEmpty
      }
      let value = Array("v".utf8)
      for i in 0 ..< count {
        try await etcd.put(p + "s", value: value)
        if i % 20_000 == 0 { #expect(etcd.watchStreamsOpened == 1) }
      }
      try await withThrowingTaskGroup(of: Void.self) { group in
        for worker in 0 ..< 16 {
          group.addTask {
            for i in stride(from: worker, to: count, by: 16) {
              try await etcd.put(p + "c\(i % 64)", value: value)
            }
          }
        }
        try await group.waitForAll()
      }
      // The liveness probe may have written "start" more than once; count the rest exactly.
      let probes = recorder.events.filter { $0.kv.keyString == p + "start" }.count
      try await recorder.waitForEvents(probes + 2 * count, within: .seconds(60))
      #expect(recorder.events.count == probes + 2 * count)
      #expect(recorder.events.filter { $0.kv.keyString == p + "s" }.count == count)
      #expect(etcd.watchStreamsOpened == 1, "the watch stream never restarted")
      #expect(recorder.error == nil)
    }
  }
}

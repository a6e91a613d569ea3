import Etcd
import EtcdHarness
import Foundation
import RegistryTesting
import Testing

@Suite("EtcdClient endurance against etcd's grpc-go server", .timeLimit(.minutes(10)))
struct EtcdEnduranceTests {
  /// grpc-go sends a BDP ping with nearly every response; the stock Swift transport gives up
  /// after about 200 of them. Thousands of calls on one connection prove ours does not: the
  /// test fails if one put fails, the watch stream restarts, or one event is lost or repeated.
  ///
  /// `ENDURANCE_PUTS` puts sequentially and as many again from 16 callers (100,000 each when
  /// unset, about 10 minutes in a debug build on 2 cores); `scripts/test` runs 25,000 of each,
  /// still over a hundred times the stock transport's limit.
  @Test("Many sequential and concurrent puts with a watch open: no failure, no watch restart")
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

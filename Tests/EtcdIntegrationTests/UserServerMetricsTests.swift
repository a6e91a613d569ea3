import EtcdHarness
import Foundation
import RegistryTesting
import Testing

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

@Suite("user-server metrics endpoint", .timeLimit(.minutes(2)), .serialized)
struct UserServerMetricsTests {
  @Test("--metrics-port 0 serves the registry's metrics in the Prometheus text format")
  func scrape() async throws {
    let cluster = try await SharedEtcd.get()
    let server = try await UserServerProcess(
      etcd: cluster,
      prefix: uniquePrefix("metrics"),
      ttl: 2,
      extraArguments: ["--metrics-port", "0"]
    )
    let address = try #require(server.metricsAddress, "user-server printed no METRICS line")
    let url = try #require(URL(string: "http://\(address)/metrics"))
    var body = ""
    // Renewals come every third of the 2 s TTL; wait until one has been timed.
    try await waitUntil("a scrape shows a timed lease renewal", within: .seconds(10)) {
      guard let (data, response) = try? await URLSession.shared.data(from: url) else {
        return false
      }
      #expect((response as? HTTPURLResponse)?.statusCode == 200)
      body = String(decoding: data, as: UTF8.self)
      return body.contains("etcd_lease_keepalive_duration_seconds_count ")
        && !body.contains("etcd_lease_keepalive_duration_seconds_count 0")
    }
    let lines = Set(body.split(separator: "\n").map(String.init))
    #expect(lines.contains("# TYPE registry_registrations_total counter"), "\(body)")
    #expect(lines.contains("registry_registrations_total 1"), "\(body)")
    #expect(lines.contains("registry_lease_grants_total 1"), "\(body)")
    #expect(lines.contains("registry_lease_losses_total 0"), "\(body)")
    #expect(lines.contains("# TYPE etcd_lease_keepalive_duration_seconds histogram"), "\(body)")

    let other = try #require(URL(string: "http://\(address)/other"))
    let (_, response) = try await URLSession.shared.data(from: other)
    #expect((response as? HTTPURLResponse)?.statusCode == 404)

    server.process.signal(SIGTERM)
    try await waitUntil("user-server exits", within: .seconds(10)) { !server.process.isRunning }
    #expect(server.process.terminationStatus == 0)
  }
}

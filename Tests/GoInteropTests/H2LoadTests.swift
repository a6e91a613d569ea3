import EtcdHarness
import Foundation
import Testing

/// h2load, nghttp2's HTTP/2 load generator (Debian's `nghttp2-client`), a client no one here
/// wrote, making unary gRPC calls to each server: every call must succeed and carry its whole
/// response. It prints each server's calls per second beside the others' (not asserted).
@Suite("h2load against each server", .serialized, .timeLimit(.minutes(5)))
struct H2LoadTests {
  static let calls = 20_000

  @Test(
    "20,000 unary calls from h2load, 64 in flight on 4 connections, all answered in full",
    arguments: ServerKind.allCases
  )
  func unaryCalls(server: ServerKind) async throws {
    guard Command.locate("h2load") != nil else {
      Issue.record(
        "h2load is not on PATH: run scripts/install-test-deps, or apt-get install nghttp2-client"
      )
      return
    }
    // GetById(id: 7): a gRPC frame around the protobuf `08 07`.
    let request: [UInt8] = [0, 0, 0, 0, 2, 0x08, 0x07]
    let file = FileManager.default.temporaryDirectory
      .appendingPathComponent("h2load-getbyid-\(UUID().uuidString.prefix(8))").path
    try Data(request).write(to: URL(fileURLWithPath: file))
    defer { try? FileManager.default.removeItem(atPath: file) }

    try await withServer(server) { address in
      let output = try await Command.run(
        "h2load",
        [
          "-n", "\(Self.calls)", "-c", "4", "-m", "16", "-d", file,
          "-H", "content-type: application/grpc", "-H", "te: trailers",
          "http://\(address)/user.UserMesService/GetById",
        ]
      )
      let report = try #require(
        H2LoadReport(output.stdout),
        "h2load's report could not be read (exit \(output.status)): \(output.stdout) \(output.stderr)"
      )
      #expect(report.succeeded == Self.calls, "\(output.stdout)")
      #expect(report.failed == 0 && report.errored == 0 && report.timedOut == 0)
      #expect(report.status2xx == Self.calls)
      // GetByIDResp{user: {id: 7, name: address}}: 5 bytes of gRPC framing, 6 of protobuf around
      // the name. Every response carried exactly one whole message.
      let perCall = 5 + 6 + address.utf8.count
      #expect(report.dataBytes == Self.calls * perCall, "\(output.stdout)")
      print("h2load -> \(server) server: \(report.callsPerSecond)")
    }
  }
}

/// The numbers of an h2load run's summary.
struct H2LoadReport {
  var succeeded: Int
  var failed: Int
  var errored: Int
  var timedOut: Int
  var status2xx: Int
  var dataBytes: Int
  var callsPerSecond: String

  /// Reads lines such as `requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed,
  /// 0 errored, 0 timeout`, `status codes: 100 2xx, ...`, `traffic: ... (1100) data` and
  /// `finished in 1.2s, 83.3 req/s, ...`.
  init?(_ text: String) {
    func number(before label: String, in line: Substring) -> Int? {
      let words = line.split(whereSeparator: { $0 == " " || $0 == "," })
      guard let index = words.firstIndex(where: { $0 == label }), index > 0 else { return nil }
      return Int(words[index - 1].trimmingCharacters(in: CharacterSet(charactersIn: "()")))
    }
    let lines = text.split(separator: "\n")
    guard let requests = lines.first(where: { $0.hasPrefix("requests:") }),
      let statuses = lines.first(where: { $0.hasPrefix("status codes:") }),
      let traffic = lines.first(where: { $0.hasPrefix("traffic:") }),
      let finished = lines.first(where: { $0.hasPrefix("finished in") }),
      let succeeded = number(before: "succeeded", in: requests),
      let failed = number(before: "failed", in: requests),
      let errored = number(before: "errored", in: requests),
      let timedOut = number(before: "timeout", in: requests),
      let status2xx = number(before: "2xx", in: statuses),
      let dataBytes = number(before: "data", in: traffic)
    else { return nil }
    self.succeeded = succeeded
    self.failed = failed
    self.errored = errored
    self.timedOut = timedOut
    self.status2xx = status2xx
    self.dataBytes = dataBytes
    let rate = finished.split(separator: ",").dropFirst().first ?? ""
    self.callsPerSecond = rate.trimmingCharacters(in: .whitespaces)
  }
}

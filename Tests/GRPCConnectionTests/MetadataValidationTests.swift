import GRPCCore
import NIOHPACK
import Testing

@testable import GRPCConnection

/// gRPC's rules for custom metadata (PROTOCOL-HTTP2.md), checked before an entry reaches HPACK.
@Suite("Metadata gRPC can carry")
struct MetadataValidationTests {
  @Test("keys: lowercase letters, digits, '-', '_' and '.'; text values: printable ASCII")
  func rules() {
    #expect(GRPCWire.metadataProblem(name: "x-request-id_2.a", value: "any printable ~!") == nil)
    #expect(GRPCWire.metadataProblem(name: "trace-bin", value: .binary([0, 10, 13, 255])) == nil)
    #expect(GRPCWire.metadataProblem(name: "empty-value", value: "") == nil)
    for bad in ["", "bad key", "ünicode", "semi;colon", "Upper"] {
      #expect(GRPCWire.metadataProblem(name: bad, value: "v") != nil, "\(bad)")
    }
    for bad in ["line\nbreak", "tab\there", "café", "\u{7F}"] {
      let problem = GRPCWire.metadataProblem(name: "k", value: .string(bad))
      #expect(
        problem?.contains("-bin") == true,
        "\(bad.debugDescription): \(String(describing: problem))"
      )
    }
  }

  @Test("request headers with an entry gRPC cannot carry are refused with internalError")
  func requestHeaders() {
    let error = #expect(throws: RPCError.self) {
      try GRPCWire.makeRequestHeaders(
        path: "/a/b",
        scheme: "http",
        authority: "localhost",
        timeout: nil,
        metadata: ["ok": "1", "no good": "2"]
      )
    }
    #expect(error?.code == .internalError)
    #expect(error?.message.contains("'no good'") == true)
  }

  @Test("a path or authority HTTP/2 cannot carry is refused with internalError")
  func requestPseudoHeaders() {
    for (path, authority, named) in [
      ("/a/b c", "localhost", "':path'"), ("/a/b", "local\r\nhost", "':authority'"),
    ] {
      let error = #expect(throws: RPCError.self) {
        try GRPCWire.makeRequestHeaders(
          path: path,
          scheme: "http",
          authority: authority,
          timeout: nil,
          metadata: [:]
        )
      }
      #expect(error?.code == .internalError)
      #expect(error?.message.contains(named) == true, "\(String(describing: error))")
    }
  }

  @Test("trailing metadata gRPC cannot carry turns the status into internalError, without it")
  func trailers() {
    let trailers = GRPCWire.makeTrailers(
      status: Status(code: .ok, message: ""),
      metadata: ["fine": "1", "bad": "caf\u{E9}"],
      trailersOnly: false
    )
    #expect(trailers.first(name: "grpc-status") == "\(Status.Code.internalError.rawValue)")
    #expect(trailers.first(name: "grpc-message")?.contains("'bad'") == true)
    #expect(trailers.first(name: "fine") == nil, "none of the metadata goes out")

    let valid = GRPCWire.makeTrailers(
      status: Status(code: .notFound, message: "gone"),
      metadata: ["fine": "1"],
      trailersOnly: true
    )
    #expect(valid.first(name: "grpc-status") == "5")
    #expect(valid.first(name: "fine") == "1")
    #expect(valid.first(name: ":status") == "200")
  }
}

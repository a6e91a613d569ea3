import GRPCConnection
import GRPCCore
import Testing

@Suite("HTTP2Connection against a grpc-swift-2 server", .serialized, .timeLimit(.minutes(5)))
struct HTTP2ConnectionTests {
  @Test("unary echo with string and binary metadata")
  func unaryEcho() async throws {
    try await withEchoServerAndClient { client, _, _ in
      let metadata: Metadata = [
        "echo-text": "hello",
        "echo-bin": .binary([0, 1, 2, 3, 254, 255]),
        "other": "not echoed",
      ]
      let response = try await client.echo([1, 2, 3], metadata: metadata)
      #expect(try response.message == [1, 2, 3])
      #expect(Array(response.metadata[stringValues: "echo-text"]) == ["hello"])
      #expect(Array(response.metadata[binaryValues: "echo-bin"]) == [[0, 1, 2, 3, 254, 255]])
      #expect(Array(response.metadata[stringValues: "other"]).isEmpty)
      #expect(Array(response.trailingMetadata[stringValues: "echo-text"]) == ["hello"])
      #expect(
        Array(response.trailingMetadata[binaryValues: "echo-bin"]) == [[0, 1, 2, 3, 254, 255]]
      )

      let empty = try await client.echo([])
      #expect(try empty.message == [])
    }
  }

  // Before the check in GRPCWire a key that was not ASCII trapped in HPACK (the process
  // crashed), a key with a space left the call waiting for its deadline, and a value with CR LF
  // broke the connection for every call on it.
  @Test(
    "request metadata gRPC cannot carry fails the call at once, naming it; the connection goes on"
  )
  func invalidRequestMetadata() async throws {
    try await withEchoServerAndClient { client, _, _ in
      var options = CallOptions.defaults
      options.timeout = .seconds(30)
      let cases: [(key: String, value: String, names: String)] = [
        ("bad key", "v", "key 'bad key'"),
        ("ünicode", "v", "key 'ünicode'"),
        ("echo-text", "line\r\nbreak", "value of 'echo-text'"),
        ("echo-text", "café", "value of 'echo-text'"),
      ]
      for (key, value, names) in cases {
        let error = await #expect(throws: RPCError.self) {
          try await client.echo([1], metadata: [key: .string(value)], options: options).message
        }
        #expect(error?.code == .internalError, "\(key): \(String(describing: error))")
        #expect(error?.message.contains(names) == true, "\(String(describing: error))")
      }
      // Upper case is lowered, as grpc does; binary values may hold any byte.
      let fine = try await client.echo(
        [2],
        metadata: ["Echo-Text": "ok", "echo-bin": .binary([0, 13, 10, 255])],
        options: options
      )
      #expect(try fine.message == [2])
      #expect(Array(fine.metadata[stringValues: "echo-text"]) == ["ok"])
      #expect(Array(fine.metadata[binaryValues: "echo-bin"]) == [[0, 13, 10, 255]])
    }
  }

  @Test("client streaming")
  func clientStreaming() async throws {
    try await withEchoServerAndClient { client, _, _ in
      let collected = try await client.clientStreaming(
        request: StreamingClientRequest(of: [UInt8].self) { writer in
          for i in 0 ..< 100 {
            try await writer.write([UInt8(i)])
          }
        },
        descriptor: EchoMethod.collect,
        serializer: BytesSerializer(),
        deserializer: BytesDeserializer(),
        options: .defaults
      ) { try $0.message }
      #expect(collected == (0 ..< 100).map { UInt8($0) })
    }
  }

  @Test("server streaming")
  func serverStreaming() async throws {
    try await withEchoServerAndClient { client, _, _ in
      let messages = try await client.serverStreaming(
        request: ClientRequest(message: [1, 2, 3, 200]),
        descriptor: EchoMethod.expand,
        serializer: BytesSerializer(),
        deserializer: BytesDeserializer(),
        options: .defaults
      ) { response in
        var messages: [[UInt8]] = []
        for try await message in response.messages {
          messages.append(message)
        }
        return messages
      }
      #expect(messages == [[1], [2, 2], [3, 3, 3], [UInt8](repeating: 200, count: 200)])
    }
  }

  @Test("bidirectional streaming, one message at a time")
  func bidiStreaming() async throws {
    try await withEchoServerAndClient { client, _, _ in
      // The request side writes message i only after the echo of message i-1 arrived.
      let (echoes, echoContinuation) = AsyncStream.makeStream(of: [UInt8].self)
      let (received, trailing) = try await client.bidirectionalStreaming(
        request: StreamingClientRequest(of: [UInt8].self) { writer in
          var iterator = echoes.makeAsyncIterator()
          for i in 0 ..< 50 {
            try await writer.write([UInt8(i), 42])
            guard await iterator.next() != nil else { return }
          }
        },
        descriptor: EchoMethod.bidi,
        serializer: BytesSerializer(),
        deserializer: BytesDeserializer(),
        options: .defaults
      ) { response in
        var received: [[UInt8]] = []
        var trailing: Metadata = [:]
        for try await part in try response.accepted.get().bodyParts {
          switch part {
          case .message(let message):
            received.append(message)
            echoContinuation.yield(message)
          case .trailingMetadata(let metadata):
            trailing = metadata
          }
        }
        echoContinuation.finish()
        return (received, trailing)
      }
      #expect(received == (0 ..< 50).map { [UInt8($0), 42] })
      #expect(Array(trailing[stringValues: "bidi-done"]) == ["yes"])
    }
  }

  @Test("trailers-only error status with metadata")
  func errorStatus() async throws {
    try await withEchoServerAndClient { client, _, _ in
      let error = try await #require(throws: RPCError.self) {
        _ = try await client.echo([UInt8(Status.Code.notFound.rawValue)], method: EchoMethod.fail)
          .message
      }
      #expect(error.code == .notFound)
      #expect(error.message == "requested failure")
      #expect(Array(error.metadata[stringValues: "failure-detail"]) == ["present"])
      #expect(Array(error.metadata[binaryValues: "failure-bin"]) == [[0, 1, 2, 255]])
    }
  }

  @Test("unknown method is unimplemented")
  func unknownMethod() async throws {
    try await withEchoServerAndClient { client, _, _ in
      let error = try await #require(throws: RPCError.self) {
        _ = try await client.echo([1], method: EchoMethod.unknown).message
      }
      #expect(error.code == .unimplemented)
      // The connection stays usable.
      #expect(try await client.echo([9]).message == [9])
    }
  }

  @Test("deadline exceeded resets the stream")
  func deadlineExceeded() async throws {
    try await withEchoServerAndClient { client, _, server in
      var options = CallOptions.defaults
      options.timeout = .milliseconds(200)
      let error = try await #require(throws: RPCError.self) {
        _ = try await client.echo([1], method: EchoMethod.hang, options: options).message
      }
      #expect(error.code == .deadlineExceeded)
      // The reset reaches the server whether or not its handler had started.
      try await poll("the server saw the RPC cancelled") {
        server.probe.cancelledRPCs == server.probe.startedHangingRPCs
      }
      #expect(try await client.echo([9]).message == [9])
    }
  }

  @Test("a deadline from withCallDeadline (no CallOptions.timeout) is enforced by the connection")
  func callDeadline() async throws {
    try await withEchoServerAndClient { client, _, server in
      let start = ContinuousClock.now
      let error = try await #require(throws: RPCError.self) {
        try await HTTP2Connection.withCallDeadline(.now + .milliseconds(200)) {
          _ = try await client.echo([1], method: EchoMethod.hang).message
        }
      }
      #expect(error.code == .deadlineExceeded)
      #expect(ContinuousClock.now - start < .seconds(5))
      try await poll("the server saw the RPC cancelled") {
        server.probe.cancelledRPCs == server.probe.startedHangingRPCs
      }
      // A deadline that has passed fails the call before it opens a stream.
      let passed = try await #require(throws: RPCError.self) {
        try await HTTP2Connection.withCallDeadline(.now - .milliseconds(1)) {
          _ = try await client.echo([2]).message
        }
      }
      #expect(passed.code == .deadlineExceeded)
      // Calls inside a generous deadline, and outside any, go through.
      let echoed = try await HTTP2Connection.withCallDeadline(.now + .seconds(30)) {
        try await client.echo([3]).message
      }
      #expect(echoed == [3])
      #expect(try await client.echo([9]).message == [9])
    }
  }

  @Test("transport deadline without the client executor")
  func transportDeadline() async throws {
    try await withEchoServerAndClient { client, connection, server in
      // Connected first: the 200 ms deadline is for the stream, not for a connection that can
      // take longer than that on a loaded machine (AddressSanitizer, the parallel suites).
      _ = try await client.echo([0]).message
      var options = CallOptions.defaults
      options.timeout = .milliseconds(200)
      let result = try await connection.withStream(descriptor: EchoMethod.hang, options: options) {
        stream,
        _ in
        try await stream.outbound.write(.metadata([:]))
        try await stream.outbound.write(.message([1]))
        await stream.outbound.finish()
        var parts: [RPCResponsePart<[UInt8]>] = []
        do {
          for try await part in stream.inbound {
            parts.append(part)
          }
          return (parts, nil as RPCError?)
        } catch let error as RPCError {
          return (parts, error)
        }
      }
      #expect(result.1?.code == .deadlineExceeded)
      try await poll("the server saw the RPC cancelled") {
        server.probe.cancelledRPCs == server.probe.startedHangingRPCs
      }
    }
  }

  @Test("cancelling the calling task resets the stream")
  func taskCancellation() async throws {
    try await withEchoServerAndClient { client, _, server in
      let call = Task {
        try await client.echo([1], method: EchoMethod.hang).message
      }
      try await poll("the RPC is running on the server") { server.probe.startedHangingRPCs == 1 }
      call.cancel()
      let result = await call.result
      #expect(throws: (any Error).self) { try result.get() }
      try await poll("the server saw the RPC cancelled") { server.probe.cancelledRPCs == 1 }
      #expect(try await client.echo([9]).message == [9])
    }
  }

  @Test("a 4 MiB message each way")
  func largeMessage() async throws {
    try await withEchoServerAndClient { client, _, _ in
      let message = (0 ..< (4 * 1024 * 1024)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
      let response = try await client.echo(message)
      #expect(try response.message == message)
    }
  }

  @Test("a slow reader holds back a fast server (flow control), then gets everything")
  func slowReader() async throws {
    try await withEchoServerAndClient { client, _, _ in
      let count = 24
      let size = 512 * 1024
      let received = try await client.serverStreaming(
        request: ClientRequest(message: bigEndian(count) + bigEndian(size)),
        descriptor: EchoMethod.flood,
        serializer: BytesSerializer(),
        deserializer: BytesDeserializer(),
        options: .defaults
      ) { response in
        var received = 0
        for try await message in response.messages {
          #expect(message.count == size)
          #expect(message.first == UInt8(truncatingIfNeeded: received))
          if received == 0 {
            // Let the server fill the stream window and our buffer.
            try await Task.sleep(for: .milliseconds(300))
          }
          received += 1
        }
        return received
      }
      #expect(received == count)
    }
  }

  @Test("client streaming 12 MiB waits for flow control")
  func largeUpload() async throws {
    try await withEchoServerAndClient { client, _, _ in
      let chunk = [UInt8](repeating: 3, count: 1024 * 1024)
      var options = CallOptions.defaults
      options.maxResponseMessageBytes = 16 * 1024 * 1024
      let collected = try await client.clientStreaming(
        request: StreamingClientRequest(of: [UInt8].self) { writer in
          for _ in 0 ..< 12 {
            try await writer.write(chunk)
          }
        },
        descriptor: EchoMethod.collect,
        serializer: BytesSerializer(),
        deserializer: BytesDeserializer(),
        options: options
      ) { try $0.message }
      #expect(collected.count == 12 * 1024 * 1024)
    }
  }

  @Test("message size limits give resourceExhausted")
  func messageSizeLimits() async throws {
    try await withEchoServerAndClient { client, _, _ in
      // Response larger than the default 4 MiB limit.
      let size = 5 * 1024 * 1024
      let request: [UInt8] = [
        UInt8(size >> 24), UInt8((size >> 16) & 0xff), UInt8((size >> 8) & 0xff),
        UInt8(size & 0xff),
      ]
      let receiveError = try await #require(throws: RPCError.self) {
        _ = try await client.echo(request, method: EchoMethod.sized).message
      }
      #expect(receiveError.code == .resourceExhausted)

      // Request larger than the per-call limit.
      var options = CallOptions.defaults
      options.maxRequestMessageBytes = 1000
      let sendError = try await #require(throws: RPCError.self) {
        _ = try await client.echo([UInt8](repeating: 1, count: 2000), options: options).message
      }
      #expect(sendError.code == .resourceExhausted)

      // Raising the receive limit per call lets the large response through.
      var large = CallOptions.defaults
      large.maxResponseMessageBytes = 8 * 1024 * 1024
      #expect(
        try await client.echo(request, method: EchoMethod.sized, options: large).message.count
          == size
      )
    }
  }
}

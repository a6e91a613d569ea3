import Etcd
import GRPCConnection
import GRPCRegistry
import NIOCore
import NIOEmbedded
import RegistryCore

/// The fuzz targets: each takes one input and crashes (a failed precondition) when a property
/// breaks. `FUZZ_TARGET` picks one for libFuzzer; the replay mode runs them on files.
enum FuzzTargets {
  static let all: [String: @Sendable (UnsafeRawBufferPointer) -> Void] = [
    "instance-json": instanceJSON,
    "address": address,
    "range-response": rangeResponse,
    "deframer": deframer,
    "ping-scanner": pingScanner,
    "watch-model": watchModel,
    "header-block": headerBlock,
  ]

  /// The instance JSON codec: the canonical fast path reads what the general reader reads, and
  /// whatever decodes re-encodes to a value that decodes to the same instance.
  static func instanceJSON(_ input: UnsafeRawBufferPointer) {
    let bytes = Array(input)
    let fast = try? GoJSON.decode(bytes)
    let general = try? GoJSON.decodeGeneral(bytes)
    precondition(fast == general, "fast and general JSON readers disagree")
    if let fast {
      let again = try? GoJSON.decode(GoJSON.encode(fast))
      precondition(again == fast, "an instance does not survive encode and decode")
    }
    _ = try? InstanceCodec.etcdNaming.decode(bytes, service: "svc", address: "10.0.0.1:1")
  }

  /// `ServiceAddress` (the byte scanner against the general parser; a parsed address prints as
  /// text that parses to itself) and `RegistryTarget` parsing.
  static func address(_ input: UnsafeRawBufferPointer) {
    let text = String(decoding: input, as: UTF8.self)
    let fast = try? ServiceAddress(parsing: text)
    let general = try? ServiceAddress(checking: text)
    precondition(fast == general, "address parsers disagree on \(text.debugDescription)")
    if let fast {
      precondition(
        (try? ServiceAddress(parsing: fast.description)) == fast,
        "address \(fast) does not survive printing"
      )
    }
    if let target = try? RegistryTarget(parsing: text) {
      precondition(!target.service.isEmpty, "a target without a service")
    }
  }

  /// The hand-written RangeResponse decoder: never reads out of bounds (ASan), and its two
  /// forms (arrays, in-place visits) see the same key-values.
  static func rangeResponse(_ input: UnsafeRawBufferPointer) {
    let decoded = try? RangeResponseScanner.result(input)
    var visited = 0
    let fields = try? RangeResponseScanner.scan(input) { _ in visited += 1 }
    precondition((decoded == nil) == (fields == nil), "decoders disagree on validity")
    if let decoded, let fields {
      precondition(decoded.kvs.count == visited, "decoders disagree on the key-values")
      precondition(decoded.header == fields.header, "decoders disagree on the header")
    }
  }

  /// A header block as HPACK decodes it from a peer, given to the server's request reader and
  /// the client's response and trailers readers (`HeaderBlockFuzzing`): both ends check blocks
  /// themselves, NIOHTTP2Handler's validation is off. The first byte's low bit is END_STREAM.
  static func headerBlock(_ input: UnsafeRawBufferPointer) {
    guard let first = input.first else { return }
    HeaderBlockFuzzing.check(hpack: Array(input.dropFirst()), endStream: first & 1 == 1)
  }

  /// The gRPC message deframer: the same messages (or the same failure) however the bytes are
  /// cut into frames. The first byte picks the cut size.
  static func deframer(_ input: UnsafeRawBufferPointer) {
    guard let first = input.first else { return }
    let body = UnsafeRawBufferPointer(rebasing: input.dropFirst())
    func messages(chunk: Int) -> [[UInt8]]? {
      var deframer = MessageDeframer(maxMessageBytes: 1 << 16)
      var out: [[UInt8]] = []
      var offset = 0
      while offset < body.count {
        let end = min(offset + chunk, body.count)
        deframer.append(ByteBuffer(bytes: UnsafeRawBufferPointer(rebasing: body[offset ..< end])))
        offset = end
        do {
          while let message = try deframer.next() { out.append(message) }
        } catch {
          return nil
        }
      }
      return out
    }
    let whole = messages(chunk: max(body.count, 1))
    let cut = messages(chunk: Int(first % 32) + 1)
    precondition(whole == cut, "the deframer's output depends on how the bytes were cut")
  }

  /// `TrafficPingResponder`'s frame scanner: whatever arrives, in whatever pieces, is passed on
  /// unchanged. The first byte picks the piece size.
  static func pingScanner(_ input: UnsafeRawBufferPointer) {
    guard let first = input.first else { return }
    let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    let body = preface + Array(input.dropFirst())
    let channel = EmbeddedChannel()
    // Finished on every path: an unfinished EmbeddedChannel keeps its pipeline alive.
    defer { _ = try? channel.finish(acceptAlreadyClosed: true) }
    do {
      try TrafficPingResponder.install(in: channel.pipeline.syncOperations)
      let chunk = Int(first % 40) + 1
      var offset = 0
      while offset < body.count {
        let end = min(offset + chunk, body.count)
        try channel.writeInbound(ByteBuffer(bytes: body[offset ..< end]))
        offset = end
      }
      var passed: [UInt8] = []
      while let buffer = try channel.readInbound(as: ByteBuffer.self) {
        passed += buffer.readableBytesView
      }
      precondition(passed == body, "the scanner changed the stream it passes on")
    } catch {
      // Pipeline errors are not what this target looks for.
    }
  }

  /// Watch changes applied to a snapshot, against a dictionary model: the same set, sorted,
  /// and `changes(to:)` turns one set into another. Each 3 bytes are one change.
  static func watchModel(_ input: UnsafeRawBufferPointer) {
    var snapshot = RegistrySnapshot(service: "svc", instances: [], revision: 0)
    var model: [String: ServiceInstance] = [:]
    var index = 0
    var revision: Int64 = 0
    while index + 3 <= input.count {
      let (kind, host, weight) = (input[index], input[index + 1], input[index + 2])
      index += 3
      revision += 1
      let instance = ServiceInstance(
        name: "svc",
        address: "10.0.\(host / 16).\(host % 16):80",
        weight: Int(weight % 8)
      )
      let event: RegistryEvent
      if kind % 3 == 0 {
        event = .removed(instance, revision: revision)
        model[instance.address] = nil
      } else {
        event =
          model[instance.address] == nil
          ? .added(instance, revision: revision) : .updated(instance, revision: revision)
        model[instance.address] = instance
      }
      let before = snapshot
      snapshot.apply(event)
      precondition(
        snapshot.instance(at: instance.address) == model[instance.address]
          && snapshot.instances.count == model.count,
        "the snapshot and the model differ at \(instance.address)"
      )
      // Every 16 changes: the whole set, and the changes that lead to it from the one before.
      if revision % 16 == 0 {
        precondition(
          snapshot.instances == model.values.sorted { $0.address < $1.address },
          "the snapshot and the model differ"
        )
        var replayed = before
        for change in before.changes(to: snapshot) { replayed.apply(change) }
        precondition(
          replayed.instances == snapshot.instances,
          "changes(to:) does not reach the set"
        )
      }
    }
  }
}

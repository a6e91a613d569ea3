import Foundation

#if canImport(Glibc)
import Glibc
#endif

#if FUZZING
// Built with `-sanitize=fuzzer -D FUZZING` (scripts/fuzz): libFuzzer calls `fuzzOne` with each
// input; `FUZZ_TARGET` names the target. SwiftPM links an executable's entry point under the
// name `registry_fuzz_main`, so that is where libFuzzer's driver is started.
nonisolated(unsafe) private var target: (@Sendable (UnsafeRawBufferPointer) -> Void)?

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
  if target == nil {
    let name = getenv("FUZZ_TARGET").map { String(cString: $0) } ?? ""
    guard let chosen = FuzzTargets.all[name] else {
      fatalError("set FUZZ_TARGET to one of \(FuzzTargets.all.keys.sorted())")
    }
    target = chosen
  }
  target?(UnsafeRawBufferPointer(start: data, count: size))
  return 0
}

@_silgen_name("LLVMFuzzerRunDriver")
private func runFuzzerDriver(
  _ argc: UnsafeMutablePointer<CInt>,
  _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
  _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

@_cdecl("registry_fuzz_main")
public func fuzzMain(
  _ argc: CInt,
  _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
) -> CInt {
  var argc = argc
  var argv = argv
  return runFuzzerDriver(&argc, &argv) { data, size in fuzzOne(data, size) }
}
#else
// A plain build replays inputs: `registry-fuzz <target> <file or directory>...` runs the target
// on every file (the committed corpus, or a crash to reproduce) and exits 0 if none broke it.
@main
enum Replay {
  static func main() {
    let arguments = Array(CommandLine.arguments.dropFirst())
    guard let name = arguments.first, let body = FuzzTargets.all[name] else {
      print(
        "usage: registry-fuzz <\(FuzzTargets.all.keys.sorted().joined(separator: "|"))> <path>..."
      )
      exit(2)
    }
    var count = 0
    for path in arguments.dropFirst() {
      for file in Self.files(at: path) {
        guard let bytes = FileManager.default.contents(atPath: file) else { continue }
        bytes.withUnsafeBytes { body($0) }
        count += 1
      }
    }
    print("\(name): \(count) inputs, no property broken")
  }

  static func files(at path: String) -> [String] {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { return [] }
    guard isDirectory.boolValue else { return [path] }
    let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
    return names.sorted().map { "\(path)/\($0)" }
  }
}
#endif

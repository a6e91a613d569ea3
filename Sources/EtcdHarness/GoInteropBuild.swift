import Foundation

/// Builds the repository's grpc-go peer, `GoInterop/src/grpcinterop/cmd/go-interop`, from
/// Debian's Go packages in GOPATH mode: one build for the tests and the benchmark.
package enum GoInteropBuild {
  /// What to install when Go or a Go package is missing.
  private static let installAdvice =
    "install Go and grpc-go from Debian's packages: run scripts/install-test-deps, or "
    + "apt-get install golang-go golang-google-grpc-dev golang-goprotobuf-dev "
    + "golang-google-protobuf-dev golang-etcd-server-dev"

  /// Builds `go-interop` into a new temporary directory and returns the binary's path.
  ///
  /// - Parameter repositoryRoot: the path of the directory that holds `GoInterop/`.
  /// - Throws: ``HarnessError`` saying what is missing (Go, grpc-go, etcd's Go client) and how to
  ///   install it, or the compiler's output when the build fails.
  package static func build(repositoryRoot: String) async throws -> String {
    guard let go = Command.locate("go") else {
      throw HarnessError("`go` is not on PATH; the grpc-go peer needs it: \(installAdvice)")
    }
    let required = [
      ("grpc-go", "/usr/share/gocode/src/google.golang.org/grpc"),
      ("etcd's Go client", "/usr/share/gocode/src/go.etcd.io/etcd/clientv3/naming/resolver"),
    ]
    for (name, path) in required where !FileManager.default.fileExists(atPath: path) {
      throw HarnessError("\(name) is missing (\(path)): \(installAdvice)")
    }
    let directory = FileManager.default.temporaryDirectory
      .appendingPathComponent("go-interop-\(UUID().uuidString.prefix(8))")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    let binary = directory.appendingPathComponent("go-interop").path
    var environment = [
      "GO111MODULE": "off",
      "GOPATH": "\(repositoryRoot)/GoInterop:/usr/share/gocode",
      "GOFLAGS": "",
    ]
    let inherited = ProcessInfo.processInfo.environment
    if inherited["HOME"] == nil, inherited["GOCACHE"] == nil {
      environment["GOCACHE"] = directory.appendingPathComponent("cache").path
    }
    _ = try await Command.output(
      go,
      ["build", "-o", binary, "grpcinterop/cmd/go-interop"],
      environment: environment
    )
    return binary
  }
}

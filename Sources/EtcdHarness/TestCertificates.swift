import Foundation

/// A certificate authority with a server and a client certificate, made with `openssl` for a test.
///
/// The server certificate is valid for `127.0.0.1`, `::1` and `localhost`; the client
/// certificate's common name is `clientName` (etcd maps it to a user when auth is on).
public struct TestCertificates: Sendable {
  /// The PEM file of the CA certificate (the trust root).
  public var caCertificate: String
  /// The PEM file of the server certificate, signed by the CA.
  public var serverCertificate: String
  /// The PEM file of the server's private key.
  public var serverKey: String
  /// The PEM file of the client certificate, signed by the CA.
  public var clientCertificate: String
  /// The PEM file of the client's private key.
  public var clientKey: String

  /// Generates a fresh CA, server and client certificate in `directory`.
  ///
  /// - Throws: ``HarnessError`` when `openssl` is missing or fails.
  public static func generate(
    in directory: String,
    name: String = "registry-test",
    clientName: String = "root"
  ) async throws -> TestCertificates {
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    let path = { (file: String) in "\(directory)/\(name)-\(file)" }
    func openssl(_ arguments: [String]) async throws {
      let output = try await Command.run("openssl", arguments)
      guard output.status == 0 else {
        throw HarnessError("openssl \(arguments.first ?? "") failed: \(output.stderr)")
      }
    }
    let curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    try await openssl(
      ["req", "-x509"] + curve + [
        "-keyout", path("ca.key"), "-out", path("ca.pem"), "-days", "3", "-subj", "/CN=\(name)-ca",
      ]
    )
    for (role, commonName, usage) in [
      ("server", "etcd-server", "serverAuth,clientAuth"), ("client", clientName, "clientAuth"),
    ] {
      try await openssl(
        ["req"] + curve + [
          "-keyout", path("\(role).key"), "-out", path("\(role).csr"), "-subj", "/CN=\(commonName)",
        ]
      )
      let extensions = path("\(role).ext")
      try "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\nextendedKeyUsage=\(usage)\n"
        .write(toFile: extensions, atomically: true, encoding: .utf8)
      try await openssl([
        "x509", "-req", "-in", path("\(role).csr"), "-CA", path("ca.pem"), "-CAkey", path("ca.key"),
        "-CAcreateserial", "-out", path("\(role).pem"), "-days", "3", "-extfile", extensions,
      ])
    }
    return TestCertificates(
      caCertificate: path("ca.pem"),
      serverCertificate: path("server.pem"),
      serverKey: path("server.key"),
      clientCertificate: path("client.pem"),
      clientKey: path("client.key")
    )
  }
}

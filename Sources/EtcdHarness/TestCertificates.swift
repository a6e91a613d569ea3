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
  /// The PEM file of the CA's private key, to sign further certificates.
  var caKey: String

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
    try await openssl(
      ["req", "-x509"] + self.curve + [
        "-keyout", path("ca.key"), "-out", path("ca.pem"), "-days", "3", "-subj", "/CN=\(name)-ca",
      ]
    )
    for (role, commonName, usage) in [
      ("server", "etcd-server", "serverAuth,clientAuth"), ("client", clientName, "clientAuth"),
    ] {
      try await openssl(
        ["req"] + self.curve + [
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
      clientKey: path("client.key"),
      caKey: path("ca.key")
    )
  }

  /// Makes a client certificate without a common name, signed by the CA, as `<prefix>.pem` and
  /// `<prefix>.key`: etcd 3.4's grpc-proxy refuses to present one that has a common name.
  func makeClientCertificateWithoutCommonName(
    at prefix: String
  ) async throws -> (certificate: String, key: String) {
    let (certificate, key) = ("\(prefix).pem", "\(prefix).key")
    try await Self.openssl(
      ["req"] + Self.curve + [
        "-keyout", key, "-out", "\(prefix).csr", "-subj", "/O=etcd-harness",
      ]
    )
    try "extendedKeyUsage=clientAuth\n".write(
      toFile: "\(prefix).ext",
      atomically: true,
      encoding: .utf8
    )
    try await Self.openssl([
      "x509", "-req", "-in", "\(prefix).csr", "-CA", self.caCertificate, "-CAkey", self.caKey,
      "-CAcreateserial", "-out", certificate, "-days", "3", "-extfile", "\(prefix).ext",
    ])
    return (certificate, key)
  }

  private static let curve = [
    "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
  ]

  private static func openssl(_ arguments: [String]) async throws {
    let output = try await Command.run("openssl", arguments)
    guard output.status == 0 else {
      throw HarnessError("openssl \(arguments.first ?? "") failed: \(output.stderr)")
    }
  }
}

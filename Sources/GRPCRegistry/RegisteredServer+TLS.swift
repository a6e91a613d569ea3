public import GRPCConnection
import GRPCNIOTransportHTTP2

extension RegisteredServer {
  /// TLS for a ``RegisteredServer``: the certificate it presents and, for mutual TLS, the CAs
  /// that must have signed the clients' certificates.
  ///
  /// ```swift
  /// let config = RegisteredServer.Config(name: "user-server") {
  ///   $0.tls = .mutualTLS(
  ///     certificateChain: .file(path: "server.pem"),
  ///     privateKey: .file(path: "server.key"),
  ///     clientTrustRoots: .file(path: "ca.pem")
  ///   )
  /// }
  /// ```
  ///
  /// The certificate must name the address the server registers (an IP address SAN such as
  /// `IP:10.0.0.7`, or the DNS name of an advertised `host:port`): clients verify it against the
  /// address they dial. Clients configure the matching trust roots in
  /// ``RegistryClientTransport/Config/tls``.
  public typealias TLS = HTTP2Server.TLS
}

extension HTTP2Server.TLS {
  /// The grpc-swift server transport's security for these settings.
  var transportSecurity: HTTP2ServerTransport.Posix.TransportSecurity {
    let chain = [TLSConfig.CertificateSource(self.certificateChain)]
    let key = TLSConfig.PrivateKeySource(self.privateKey)
    guard let clientTrustRoots = self.clientTrustRoots else {
      return .tls(certificateChain: chain, privateKey: key)
    }
    return .mTLS(certificateChain: chain, privateKey: key) {
      $0.trustRoots = .certificates([TLSConfig.CertificateSource(clientTrustRoots)])
      // Clients' certificates name the client, not the address it connects from.
      $0.clientCertificateVerification = .noHostnameVerification
    }
  }
}

extension TLSConfig.CertificateSource {
  init(_ source: HTTP2Connection.PEMSource) {
    switch source.kind {
    case .file(let path): self = .file(path: path, format: .pem)
    case .bytes(let bytes): self = .bytes(bytes, format: .pem)
    }
  }
}

extension TLSConfig.PrivateKeySource {
  init(_ source: HTTP2Connection.PEMSource) {
    switch source.kind {
    case .file(let path): self = .file(path: path, format: .pem)
    case .bytes(let bytes): self = .bytes(bytes, format: .pem)
    }
  }
}

extension HTTP2Connection.TLS {
  /// The stock grpc-swift client transport's security for these settings.
  ///
  /// The stock transport verifies the host it dials: ``serverHostname`` has no effect there.
  var posixTransportSecurity: HTTP2ClientTransport.Posix.TransportSecurity {
    let trustRoots: TLSConfig.TrustRootsSource
    switch self.trustRoots.kind {
    case .systemDefault: trustRoots = .systemDefault
    case .certificates(let source):
      trustRoots = .certificates([TLSConfig.CertificateSource(source)])
    }
    let verification: TLSConfig.CertificateVerification
    switch self.verification.kind {
    case .full: verification = .fullVerification
    case .noHostname: verification = .noHostnameVerification
    case .none: verification = .noVerification
    }
    return .tls(
      HTTP2ClientTransport.Posix.TransportSecurity.TLS(
        certificateChain: self.certificateChain.map { [TLSConfig.CertificateSource($0)] } ?? [],
        privateKey: self.privateKey.map { TLSConfig.PrivateKeySource($0) },
        serverCertificateVerification: verification,
        trustRoots: trustRoots
      )
    )
  }
}

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
  public struct TLS: Sendable, Hashable {
    /// The server's certificate chain (PEM, leaf first).
    public var certificateChain: HTTP2Connection.PEMSource
    /// The private key of the leaf certificate (PEM).
    public var privateKey: HTTP2Connection.PEMSource
    /// The CA certificates that client certificates must chain to; when set, every client must
    /// present a certificate signed by one of them (mutual TLS) or its connection is refused.
    /// `nil` asks for no client certificate.
    public var clientTrustRoots: HTTP2Connection.PEMSource?

    /// Creates TLS settings; `clientTrustRoots` non-`nil` requires client certificates.
    public init(
      certificateChain: HTTP2Connection.PEMSource,
      privateKey: HTTP2Connection.PEMSource,
      clientTrustRoots: HTTP2Connection.PEMSource? = nil
    ) {
      self.certificateChain = certificateChain
      self.privateKey = privateKey
      self.clientTrustRoots = clientTrustRoots
    }

    /// TLS with the server's certificate; clients are not asked for one.
    public static func tls(
      certificateChain: HTTP2Connection.PEMSource,
      privateKey: HTTP2Connection.PEMSource
    ) -> Self {
      Self(certificateChain: certificateChain, privateKey: privateKey)
    }

    /// Mutual TLS: the server's certificate, and every client must present a certificate signed
    /// by a CA in `clientTrustRoots`.
    public static func mutualTLS(
      certificateChain: HTTP2Connection.PEMSource,
      privateKey: HTTP2Connection.PEMSource,
      clientTrustRoots: HTTP2Connection.PEMSource
    ) -> Self {
      Self(
        certificateChain: certificateChain,
        privateKey: privateKey,
        clientTrustRoots: clientTrustRoots
      )
    }

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

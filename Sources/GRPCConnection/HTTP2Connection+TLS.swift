internal import NIOSSL

extension HTTP2Connection {
  /// PEM-encoded data, from a file or from memory.
  public struct PEMSource: Sendable, Hashable {
    package enum Kind: Hashable {
      case file(String)
      case bytes([UInt8])
    }

    package let kind: Kind

    /// PEM data read from `path` when the connection is created.
    public static func file(path: String) -> Self {
      Self(kind: .file(path))
    }

    /// PEM data in memory.
    public static func bytes(_ bytes: [UInt8]) -> Self {
      Self(kind: .bytes(bytes))
    }
  }

  /// TLS settings: trust roots, an optional client certificate, the server name to verify.
  public struct TLS: Sendable, Hashable {
    /// Where trusted CA certificates come from.
    public struct TrustRoots: Sendable, Hashable {
      package enum Kind: Hashable {
        case systemDefault
        case certificates(PEMSource)
      }

      package let kind: Kind

      /// The operating system's trust store.
      public static var systemDefault: Self { Self(kind: .systemDefault) }

      /// The CA certificates in `source` (one or more PEM certificates).
      public static func certificates(_ source: PEMSource) -> Self {
        Self(kind: .certificates(source))
      }
    }

    /// How the server's certificate is checked.
    public struct Verification: Sendable, Hashable {
      package enum Kind: Hashable {
        case full
        case noHostname
        case none
      }

      package let kind: Kind

      /// Chain and host name (the default).
      public static var full: Self { Self(kind: .full) }
      /// Chain only.
      public static var noHostnameVerification: Self { Self(kind: .noHostname) }
      /// Nothing; for tests only.
      public static var insecureNoVerification: Self { Self(kind: .none) }
    }

    /// The CA certificates that may sign the server's certificate.
    public var trustRoots: TrustRoots
    /// The client certificate chain for mutual TLS (PEM, leaf first); requires ``privateKey``.
    public var certificateChain: PEMSource?
    /// The client certificate's private key (PEM).
    public var privateKey: PEMSource?
    /// The name sent in SNI and verified against the certificate; `nil` uses the target's host.
    public var serverHostname: String?
    /// How the server's certificate is checked.
    public var verification: Verification

    /// Creates TLS settings.
    public init(
      trustRoots: TrustRoots,
      certificateChain: PEMSource?,
      privateKey: PEMSource?,
      serverHostname: String?,
      verification: Verification
    ) {
      self.trustRoots = trustRoots
      self.certificateChain = certificateChain
      self.privateKey = privateKey
      self.serverHostname = serverHostname
      self.verification = verification
    }

    /// System trust roots, no client certificate, full verification of the target's host.
    public static var defaults: Self {
      Self(
        trustRoots: .systemDefault,
        certificateChain: nil,
        privateKey: nil,
        serverHostname: nil,
        verification: .full
      )
    }

    /// The defaults, modified by `configure`.
    public static func defaults(_ configure: (inout Self) -> Void) -> Self {
      var tls = Self.defaults
      configure(&tls)
      return tls
    }
  }
}

extension HTTP2Connection.TLS {
  /// Builds the NIOSSL context (loads files, parses PEM); throws an `RPCError`-convertible
  /// `HTTP2ConnectionError` describing what was wrong.
  func makeSSLContext() throws -> NIOSSLContext {
    var configuration = TLSConfiguration.makeClientConfiguration()
    // gRPC requires HTTP/2 via ALPN; grpc-go servers reject connections without it.
    configuration.applicationProtocols = ["h2"]
    configuration.minimumTLSVersion = .tlsv12

    switch self.trustRoots.kind {
    case .systemDefault:
      configuration.trustRoots = .default
    case .certificates(let source):
      configuration.trustRoots = .certificates(
        try Self.certificates(from: source, what: "trust roots")
      )
    }

    switch (self.certificateChain, self.privateKey) {
    case (.some(let chain), .some(let key)):
      configuration.certificateChain = try Self.certificates(
        from: chain,
        what: "client certificate"
      )
      .map { .certificate($0) }
      configuration.privateKey = .privateKey(try Self.privateKey(from: key))
    case (.none, .none):
      ()
    case (.some, .none), (.none, .some):
      throw HTTP2ConnectionError(
        code: .invalidConfiguration,
        message: "TLS client authentication needs both a certificate chain and a private key."
      )
    }

    switch self.verification.kind {
    case .full:
      configuration.certificateVerification = .fullVerification
    case .noHostname:
      configuration.certificateVerification = .noHostnameVerification
    case .none:
      configuration.certificateVerification = .none
    }

    do {
      return try NIOSSLContext(configuration: configuration)
    } catch {
      throw HTTP2ConnectionError(
        code: .invalidConfiguration,
        message: "Could not create the TLS context: \(error).",
        cause: error
      )
    }
  }

  static func certificates(
    from source: HTTP2Connection.PEMSource,
    what: String
  ) throws -> [NIOSSLCertificate] {
    do {
      let certificates: [NIOSSLCertificate]
      switch source.kind {
      case .bytes(let bytes):
        certificates = try NIOSSLCertificate.fromPEMBytes(bytes)
      case .file(let path):
        certificates = try NIOSSLCertificate.fromPEMFile(path)
      }
      guard !certificates.isEmpty else {
        throw HTTP2ConnectionError(
          code: .invalidConfiguration,
          message: "The TLS \(what) contain no PEM certificate."
        )
      }
      return certificates
    } catch let error as HTTP2ConnectionError {
      throw error
    } catch {
      throw HTTP2ConnectionError(
        code: .invalidConfiguration,
        message: "The TLS \(what) could not be loaded as PEM certificates: \(error).",
        cause: error
      )
    }
  }

  static func privateKey(from source: HTTP2Connection.PEMSource) throws -> NIOSSLPrivateKey {
    do {
      switch source.kind {
      case .bytes(let bytes):
        return try NIOSSLPrivateKey(bytes: bytes, format: .pem)
      case .file(let path):
        return try NIOSSLPrivateKey(file: path, format: .pem)
      }
    } catch {
      throw HTTP2ConnectionError(
        code: .invalidConfiguration,
        message: "The TLS private key could not be loaded as a PEM key: \(error).",
        cause: error
      )
    }
  }
}

extension HTTP2Connection.TLS {
  /// Says why a connection attempt failed in the reader's terms when the TLS handshake is the
  /// reason (the server's certificate not trusted, a client certificate required), and what to
  /// configure; `nil` when `error` is not a TLS failure.
  ///
  /// BoringSSL reports these as error stacks whose text is all one gets (`NIOSSLError` has no
  /// finer cases for them), so the text is what is matched.
  package static func explainHandshakeFailure(_ error: any Error, host: String?) -> String? {
    let text = String(describing: error)
    let server = host.map { "the server at \($0)" } ?? "the server"
    if text.contains("CERTIFICATE_VERIFY_FAILED") || text.contains("unableToValidateCertificate")
      || text.contains("failedToValidateHostname")
    {
      return
        "the TLS handshake failed: \(server) presented a certificate that was not trusted (it is not signed by a CA in the configured trust roots, or it does not name the host dialled). Configure the CA that signed the server's certificate as TLS trust roots (trustRoots = .certificates(.file(path: \"ca.pem\"))), and set serverHostname when the certificate names a host other than the one dialled. (\(text))"
    }
    if text.contains("CERTIFICATE_REQUIRED") || text.contains("PEER_DID_NOT_RETURN_A_CERTIFICATE") {
      return
        "the TLS handshake failed: \(server) requires a client certificate (mutual TLS) and none was presented. Configure a client certificate chain and private key (certificateChain and privateKey) signed by a CA the server trusts. (\(text))"
    }
    if text.contains("ALERT_BAD_CERTIFICATE") || text.contains("ALERT_UNKNOWN_CA")
      || text.contains("ALERT_CERTIFICATE_UNKNOWN")
    {
      return
        "the TLS handshake failed: \(server) rejected the client certificate (it does not trust the CA that signed it). Use a client certificate signed by a CA the server trusts. (\(text))"
    }
    if let sslError = error as? NIOSSLError, case .handshakeFailed = sslError {
      return
        "the TLS handshake with \(server) failed; check that it serves TLS and that both sides' certificates and trust roots match. (\(text))"
    }
    return nil
  }
}

internal import NIOSSL

extension HTTP2Connection {
  /// PEM-encoded data, from a file or from memory.
  public struct PEMSource: Sendable, Hashable {
    enum Kind: Hashable {
      case file(String)
      case bytes([UInt8])
    }

    let kind: Kind

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
      enum Kind: Hashable {
        case systemDefault
        case certificates(PEMSource)
      }

      let kind: Kind

      /// The operating system's trust store.
      public static var systemDefault: Self { Self(kind: .systemDefault) }

      /// The CA certificates in `source` (one or more PEM certificates).
      public static func certificates(_ source: PEMSource) -> Self {
        Self(kind: .certificates(source))
      }
    }

    /// How the server's certificate is checked.
    public struct Verification: Sendable, Hashable {
      enum Kind: Hashable {
        case full
        case noHostname
        case none
      }

      let kind: Kind

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

  private static func certificates(
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

  private static func privateKey(from source: HTTP2Connection.PEMSource) throws -> NIOSSLPrivateKey
  {
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

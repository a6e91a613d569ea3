import Dispatch
import GRPCNIOTransportHTTP2
import RegistryCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Turns a registered `host:port` into socket addresses; host names go through `getaddrinfo`
/// on a Dispatch thread so no Swift concurrency thread blocks.
enum HostResolver {
  static func socketAddresses(_ address: ServiceAddress) async throws -> [SocketAddress] {
    if address.isIPv6 {
      return [.ipv6(host: address.host, port: address.port)]
    }
    if Self.isIPv4Literal(address.host) {
      return [.ipv4(host: address.host, port: address.port)]
    }
    let host = address.host
    let port = address.port
    return try await withCheckedThrowingContinuation { continuation in
      DispatchQueue.global().async {
        continuation.resume(with: Result { try Self.resolveBlocking(host: host, port: port) })
      }
    }
  }

  static func isIPv4Literal(_ host: String) -> Bool {
    let parts = host.split(separator: ".", omittingEmptySubsequences: false)
    return parts.count == 4
      && parts.allSatisfy { part in
        !part.isEmpty && part.count <= 3 && part.allSatisfy(\.isASCII)
          && Int(part).map { $0 <= 255 } == true
      }
  }

  struct ResolutionError: Error, CustomStringConvertible {
    var description: String
  }

  private static func resolveBlocking(host: String, port: Int) throws -> [SocketAddress] {
    var hints = addrinfo()
    #if canImport(Darwin)
    hints.ai_socktype = SOCK_STREAM
    #else
    hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    #endif
    var result: UnsafeMutablePointer<addrinfo>?
    let status = getaddrinfo(host, String(port), &hints, &result)
    guard status == 0, let first = result else {
      throw ResolutionError(
        description: "could not resolve '\(host)': \(String(cString: gai_strerror(status)))"
      )
    }
    defer { freeaddrinfo(first) }
    var addresses: [SocketAddress] = []
    var next: UnsafeMutablePointer<addrinfo>? = first
    while let info = next {
      defer { next = info.pointee.ai_next }
      guard let sockaddr = info.pointee.ai_addr else { continue }
      var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
      switch info.pointee.ai_family {
      case AF_INET:
        var address = sockaddr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
          $0.pointee.sin_addr
        }
        guard inet_ntop(AF_INET, &address, &buffer, socklen_t(buffer.count)) != nil else {
          continue
        }
        addresses.append(
          .ipv4(
            host: String(
              decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) },
              as: UTF8.self
            ),
            port: port
          )
        )
      case AF_INET6:
        var address = sockaddr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) {
          $0.pointee.sin6_addr
        }
        guard inet_ntop(AF_INET6, &address, &buffer, socklen_t(buffer.count)) != nil else {
          continue
        }
        addresses.append(
          .ipv6(
            host: String(
              decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) },
              as: UTF8.self
            ),
            port: port
          )
        )
      default:
        continue
      }
    }
    guard !addresses.isEmpty else {
      throw ResolutionError(description: "'\(host)' resolved to no IPv4 or IPv6 address")
    }
    return addresses
  }
}

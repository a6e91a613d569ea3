#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The machine's own addresses, to advertise when a server listens on every interface.
enum LocalAddresses {
  /// The addresses of interfaces that are up, are not loopback, and are not link-local:
  /// IPv4 first (when `ipv4` is true), then global IPv6 (when `ipv6` is true).
  static func routable(ipv4: Bool, ipv6: Bool) -> [String] {
    var first: UnsafeMutablePointer<ifaddrs>?
    guard getifaddrs(&first) == 0, let first else { return [] }
    defer { freeifaddrs(first) }
    var v4: [String] = []
    var v6: [String] = []
    var next: UnsafeMutablePointer<ifaddrs>? = first
    while let interface = next {
      defer { next = interface.pointee.ifa_next }
      let flags = Int32(interface.pointee.ifa_flags)
      guard flags & Int32(IFF_UP) != 0, flags & Int32(IFF_LOOPBACK) == 0,
        let address = interface.pointee.ifa_addr
      else { continue }
      var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
      switch Int32(address.pointee.sa_family) {
      case AF_INET where ipv4:
        var raw = address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
          $0.pointee.sin_addr
        }
        guard inet_ntop(AF_INET, &raw, &buffer, socklen_t(buffer.count)) != nil else { continue }
        let text = String(
          decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) },
          as: UTF8.self
        )
        if !text.hasPrefix("169.254.") { v4.append(text) }
      case AF_INET6 where ipv6:
        var raw = address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) {
          $0.pointee.sin6_addr
        }
        guard inet_ntop(AF_INET6, &raw, &buffer, socklen_t(buffer.count)) != nil else { continue }
        let text = String(
          decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) },
          as: UTF8.self
        )
        if !text.lowercased().hasPrefix("fe80") { v6.append(text) }
      default:
        continue
      }
    }
    return v4 + v6
  }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The entry point of a command-line tool built without the package's `Tools` trait, which brings
/// the tools' swift-argument-parser (and user-server's swift-prometheus): says how to build the
/// real command and exits with status 64 (usage error).
package func exitBuiltWithoutToolsTrait(_ tool: String) -> Never {
  let message = """
    \(tool): this build has no command line: the package was built without its `Tools` trait.
    Build the tools with it: swift build --traits Tools (or swift run --traits Tools \(tool) …).

    """
  _ = message.withCString { write(2, $0, strlen($0)) }
  exit(64)
}

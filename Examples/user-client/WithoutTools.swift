#if !Tools
import RegistryPrimitives

/// `user-client` built without the `Tools` trait: a stub that says how to build the real one.
@main
enum UserClientWithoutTools {
  static func main() { exitBuiltWithoutToolsTrait("user-client") }
}
#endif

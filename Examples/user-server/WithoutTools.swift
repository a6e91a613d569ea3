#if !Tools
import RegistryPrimitives

/// `user-server` built without the `Tools` trait: a stub that says how to build the real one.
@main
enum UserServerWithoutTools {
  static func main() { exitBuiltWithoutToolsTrait("user-server") }
}
#endif

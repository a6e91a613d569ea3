#if !Tools
import RegistryPrimitives

/// `registryctl` built without the `Tools` trait: a stub that says how to build the real one.
@main
enum RegistryCtlWithoutTools {
  static func main() { exitBuiltWithoutToolsTrait("registryctl") }
}
#endif

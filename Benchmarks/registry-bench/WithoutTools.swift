#if !Tools
import RegistryPrimitives

/// `registry-bench` built without the `Tools` trait: a stub that says how to build the real one.
@main
enum RegistryBenchWithoutTools {
  static func main() { exitBuiltWithoutToolsTrait("registry-bench") }
}
#endif

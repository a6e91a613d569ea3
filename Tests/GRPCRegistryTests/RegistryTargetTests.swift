import GRPCRegistry
import Testing

@Suite("registry:// targets")
struct RegistryTargetTests {
  @Test(
    "valid targets parse",
    arguments: [
      ("registry://user-server", RegistryTarget(service: "user-server")),
      ("registry:///user-server", RegistryTarget(service: "user-server")),
      ("registry://user-server?group=A", RegistryTarget(service: "user-server", group: "A")),
      ("registry:///user-server?group=A", RegistryTarget(service: "user-server", group: "A")),
      ("REGISTRY://user.v2_x", RegistryTarget(service: "user.v2_x")),
      ("registry://user-server?group=", RegistryTarget(service: "user-server")),
    ]
  )
  func parses(text: String, expected: RegistryTarget) throws {
    #expect(try RegistryTarget(parsing: text) == expected)
  }

  @Test(
    "malformed targets are refused with a clear error",
    arguments: [
      ("", "does not start with registry://"),
      ("dns://user-server", "does not start with registry://"),
      ("registry://", "service name is missing"),
      ("registry:///", "service name is missing"),
      ("registry://a/b", "contains '/'"),
      ("registry://user server", "character outside"),
      ("registry://user-server?zone=A", "'zone' is unknown"),
      ("registry://user-server?group", "has no '='"),
      ("registry://user-server?group=A&group=B", "given twice"),
      ("registry://user-server?group=A/B", "character outside"),
      ("registry://user-server#x", "fragment"),
    ]
  )
  func refuses(text: String, fragment: String) {
    #expect {
      _ = try RegistryTarget(parsing: text)
    } throws: { error in
      guard let error = error as? GRPCRegistryError else { return false }
      return error.code == .invalidTarget && error.message.contains(fragment)
        && error.message.contains("registry://<service>")
    }
  }

  @Test("the typed form and the description round-trip")
  func typed() throws {
    let target: RegistryTarget = .registry(service: "user-server", group: "A")
    #expect(target.description == "registry://user-server?group=A")
    #expect(try RegistryTarget(parsing: target.description) == target)
    #expect(RegistryTarget.registry(service: "s", group: "").group == nil)
  }
}

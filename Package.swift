// swift-tools-version: 6.2
import PackageDescription

let strictSettings: [SwiftSetting] = [
  .swiftLanguageMode(.v6),
  .enableUpcomingFeature("ExistentialAny"),
  .enableUpcomingFeature("InternalImportsByDefault"),
  // Warnings are bugs: the build fails on them, locally and in CI.
  .treatAllWarnings(as: .error),
]

// The command-line tools (registryctl, user-server, user-client, registry-bench) need
// swift-argument-parser, and user-server swift-prometheus. They are behind the `Tools` trait, off by
// default, so a package that depends on the libraries resolves and builds neither (SwiftPM leaves
// trait-guarded dependencies out of the graph). Build them with `swift build --traits Tools`;
// without the trait each of them is a stub that says so. registry-demo needs no trait.
let tools: TargetDependencyCondition? = .when(traits: ["Tools"])

let package = Package(
  name: "swift-grpc-registry",
  platforms: [.macOS(.v15)],
  products: [
    .library(name: "RegistryCore", targets: ["RegistryCore"]),
    .library(name: "RegistryTesting", targets: ["RegistryTesting"]),
    .library(name: "GRPCConnection", targets: ["GRPCConnection"]),
    .library(name: "Etcd", targets: ["Etcd"]),
    .library(name: "EtcdRegistry", targets: ["EtcdRegistry"]),
    .library(name: "GRPCRegistry", targets: ["GRPCRegistry"]),
    .library(name: "EtcdHarness", targets: ["EtcdHarness"]),
    .executable(name: "registry-demo", targets: ["registry-demo"]),
    .executable(name: "user-server", targets: ["user-server"]),
    .executable(name: "user-client", targets: ["user-client"]),
    .executable(name: "registry-bench", targets: ["registry-bench"]),
    .executable(name: "registryctl", targets: ["registryctl"]),
    .executable(name: "registry-fuzz", targets: ["registry-fuzz"]),
  ],
  traits: [
    .trait(
      name: "Tools",
      description:
        "The command-line tools: registryctl, user-server, user-client and registry-bench (adds swift-argument-parser and swift-prometheus)."
    )
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
    .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    .package(url: "https://github.com/apple/swift-nio-http2", from: "1.46.0"),
    .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
    .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
    .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.3"),
    .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.2"),
    .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.1"),
    .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    .package(url: "https://github.com/apple/swift-service-context", from: "1.5.1"),
    .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    // `swift package generate-documentation` for the DocC catalogs; no code depends on it.
    .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
  ],
  targets: [
    // The package's shared primitives (the lock every module uses); not a product.
    .target(
      name: "RegistryPrimitives",
      swiftSettings: strictSettings
    ),
    // The registry model, the protocol, the embedded in-memory registry and the JSON codec.
    .target(
      name: "RegistryCore",
      dependencies: [
        "RegistryPrimitives",
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "Logging", package: "swift-log"),
      ],
      swiftSettings: strictSettings
    ),
    // The conformance suite every ServiceRegistry implementation must pass.
    .target(
      name: "RegistryTesting",
      dependencies: [
        "RegistryPrimitives", "RegistryCore", .product(name: "Logging", package: "swift-log"),
      ],
      swiftSettings: strictSettings
    ),
    // Starts and stops real etcd processes (single node, clusters, TLS) for tests and benchmarks.
    .target(
      name: "EtcdHarness",
      dependencies: [
        "RegistryPrimitives",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
      ],
      swiftSettings: strictSettings
    ),
    // The project's own gRPC-over-HTTP/2 client connection (a grpc-swift-2 ClientTransport).
    .target(
      name: "GRPCConnection",
      dependencies: [
        "RegistryPrimitives",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOHTTP2", package: "swift-nio-http2"),
        .product(name: "NIOHPACK", package: "swift-nio-http2"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"),
        .product(name: "Logging", package: "swift-log"),
      ],
      swiftSettings: strictSettings
    ),
    // A Swift etcd v3 client over grpc-swift-2 and GRPCConnection.
    .target(
      name: "Etcd",
      dependencies: [
        "RegistryPrimitives",
        "GRPCConnection",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Metrics", package: "swift-metrics"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ],
      swiftSettings: strictSettings
    ),
    // The ServiceRegistry on etcd.
    .target(
      name: "EtcdRegistry",
      dependencies: [
        "RegistryPrimitives",
        "RegistryCore",
        "Etcd",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Metrics", package: "swift-metrics"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ],
      swiftSettings: strictSettings
    ),
    // grpc-swift-2 glue: registry:// resolver, balanced transport, registered server.
    .target(
      name: "GRPCRegistry",
      dependencies: [
        "RegistryPrimitives",
        "RegistryCore",
        "GRPCConnection",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Metrics", package: "swift-metrics"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        .product(name: "ServiceContextModule", package: "swift-service-context"),
      ],
      swiftSettings: strictSettings
    ),
    // The example service of the seed (package user, UserMesService), shared by the examples.
    .target(
      name: "UserService",
      dependencies: [
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
      ],
      path: "Examples/UserService",
      swiftSettings: strictSettings
    ),
    .executableTarget(
      name: "registry-demo",
      dependencies: [
        "RegistryPrimitives",
        "RegistryCore",
        "EtcdHarness",
        "GRPCConnection",
        "EtcdRegistry",
        "GRPCRegistry",
        "UserService",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ],
      path: "Examples/registry-demo",
      swiftSettings: strictSettings
    ),
    .executableTarget(
      name: "user-server",
      dependencies: [
        "RegistryPrimitives",
        "RegistryCore",
        "EtcdRegistry",
        "GRPCRegistry",
        "UserService",
        .product(name: "ArgumentParser", package: "swift-argument-parser", condition: tools),
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Metrics", package: "swift-metrics"),
        .product(name: "Prometheus", package: "swift-prometheus", condition: tools),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ],
      path: "Examples/user-server",
      swiftSettings: strictSettings
    ),
    .executableTarget(
      name: "user-client",
      dependencies: [
        "RegistryPrimitives",
        "RegistryCore",
        "GRPCConnection",
        "EtcdRegistry",
        "GRPCRegistry",
        "UserService",
        .product(name: "ArgumentParser", package: "swift-argument-parser", condition: tools),
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "Logging", package: "swift-log"),
      ],
      path: "Examples/user-client",
      swiftSettings: strictSettings
    ),
    // One benchmark command for the whole system; prints JSON lines and a table.
    .executableTarget(
      name: "registry-bench",
      dependencies: [
        "RegistryPrimitives",
        "RegistryCore",
        "Etcd",
        "EtcdRegistry",
        "EtcdHarness",
        "GRPCConnection",
        "GRPCRegistry",
        "UserService",
        .product(name: "ArgumentParser", package: "swift-argument-parser", condition: tools),
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
        .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
        .product(name: "Logging", package: "swift-log"),
      ],
      path: "Benchmarks/registry-bench",
      swiftSettings: strictSettings
    ),
    // Operates the registry on etcd: list, watch, register, deregister, status.
    .executableTarget(
      name: "registryctl",
      dependencies: [
        "RegistryPrimitives",
        "RegistryCore",
        "Etcd",
        "EtcdRegistry",
        .product(name: "ArgumentParser", package: "swift-argument-parser", condition: tools),
        .product(name: "Logging", package: "swift-log"),
      ],
      path: "Sources/registryctl",
      swiftSettings: strictSettings
    ),
    // The fuzz targets: `scripts/fuzz` builds them with libFuzzer (`-sanitize=fuzzer -D FUZZING`);
    // a plain build replays the committed corpus (`registry-fuzz <target> Fuzz/Corpus/<target>`).
    .executableTarget(
      name: "registry-fuzz",
      dependencies: [
        "RegistryCore",
        "Etcd",
        "GRPCConnection",
        "GRPCRegistry",
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOEmbedded", package: "swift-nio"),
      ],
      path: "Fuzz/registry-fuzz",
      swiftSettings: strictSettings
    ),
    .testTarget(
      name: "RegistryCoreTests",
      dependencies: ["RegistryPrimitives", "RegistryCore", "RegistryTesting"],
      swiftSettings: strictSettings
    ),
    // The etcd client's protocol state machines, driven event by event: no etcd, no sockets.
    .testTarget(
      name: "EtcdTests",
      dependencies: [
        "RegistryPrimitives",
        "Etcd",
        "EtcdRegistry",
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
      ],
      swiftSettings: strictSettings
    ),
    .testTarget(
      name: "GRPCConnectionTests",
      dependencies: [
        "RegistryPrimitives",
        "GRPCConnection",
        "EtcdHarness",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOEmbedded", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOHTTP2", package: "swift-nio-http2"),
        .product(name: "NIOHPACK", package: "swift-nio-http2"),
        .product(name: "Logging", package: "swift-log"),
      ],
      swiftSettings: strictSettings
    ),
    .testTarget(
      name: "GRPCRegistryTests",
      dependencies: [
        "RegistryPrimitives",
        "GRPCRegistry",
        "EtcdHarness",
        "EtcdRegistry",
        "GRPCConnection",
        "RegistryCore",
        "RegistryTesting",
        "UserService",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        .product(name: "ServiceContextModule", package: "swift-service-context"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Metrics", package: "swift-metrics"),
        .product(name: "MetricsTestKit", package: "swift-metrics"),
      ],
      swiftSettings: strictSettings
    ),
    // Our connection and the balanced transport against a grpc-go server (built from Debian's
    // Go packages by the tests themselves, from GoInterop/), compared with the stock transport;
    // the instance codecs against Go's encoding/json and etcd's grpc-go naming resolver.
    .testTarget(
      name: "GoInteropTests",
      dependencies: [
        "RegistryPrimitives",
        "Etcd",
        "EtcdHarness",
        "EtcdRegistry",
        "GRPCConnection",
        "GRPCRegistry",
        "RegistryCore",
        "RegistryTesting",
        "UserService",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        .product(name: "Logging", package: "swift-log"),
      ],
      swiftSettings: strictSettings
    ),
    // Everything that needs a real etcd process lives here.
    .testTarget(
      name: "EtcdIntegrationTests",
      dependencies: [
        "RegistryPrimitives",
        "EtcdHarness",
        "Etcd",
        "EtcdRegistry",
        "GRPCConnection",
        "GRPCRegistry",
        "RegistryCore",
        "RegistryTesting",
        "UserService",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "Metrics", package: "swift-metrics"),
        .product(name: "MetricsTestKit", package: "swift-metrics"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ],
      swiftSettings: strictSettings
    ),
  ]
)

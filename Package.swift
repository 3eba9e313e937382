// swift-tools-version: 6.0
import PackageDescription

// Modules depend one way: formats <- models <- surgery <- CLI.
let package = Package(
    name: "vffn-convert",
    products: [
        .executable(name: "vffn-convert", targets: ["vffn-convert"]),
        .library(name: "VFFN", targets: ["VFFNFormats", "VFFNModels", "VFFNSurgery", "VFFNText"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.0"),
        // `swift package generate-documentation` (make docs): DocC for the VFFN library.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(name: "COpenBLAS", path: "Sources/COpenBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        // zlib: CRC32 and deflate in .vffn containers and deflated zip entries of torch
        // checkpoints. json-c: the .vffn header.
        .systemLibrary(name: "CZlib", path: "Sources/CZlib", pkgConfig: "zlib",
                       providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CJSONC", path: "Sources/CJSONC", pkgConfig: "json-c",
                       providers: [.apt(["libjson-c-dev"])]),
        // copy_file_range, which Swift's Glibc module does not export.
        .target(name: "CSystem"),
        // bf16/f16 to f32 widening, vectorized per CPU (the forward pass decodes weights with it).
        .target(name: "CKernels"),
        .target(name: "VFFNFormats", dependencies: ["CZlib", "CJSONC", "CSystem", "CKernels"]),
        .target(name: "VFFNModels", dependencies: ["VFFNFormats", "COpenBLAS", "CKernels"]),
        // Checkpoints' own tokenizers (tokenizer.json, GGUF metadata), for text input.
        .target(name: "VFFNText", dependencies: ["VFFNFormats"]),
        // The transformers remote code that `convert --emit-modeling` writes, embedded in the binary.
        .target(name: "VFFNSurgery", dependencies: ["VFFNFormats", "VFFNModels"],
                resources: [.embedInCode("Resources/modeling_versatile_ffn.py")]),
        .executableTarget(
            name: "vffn-convert",
            dependencies: [
                "VFFNFormats", "VFFNModels", "VFFNSurgery", "VFFNText", "CSystem",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        // Fixture paths and comparison helpers shared by the test targets.
        .target(name: "TestSupport", dependencies: ["VFFNFormats"], path: "Tests/TestSupport"),
        .testTarget(name: "VFFNFormatsTests", dependencies: ["VFFNFormats", "TestSupport"]),
        .testTarget(name: "VFFNModelsTests", dependencies: ["VFFNModels", "TestSupport"]),
        .testTarget(name: "VFFNSurgeryTests", dependencies: ["VFFNSurgery", "VFFNModels", "TestSupport"]),
        .testTarget(name: "VFFNTextTests", dependencies: ["VFFNText", "TestSupport"]),
        .testTarget(name: "VFFNCLITests", dependencies: ["vffn-convert", "TestSupport"]),
    ]
)

// swift-tools-version: 6.0
// Two custom-surgery programs on the VFFN library, built by `make test`:
//   every-other-layer SRC DST   upcycles every other layer, with N by depth, and verifies it
//   calibrated-depth SRC DST    sets each depth predictor from its own statistics of the layer's inputs
import PackageDescription

let package = Package(
    name: "vffn-examples",
    dependencies: [.package(name: "vffn-convert", path: "..")],
    targets: [
        .executableTarget(name: "every-other-layer", dependencies: [.product(name: "VFFN", package: "vffn-convert")], path: "EveryOtherLayer"),
        .executableTarget(name: "calibrated-depth", dependencies: [.product(name: "VFFN", package: "vffn-convert")], path: "CalibratedDepth"),
    ]
)

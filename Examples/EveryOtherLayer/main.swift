// Upcycles every other layer of SRC (0, 2, 4, ...) and leaves the rest dense, with more
// sub-experts in the upper half, then verifies DST against SRC.
//
//     swift run --package-path Examples every-other-layer SRC DST
import Foundation
import VFFNFormats
import VFFNSurgery

let arguments = CommandLine.arguments
guard arguments.count == 3 else {
    FileHandle.standardError.write(Data("usage: every-other-layer SRC DST\n".utf8))
    exit(64)
}
func upcycleEveryOtherLayer(_ src: String, _ dst: String) throws(VFFNError) -> Bool {
    let source = try Checkpoint(path: src)
    let count = try UpcyclePlan(source: source, experts: 1, topK: 1, maxDepth: 1).layerPlans.count
    let plans: [LayerPlan?] = (0..<count).map { layer in
        guard layer % 2 == 0 else { return nil }
        // Lower half: 4 sub-experts; upper half: 8 (each must divide the FFN width).
        return LayerPlan(numExperts: layer < count / 2 ? 4 : 8, topK: 2, maxDepth: 3, routerInit: .centroid, depthInit: .shallow)
    }
    let plan = try UpcyclePlan(source: source, layers: plans, seed: 7)
    try plan.write(to: dst, force: true)
    let report = try Verifier.verify(destination: dst, source: src)
    print(report.table, terminator: "")
    return report.passed
}

do {
    exit(try upcycleEveryOtherLayer(arguments[1], arguments[2]) ? 0 : 1)
} catch {
    FileHandle.standardError.write(Data("every-other-layer: \(error)\n".utf8))
    exit(65)
}

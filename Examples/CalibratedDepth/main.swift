// Sets each layer's depth predictor from statistics this program computes itself: the mean
// direction u of what the layer's FFN receives on the calibration tokens. A token's logits are
// (j - (D-1)/2) * s (x . u) for depth j = 1...D, with s making the spread of x . u one unit, so
// tokens far along the mean direction take the deep path and tokens against it the shallow one.
//
//     swift run --package-path Examples calibrated-depth SRC DST
import Foundation
import VFFNFormats
import VFFNModels
import VFFNSurgery

struct MeanDirectionDepth: GateInitializing {
    var needsActivations: Bool { true }

    func gates(_ c: GateContext) throws(VFFNError) -> (expertGate: [Float]?, depthPredictor: [Float]?) {
        guard let x = c.ffnInputs, x.rows > 1 else { return (nil, nil) }
        let d = c.hiddenSize
        var mean = [Double](repeating: 0, count: d)
        for t in 0..<x.rows { for j in 0..<d { mean[j] += Double(x.data[t * d + j]) / Double(x.rows) } }
        let norm = mean.reduce(0) { $0 + $1 * $1 }.squareRoot()
        guard norm > 0 else { return (nil, nil) }
        let u = mean.map { $0 / norm }
        let projections = (0..<x.rows).map { t in (0..<d).reduce(0.0) { $0 + Double(x.data[t * d + $1]) * u[$1] } }
        let m = projections.reduce(0, +) / Double(projections.count)
        let spread = (projections.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(projections.count)).squareRoot()
        let s = spread > 0 ? 1 / spread : 1
        let D = c.plan.maxDepth
        var rows = [Float](repeating: 0, count: D * d)
        for j in 0..<D {
            let w = (Double(j) - Double(D - 1) / 2) * s
            for k in 0..<d { rows[j * d + k] = Float(w * u[k]) }
        }
        return (nil, rows)
    }
}

let arguments = CommandLine.arguments
guard arguments.count == 3 else {
    FileHandle.standardError.write(Data("usage: calibrated-depth SRC DST\n".utf8))
    exit(64)
}
func convertWithOwnDepth(_ src: String, _ dst: String) throws(VFFNError) {
    let source = try Checkpoint(path: src)
    let plan = try UpcyclePlan(source: source, experts: 4, topK: 2, maxDepth: 3, seed: 1,
                               options: GateOptions(routerInit: .centroid, initializer: MeanDirectionDepth()))
    try plan.write(to: dst, force: true)
    let model = try Architectures.load(Checkpoint(path: dst))
    let tokens = GateOptions.builtinCalibration(vocabSize: model.vocabSize, maxTokens: model.maxTokens, hiddenSize: model.hiddenSize)
    let quality = try StartQuality.measure(model, tokens: tokens, configPath: dst)
    print(quality.table, terminator: "")
}

do {
    try convertWithOwnDepth(arguments[1], arguments[2])
} catch {
    FileHandle.standardError.write(Data("calibrated-depth: \(error)\n".utf8))
    exit(65)
}

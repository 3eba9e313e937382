import Foundation
import VFFNFormats
import VFFNModels

/// How the router (`expert_gate`) starts.
public enum RouterInit: String, Sendable, CaseIterable {
    /// The paper's truncated normal.
    case random
    /// Row e points at sub-expert e's normalized centroid, so tokens go to the slices whose
    /// neurons respond most to them.
    case centroid
}

/// How the depth predictor starts.
public enum DepthInit: String, Sendable, CaseIterable {
    /// The paper's truncated normal.
    case random
    /// All zeros: every logit ties, and ties go to the lowest depth, so every token takes one loop.
    case shallow
    /// Fitted on the dense model's activations so that the depth histogram on calibration tokens
    /// is the one asked for.
    case calibrated
}

/// The gate-initialization choices of a conversion.
public struct GateOptions: Sendable {
    public var split: NeuronSplit
    public var routerInit: RouterInit
    public var depthInit: DepthInit
    /// Token ids for `calibrated` (default: `GateOptions.builtinCalibration`).
    public var calibrationTokens: [Int]?
    /// Fractions of calibration tokens at depth 1...D for `calibrated` (default: uniform).
    public var depthTarget: [Double]?
    /// The caller's own neuron order per layer (position p of the written FFN holds source neuron
    /// `order[p]`), in place of `split`'s; checked to be a permutation, recorded for `strip`, and
    /// proven function-preserving by `verify --source`.
    public var neuronOrders: [Int: [Int]]
    /// The caller's own gate values, asked for each upcycled layer after the built-in inits.
    public var initializer: (any GateInitializing)?

    public init(split: NeuronSplit = .contiguous, routerInit: RouterInit = .random, depthInit: DepthInit = .random,
                calibrationTokens: [Int]? = nil, depthTarget: [Double]? = nil, neuronOrders: [Int: [Int]] = [:],
                initializer: (any GateInitializing)? = nil) {
        self.split = split
        self.routerInit = routerInit
        self.depthInit = depthInit
        self.calibrationTokens = calibrationTokens
        self.depthTarget = depthTarget
        self.neuronOrders = neuronOrders
        self.initializer = initializer
    }

    public var needsModel: Bool { split == .cluster || routerInit == .centroid || depthInit == .calibrated }
}

/// A caller's gate initialization (custom surgery): for each upcycled layer, its expert_gate
/// `[N, d]` and depth_predictor `[D, d]` values, row-major, or nil to keep what the plan's
/// inits made. Sizes are checked.
public protocol GateInitializing: Sendable {
    /// Whether `gates` reads `GateContext.ffnInputs` (the dense model runs the calibration tokens once).
    var needsActivations: Bool { get }
    func gates(_ context: GateContext) throws(VFFNError) -> (expertGate: [Float]?, depthPredictor: [Float]?)
}

extension GateInitializing {
    public var needsActivations: Bool { false }
}

/// What a `GateInitializing` is told about one layer.
public struct GateContext: Sendable {
    public let layer: Int
    public let plan: LayerPlan
    public let hiddenSize: Int
    /// The values the plan's inits made.
    public let expertGate: [Float]
    public let depthPredictor: [Float]
    /// `[T, d]`: what this layer's FFN sub-layer receives in the dense model on the calibration
    /// tokens, when `needsActivations`.
    public let ffnInputs: Matrix?
}

extension GateOptions {

    /// Deterministic token ids spread over the vocabulary: 256, or fewer if the model has fewer
    /// positions or a narrower hidden size (with at most d tokens the calibration is exact).
    public static func builtinCalibration(vocabSize: Int, maxTokens: Int?, hiddenSize: Int) -> [Int] {
        var rng = Xoshiro256StarStar(seed: 0xCA11B, stream: 0)
        return (0..<min(256, maxTokens ?? 256, hiddenSize)).map { _ in Int(rng.next() % UInt64(vocabSize)) }
    }
}

/// The result of calibrating one layer's depth predictor.
public struct DepthCalibration: Sendable, Equatable {
    /// Tokens at depth 1...D on the calibration tokens, with the fitted predictor.
    public let histogram: [Int]
}

enum InformedInit {
    /// What each neuron responds to, in the coordinates of the sub-layer input x that the gates
    /// read: the input projection's rows, times the norm's weight when the FFN reads norm(x).
    static func neuronKeys(_ sublayer: FFNSublayer) -> Matrix {
        let w = sublayer.ffn.inputProjection
        var keys = Matrix(rows: w.outFeatures, cols: w.inFeatures, data: w.values)
        if sublayer.placement == .preNorm || sublayer.placement == .sandwich {
            let scale = sublayer.norm.scale
            for r in 0..<keys.rows { for c in 0..<keys.cols { keys.data[r * keys.cols + c] *= scale[c] } }
        }
        return keys
    }

    /// The row norm the paper's init gives a gate row of width d (std 0.02, truncated at 3 std,
    /// which keeps 98.7% of the std): logits of informed gates get the same spread.
    static func paperRowNorm(_ d: Int) -> Float { Float(GateInitializer.std * 0.98657 * Double(d).squareRoot()) }

    /// Row e: the normalized mean of slice e's normalized neuron keys, scaled to the paper's row norm.
    static func centroidRouter(keys: Matrix, experts n: Int) -> [Float] {
        let units = BalancedKMeans.normalizedRows(keys)
        let width = keys.rows / n, d = keys.cols
        var rows = [Float](repeating: 0, count: n * d)
        for e in 0..<n {
            for i in e * width..<(e + 1) * width { for c in 0..<d { rows[e * d + c] += units.data[i * d + c] } }
        }
        let normalized = BalancedKMeans.normalizedRows(Matrix(rows: n, cols: d, data: rows))
        let scale = paperRowNorm(d)
        return normalized.data.map { $0 * scale }
    }

    /// A depth predictor whose argmax sorts the calibration inputs `x` (`[T, d]`) into depths with
    /// the target histogram. The predictor has no bias, so the logits are built from two
    /// directions: `u`, fitted so that r = x·u is 1 on every calibration input (least squares,
    /// exact when T <= d), which lets multiples of u act as biases; and `v`, the inputs' principal
    /// direction of variation (s = x·v). Line l (depth l + 1) is `l·s + b_l·r = r·(l·ρ + b_l)`
    /// with ρ = s/r; with slopes 0 < 1 < ... < D-1 their upper envelope picks depth l + 1 exactly
    /// on (τ_l, τ_l+1], and the τ are the target quantiles of ρ.
    static func calibratedDepth(_ x: Matrix, target: [Double], rng: inout Xoshiro256StarStar) -> ([Float], DepthCalibration) {
        let T = x.rows, d = x.cols, D = target.count
        var mean = [Float](repeating: 0, count: d)
        for t in 0..<T { for c in 0..<d { mean[c] += x.data[t * d + c] / Float(T) } }
        let u = onesDirection(x), uHat = unit(u)
        // Power iteration on the centered inputs, seeded, for the direction of largest variance.
        var v = unit((0..<d).map { _ in Float(rng.truncatedNormal(limit: 3)) })
        for _ in 0..<50 {
            var next = [Float](repeating: 0, count: d)
            for t in 0..<T {
                var p: Float = 0
                for c in 0..<d { p += (x.data[t * d + c] - mean[c]) * v[c] }
                for c in 0..<d { next[c] += p * (x.data[t * d + c] - mean[c]) }
            }
            // Keep v orthogonal to u, so s and r measure different things.
            let along = zip(next, uHat).reduce(0) { $0 + $1.0 * $1.1 }
            v = unit(zip(next, uHat).map { $0 - along * $1 })
        }
        let rho = (0..<T).map { t -> Float in
            var s: Float = 0, r: Float = 0
            for c in 0..<d { s += x.data[t * d + c] * v[c]; r += x.data[t * d + c] * u[c] }
            return s / max(r, 1e-12)
        }
        let sorted = rho.sorted()
        var cumulative = 0.0
        var wanted: [Int] = []       // tokens at depth <= l, for l = 1..D-1
        var taus: [Float] = []
        for l in 1..<D {
            cumulative += target[l - 1]
            let k = min(max(Int((cumulative * Double(T)).rounded()), 0), T)
            wanted.append(k)
            taus.append(k == 0 ? sorted[0] - 1 : k == T ? sorted[T - 1] + 1 : (sorted[k - 1] + sorted[k]) / 2)
        }
        func rows(_ taus: [Float]) -> [Float] {
            var intercept: Float = 0
            var out = [Float](repeating: 0, count: D * d)
            for l in 0..<D {
                if l > 0 { intercept -= taus[l - 1] }
                for c in 0..<d { out[l * d + c] = Float(l) * v[c] + intercept * u[c] }
            }
            return out
        }
        // Exact when every r is positive (always when T <= d). Otherwise inputs with r <= 0 sort
        // the other way; move each threshold, in order, until the measured count below it is
        // the wanted one.
        if (0..<T).contains(where: { t in (0..<d).reduce(Float(0)) { $0 + x.data[t * d + $1] * u[$1] } <= 0 }) {
            let span = (sorted[T - 1] - sorted[0]) + 1
            for l in 0..<D - 1 {
                var low = (l > 0 ? taus[l - 1] : sorted[0] - span), high = sorted[T - 1] + span
                for _ in 0..<40 {
                    taus[l] = (low + high) / 2
                    let below = depthHistogram(x, predictor: rows(taus), depth: D)[0...l].reduce(0, +)
                    if below == wanted[l] { break }
                    if below < wanted[l] { low = taus[l] } else { high = taus[l] }
                }
                for m in (l + 1)..<(D - 1) where taus[m] < taus[l] { taus[m] = taus[l] }
            }
        }
        var predictor = rows(taus)
        // When some inputs project negatively on u the ratio is not monotone; sorting by angle
        // in the (u, v) plane may then do better. Keep whichever is closer to the target.
        let counts = wanted.enumerated().map { l, k in k - (l > 0 ? wanted[l - 1] : 0) } + [T - (wanted.last ?? 0)]
        func miss(_ p: [Float]) -> Int { zip(depthHistogram(x, predictor: p, depth: D), counts).reduce(0) { $0 + abs($1.0 - $1.1) } }
        if miss(predictor) > 0 {
            // Candidate planes: (u, v), and the inputs' two leading uncentered directions.
            let p1 = leadingDirection(x, orthogonalTo: [], rng: &rng)
            let p2 = leadingDirection(x, orthogonalTo: [p1], rng: &rng)
            for (e1, e2) in [(v, uHat), (p2, p1)] {
                if let angular = angularDepth(x, counts: counts, e1: e1, e2: e2), miss(angular) < miss(predictor) { predictor = angular }
            }
        }
        // Adding one vector to every row does not move an argmax either: subtract their mean,
        // which the thresholds' intercepts share, so that rounding the rows to bf16 (relative
        // 2^-9 of each value) does not swamp the differences between them that decide depths.
        for c in 0..<d {
            let m = (0..<D).reduce(Float(0)) { $0 + predictor[$1 * d + c] } / Float(D)
            for l in 0..<D { predictor[l * d + c] -= m }
        }
        // Scaling does not move an argmax; give the rows the paper's magnitude.
        let largest = (0..<D).map { l in (0..<d).reduce(Float(0)) { $0 + predictor[l * d + $1] * predictor[l * d + $1] }.squareRoot() }.max()!
        if largest > 0 { predictor = predictor.map { $0 * paperRowNorm(d) / largest } }
        return (predictor, DepthCalibration(histogram: depthHistogram(x, predictor: predictor, depth: D)))
    }

    /// Depths by angle: each input's direction in the plane of e2 (x-axis) and e1 (y-axis); the
    /// depths take consecutive arcs of the circle holding `counts` inputs, the wrap from depth D
    /// back to 1 lying in the widest empty arc. Bias-free linear logits can cut the plane into
    /// any such fan of convex arcs: row k is the vertex, between edges with outward normals at
    /// its two boundary angles, of the polygon circumscribed about the unit circle (the fan is
    /// that polygon's normal fan). Nil when an arc would span half a turn or more, or is empty.
    static func angularDepth(_ x: Matrix, counts: [Int], e1: [Float], e2: [Float]) -> [Float]? {
        let T = x.rows, d = x.cols, D = counts.count
        guard D >= 3, counts.allSatisfy({ $0 > 0 }) else { return nil }
        let theta = (0..<T).map { t -> Double in
            var a: Float = 0, b: Float = 0
            for c in 0..<d { a += x.data[t * d + c] * e1[c]; b += x.data[t * d + c] * e2[c] }
            return atan2(Double(a), Double(b))
        }
        let order = (0..<T).sorted { theta[$0] < theta[$1] }
        func gap(_ i: Int) -> Double {
            let next = theta[order[(i + 1) % T]] + (i + 1 == T ? 2 * Double.pi : 0)
            return next - theta[order[i]]
        }
        // Where the run of depths starts around the circle: every start is tried, and the one
        // whose widest arc is narrowest wins (every arc must stay under half a turn).
        func layout(_ start: Int) -> (boundaries: [Double], widest: Double) {
            var angles: [Double] = []
            for i in 0..<T {
                let j = (start + i) % T
                angles.append(theta[order[j]] + (j < start ? 2 * Double.pi : 0))
            }
            var boundaries: [Double] = []   // after depth k, for k = 0..<D-1; then the wrap
            var end = 0
            for k in 0..<D - 1 {
                end += counts[k]
                boundaries.append((angles[end - 1] + angles[end]) / 2)
            }
            boundaries.append(angles[T - 1] + gap((start + T - 1) % T) / 2)
            let arcs = (0..<D).map { k in boundaries[k] - (k == 0 ? boundaries[D - 1] - 2 * Double.pi : boundaries[k - 1]) }
            return (boundaries, arcs.contains { $0 <= 0 } ? .infinity : arcs.max()!)
        }
        let best = (0..<T).map(layout).min { $0.widest < $1.widest }!
        guard best.widest < Double.pi - 1e-6 else { return nil }
        let boundaries = best.boundaries
        var rows = [Float](repeating: 0, count: D * d)
        for k in 0..<D {
            let a = k == 0 ? boundaries[D - 1] : boundaries[k - 1], b = boundaries[k]
            // Solve [cos a, sin a; cos b, sin b] w = [1, 1].
            let det = cos(a) * sin(b) - sin(a) * cos(b)
            let wx = (sin(b) - sin(a)) / det, wy = (cos(a) - cos(b)) / det
            for c in 0..<d { rows[k * d + c] = Float(wx) * e2[c] + Float(wy) * e1[c] }
        }
        return rows
    }

    /// The unit direction of largest ⟨x, e⟩² over the inputs (uncentered), orthogonal to `others`.
    static func leadingDirection(_ x: Matrix, orthogonalTo others: [[Float]], rng: inout Xoshiro256StarStar) -> [Float] {
        let T = x.rows, d = x.cols
        var e = unit((0..<d).map { _ in Float(rng.truncatedNormal(limit: 3)) })
        for _ in 0..<50 {
            var next = [Float](repeating: 0, count: d)
            for t in 0..<T {
                var p: Float = 0
                for c in 0..<d { p += x.data[t * d + c] * e[c] }
                for c in 0..<d { next[c] += p * x.data[t * d + c] }
            }
            for o in others {
                let along = zip(next, o).reduce(0) { $0 + $1.0 * $1.1 }
                next = zip(next, o).map { $0 - along * $1 }
            }
            e = unit(next)
        }
        return e
    }

    /// Tokens at depth 1...D under a predictor (argmax + 1, ties to the lower depth).
    static func depthHistogram(_ x: Matrix, predictor: [Float], depth D: Int) -> [Int] {
        let logits = Linear(weight: predictor, outFeatures: D, inFeatures: x.cols)(x)
        var counts = [Int](repeating: 0, count: D)
        for t in 0..<x.rows {
            var best = 0
            for l in 1..<D where logits.data[t * D + l] > logits.data[t * D + best] { best = l }
            counts[best] += 1
        }
        return counts
    }

    /// The u minimizing |X u - 1|^2 + λ|u|^2 (λ tiny, for stability), in the smaller of its two
    /// forms: `X^T (X X^T + λI)^-1 1` when T <= d, else `(X^T X + λI)^-1 X^T 1`.
    static func onesDirection(_ x: Matrix) -> [Float] {
        let T = x.rows, d = x.cols
        func dot(_ a: Int, _ b: Int, tokens: Bool) -> Double {
            var s = 0.0
            if tokens { for c in 0..<d { s += Double(x.data[a * d + c]) * Double(x.data[b * d + c]) } }
            else { for t in 0..<T { s += Double(x.data[t * d + a]) * Double(x.data[t * d + b]) } }
            return s
        }
        let dual = T <= d
        let n = dual ? T : d
        var gram = [Double](repeating: 0, count: n * n)
        for i in 0..<n { for j in 0...i { let g = dot(i, j, tokens: dual); gram[i * n + j] = g; gram[j * n + i] = g } }
        let trace = (0..<n).reduce(0.0) { $0 + gram[$1 * n + $1] }
        for i in 0..<n { gram[i * n + i] += 1e-6 * trace / Double(n) + 1e-12 }
        var rhs = [Double](repeating: 1, count: n)
        if !dual { rhs = (0..<d).map { c in (0..<T).reduce(0.0) { $0 + Double(x.data[$1 * d + c]) } } }
        let solution = choleskySolve(gram, rhs, n: n)
        if !dual { return solution.map(Float.init) }
        var u = [Float](repeating: 0, count: d)
        for t in 0..<T { for c in 0..<d { u[c] += Float(solution[t]) * x.data[t * d + c] } }
        return u
    }

    /// Solves A y = b for a symmetric positive definite A (n x n, row-major).
    static func choleskySolve(_ a: [Double], _ b: [Double], n: Int) -> [Double] {
        var l = [Double](repeating: 0, count: n * n)
        for i in 0..<n {
            for j in 0...i {
                var s = a[i * n + j]
                for k in 0..<j { s -= l[i * n + k] * l[j * n + k] }
                l[i * n + j] = i == j ? max(s, 1e-300).squareRoot() : s / l[j * n + j]
            }
        }
        var y = b
        for i in 0..<n { for k in 0..<i { y[i] -= l[i * n + k] * y[k] }; y[i] /= l[i * n + i] }
        for i in stride(from: n - 1, through: 0, by: -1) { for k in (i + 1)..<n { y[i] -= l[k * n + i] * y[k] }; y[i] /= l[i * n + i] }
        return y
    }

    static func unit(_ v: [Float]) -> [Float] {
        let n = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
        return n > 0 ? v.map { $0 / n } : v
    }
}

import Foundation
import VFFNFormats

/// The `versatile_ffn` object of a converted checkpoint's config.json (SPEC section 2).
public struct VersatileFFNSettings: Equatable, Sendable {
    /// One upcycled layer: its gate tensors and, where they differ from the section's defaults,
    /// its own N, k and D. A layer without an entry stays dense.
    public struct GateTensors: Equatable, Sendable {
        public let layer: Int
        public let expertGate: String
        public let depthPredictor: String
        public let numExperts: Int?
        public let topK: Int?
        public let maxDepth: Int?

        public init(layer: Int, expertGate: String, depthPredictor: String, numExperts: Int? = nil, topK: Int? = nil, maxDepth: Int? = nil) {
            self.layer = layer
            self.expertGate = expertGate
            self.depthPredictor = depthPredictor
            self.numExperts = numExperts
            self.topK = topK
            self.maxDepth = maxDepth
        }
    }

    /// Layer `g`'s N, k and D.
    public func shape(of g: GateTensors) -> (numExperts: Int, topK: Int, maxDepth: Int) {
        (g.numExperts ?? numExperts, g.topK ?? topK, g.maxDepth ?? maxDepth)
    }

    /// Whether some layer is dense or has settings of its own (OLMo's config cannot say so).
    public func isUniform(layers: Int) -> Bool {
        gateTensors.count == layers && gateTensors.allSatisfy { shape(of: $0) == (numExperts, topK, maxDepth) }
    }

    public static let key = "versatile_ffn"

    public let numExperts: Int
    public let topK: Int
    public let maxDepth: Int
    public let expertSlicing: String
    public let gateTensors: [GateTensors]

    public init(numExperts: Int, topK: Int, maxDepth: Int, expertSlicing: String = "contiguous", gateTensors: [GateTensors]) {
        self.numExperts = numExperts
        self.topK = topK
        self.maxDepth = maxDepth
        self.expertSlicing = expertSlicing
        self.gateTensors = gateTensors
    }

    /// The largest loop count accepted. The paper uses a handful; every loop is a whole FFN pass
    /// per token and a [D, d] predictor per layer, so past this a setting is a typo, and it is
    /// refused before anything of that size is allocated.
    public static let maxDepthLimit = 256

    /// Legal settings that make a degenerate model, one line each.
    public static func warnings(experts: Int, topK: Int, maxDepth: Int) -> [String] {
        var out: [String] = []
        if experts == 1 { out.append("1 sub-expert: the width path is the dense FFN and the router has nothing to choose") }
        else if topK == experts { out.append("top-k \(topK) = \(experts) sub-experts: every token uses every slice, so the router only reweights them") }
        if maxDepth > 16 { out.append("max depth \(maxDepth): up to \(maxDepth) FFN passes per token, far beyond the paper's settings") }
        return out
    }

    /// Checks the settings against each other and an FFN of intermediate width `I`.
    public static func validate(experts: Int, topK: Int, maxDepth: Int, intermediateSize: Int) throws(VFFNError) {
        guard experts >= 1 else { throw .usage("--experts must be at least 1 (got \(experts))") }
        guard topK >= 1 else { throw .usage("--top-k must be at least 1 (got \(topK))") }
        guard topK <= experts else { throw .usage("--top-k \(topK) exceeds --experts \(experts)") }
        guard maxDepth >= 1 else { throw .usage("--max-depth must be at least 1 (got \(maxDepth))") }
        guard maxDepth <= maxDepthLimit else { throw .usage("--max-depth \(maxDepth) is more than \(maxDepthLimit) loops") }
        guard experts <= intermediateSize else {
            throw .usage("--experts \(experts) is more than the FFN's \(intermediateSize) neurons")
        }
        guard intermediateSize % experts == 0 else {
            throw .usage("--experts \(experts) does not divide the FFN intermediate size \(intermediateSize)")
        }
    }

    /// Reads the section from a config; nil when the checkpoint is a dense one.
    public static func read(from config: JSON, path: String) throws(VFFNError) -> VersatileFFNSettings? {
        guard let v = config[key] else { return nil }
        func int(_ k: String) throws(VFFNError) -> Int {
            guard let i = v[k]?.intValue else { throw .badInput(path, "\(key).\(k) is missing or not an integer") }
            return i
        }
        let n = try int("num_experts"), k = try int("top_k"), d = try int("max_depth")
        guard n >= 1, k >= 1, k <= n, d >= 1, d <= maxDepthLimit else {
            throw .badInput(path, "\(key) has num_experts \(n), top_k \(k), max_depth \(d); need 1 <= top_k <= num_experts and 1 <= max_depth <= \(maxDepthLimit)")
        }
        let slicing = v["expert_slicing"]?.stringValue ?? "contiguous"
        guard slicing == "contiguous" else { throw .badInput(path, "\(key).expert_slicing \"\(slicing)\" is not supported (only \"contiguous\")") }
        guard let entries = v["gate_tensors"]?.arrayValue else { throw .badInput(path, "\(key).gate_tensors is missing or not an array") }
        var gates: [GateTensors] = []
        for e in entries {
            guard let layer = e["layer"]?.intValue, let g = e["expert_gate"]?.stringValue, let p = e["depth_predictor"]?.stringValue else {
                throw .badInput(path, "\(key).gate_tensors entry \(e.compact) needs layer, expert_gate and depth_predictor")
            }
            func own(_ k: String) throws(VFFNError) -> Int? {
                guard let v = e[k], !v.isNull else { return nil }
                guard let i = v.intValue else { throw .badInput(path, "\(key).gate_tensors entry for layer \(layer): \(k) is not an integer") }
                return i
            }
            let entry = GateTensors(layer: layer, expertGate: g, depthPredictor: p, numExperts: try own("num_experts"), topK: try own("top_k"), maxDepth: try own("max_depth"))
            let (ln, lk, ld) = (entry.numExperts ?? n, entry.topK ?? k, entry.maxDepth ?? d)
            guard ln >= 1, lk >= 1, lk <= ln, ld >= 1, ld <= maxDepthLimit else {
                throw .badInput(path, "\(key).gate_tensors entry for layer \(layer) has num_experts \(ln), top_k \(lk), max_depth \(ld); need 1 <= top_k <= num_experts and 1 <= max_depth <= \(maxDepthLimit)")
            }
            gates.append(entry)
        }
        return VersatileFFNSettings(numExperts: n, topK: k, maxDepth: d, expertSlicing: slicing, gateTensors: gates)
    }

    public var json: JSON {
        .object([
            ("num_experts", .int(numExperts)), ("top_k", .int(topK)), ("max_depth", .int(maxDepth)),
            ("expert_slicing", .string(expertSlicing)),
            ("gate_tensors", .array(gateTensors.map { g in
                var m: [(String, JSON)] = [("layer", .int(g.layer)), ("expert_gate", .string(g.expertGate)), ("depth_predictor", .string(g.depthPredictor))]
                let (n, k, d) = shape(of: g)
                if n != numExperts { m.append(("num_experts", .int(n))) }
                if k != topK { m.append(("top_k", .int(k))) }
                if d != maxDepth { m.append(("max_depth", .int(d))) }
                return .object(m)
            })),
        ])
    }
}

/// Where each token went in one VersatileFFN layer.
public struct RoutingStats: Equatable, Sendable {
    /// Tokens per chosen loop count, index 0 for L = 1.
    public var depthCounts: [Int]
    /// Times each sub-expert was among a token's top-k.
    public var expertLoad: [Int]
    /// Each token's chosen loop count, in token order.
    public var tokenDepths: [Int] = []
}

/// How the FFN sub-layers run in a forward pass.
public enum FFNMode: Sendable, Equatable {
    /// The dense model: gates ignored.
    case dense
    /// SPEC section 1. `depthLimit` restricts the depth predictor to its first rows (loop counts
    /// 1...limit), which with 1 must reproduce the dense model exactly.
    case versatile(depthLimit: Int? = nil)
}

/// One layer's VersatileFFN block around a dense FFN sub-layer.
public struct VersatileFFNLayer: Sendable {
    public let sublayer: FFNSublayer
    public let expertGate: Linear       // [N, d]
    public let depthPredictor: Linear   // [D, d]
    public let topK: Int

    public init(sublayer: FFNSublayer, expertGate: Linear, depthPredictor: Linear, topK: Int) {
        precondition(topK >= 1 && topK <= expertGate.outFeatures)
        self.sublayer = sublayer
        self.expertGate = expertGate
        self.depthPredictor = depthPredictor
        self.topK = topK
    }

    public var numExperts: Int { expertGate.outFeatures }
    public var maxDepth: Int { depthPredictor.outFeatures }

    /// Top-k of one token's router logits, ties to the lower index, and the softmax over them.
    public static func route(_ logits: ArraySlice<Float>, k: Int) -> [(expert: Int, weight: Float)] {
        let base = logits.startIndex
        let chosen = logits.indices.sorted { (logits[$0], base - $0) > (logits[$1], base - $1) }.prefix(k).map { $0 - base }
        let top = chosen.map { logits[base + $0] }.max()!
        let exps = chosen.map { expf(logits[base + $0] - top) }
        let sum = exps.reduce(0, +)
        return zip(chosen, exps).map { ($0, $1 / sum) }
    }

    /// `L = argmax + 1` over the first `limit` depth logits, ties to the lower index.
    static func depth(_ logits: ArraySlice<Float>, limit: Int) -> Int {
        var best = logits.startIndex
        for i in logits.startIndex..<logits.startIndex + limit where logits[i] > logits[best] { best = i }
        return best - logits.startIndex + 1
    }

    public func callAsFunction(_ x: Matrix, depthLimit: Int? = nil) -> (Matrix, RoutingStats) {
        let T = x.rows, d = x.cols
        let D = min(depthLimit ?? maxDepth, maxDepth)
        let gateLogits = expertGate(x)
        let depthLogits = depthPredictor(x)
        var stats = RoutingStats(depthCounts: [Int](repeating: 0, count: maxDepth), expertLoad: [Int](repeating: 0, count: numExperts))

        // Loop 1 of the depth path runs the whole FFN on every token (each takes at least one
        // loop); its hidden activations hold every sub-expert's, so the width path only adds
        // each sub-expert's slice of the output projection on the tokens routed to it.
        let ffn = sublayer.ffn
        let activations = ffn.activations(sublayer.ffnInput(x))
        let width = ffn.intermediateSize / numExperts

        // Width path: gather every token routed to a sub-expert and project its slice once.
        var routes: [[(expert: Int, weight: Float)]] = []
        var members = [[(token: Int, slot: Int)]](repeating: [], count: numExperts)
        for t in 0..<T {
            let r = Self.route(gateLogits.row(t), k: topK)
            for (slot, choice) in r.enumerated() {
                members[choice.expert].append((t, slot))
                stats.expertLoad[choice.expert] += 1
            }
            routes.append(r)
        }
        // Each token's k sub-layer outputs, kept by slot so they are summed in top-k order.
        var expertOutputs = [Matrix](repeating: Matrix(zeros: T, d), count: topK)
        for e in 0..<numExperts where !members[e].isEmpty {
            let tokens = members[e].map(\.token)
            let slice = e * width..<(e + 1) * width
            let y = sublayer.combine(x.gather(tokens), ffn.project(activations.gather(tokens, columns: slice), neurons: slice))
            for (row, m) in members[e].enumerated() {
                expertOutputs[m.slot].data.replaceSubrange(m.token * d..<(m.token + 1) * d, with: y.row(row))
            }
        }
        var widthPath = Matrix(zeros: T, d)
        for t in 0..<T {
            for (slot, choice) in routes[t].enumerated() {
                for c in 0..<d { widthPath.data[t * d + c] += choice.weight * expertOutputs[slot].data[t * d + c] }
            }
        }

        // Depth path: loop l runs only on the tokens that chose at least l loops.
        let loops = (0..<T).map { Self.depth(depthLogits.row($0), limit: D) }
        for L in loops { stats.depthCounts[L - 1] += 1 }
        stats.tokenDepths = loops
        var current = sublayer.combine(x, ffn.project(activations, neurons: 0..<ffn.intermediateSize))
        var active = Array(0..<T)
        for l in stride(from: 2, through: loops.max() ?? 1, by: 1) {
            active = active.filter { loops[$0] >= l }
            if active.isEmpty { break }
            let y = sublayer(current.gather(active))
            for (row, t) in active.enumerated() {
                current.data.replaceSubrange(t * d..<(t + 1) * d, with: y.row(row))
            }
        }

        var out = Matrix(zeros: T, d)
        for t in 0..<T {
            let m = Float(D - loops[t]) / Float(D)
            for c in 0..<d {
                out.data[t * d + c] = (1 - m) * current.data[t * d + c] + m * widthPath.data[t * d + c]
            }
        }
        return (out, stats)
    }
}

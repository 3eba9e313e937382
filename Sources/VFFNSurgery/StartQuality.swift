import Foundation
import VFFNFormats
import VFFNModels

func num(_ x: Double) -> JSON { x.isFinite ? .number(String(format: "%.6g", x)) : .string(String(describing: x)) }

/// How far a converted model starts from its dense one, on the same tokens: at D > 1 no gate
/// initialization reproduces the dense function (even "one loop for every token" mixes in
/// (D-1)/D of the width path), so this is what a user weighs N, k, D and the init by.
public struct StartQuality: Sendable {
    /// Mean, median, 99th percentile and maximum of a per-token figure.
    public struct Spread: Sendable, Equatable {
        public let mean, median, p99, min, max: Double

        init(_ values: [Double]) {
            let s = values.sorted()
            func at(_ q: Double) -> Double { s.isEmpty ? 0 : s[Swift.min(s.count - 1, Int((q * Double(s.count - 1)).rounded()))] }
            mean = s.isEmpty ? 0 : s.reduce(0, +) / Double(s.count)
            median = at(0.5)
            p99 = at(0.99)
            min = s.first ?? 0
            max = s.last ?? 0
        }

        var json: JSON {
            .object([("mean", num(mean)), ("median", num(median)), ("p99", num(p99)), ("min", num(min)), ("max", num(max))])
        }
    }

    /// One layer's share of the distance, and where its tokens went.
    public struct Layer: Sendable {
        public let layer: Int
        /// |h_VersatileFFN - h_dense| / |h_dense| of the residual stream after the layer, over all tokens.
        public let residualChange: Double
        public let depthCounts: [Int]
        public let expertLoad: [Int]
        /// The share of the dense FFN output's energy the chosen top-k slices keep (NaN: dense layer).
        public let energyCaptured: Double
        /// Each token's chosen loop count.
        public let tokenDepths: [Int]
        /// A layer the conversion left dense: no gates, no routing.
        public var dense: Bool { depthCounts.isEmpty }
    }

    public let outputKind: OutputKind
    public let tokens: [Int]
    /// Causal LMs: mean next-token cross-entropy (nats) of the dense and converted models over the
    /// T-1 predictions the tokens allow.
    public let denseCrossEntropy: Double?
    public let versatileCrossEntropy: Double?
    /// Causal LMs: KL(dense || VersatileFFN) of the next-token distributions, per position (nats).
    public let kl: Spread?
    /// Causal LMs: the share of positions whose most likely next token is the same.
    public let top1Agreement: Double?
    /// Encoders: cosine similarity of the last hidden states, per token.
    public let tokenCosine: Spread?
    /// Encoders: cosine similarity of the mean-pooled last hidden states.
    public let pooledCosine: Double?
    public let layers: [Layer]
    /// The dense output's first (up to 8) rows: conversions of one source give the same.
    public let denseOutputHead: Matrix

    /// Runs `model` dense and as VersatileFFN on `tokens` (two traced forward passes) and
    /// compares them; the energy captured is measured at the inputs each layer's gates really get.
    public static func measure(_ model: any LanguageModel, tokens: [Int], configPath: String) throws(VFFNError) -> StartQuality {
        guard let versatileLayers = model.versatileLayers else {
            throw .badInput(configPath, "has no \"versatile_ffn\" section; not a converted checkpoint")
        }
        let dense = try model.forward(tokens, mode: .dense, trace: true)
        let versatile = try model.forward(tokens, mode: .versatile(), trace: true)
        let energy = versatileLayers.indices.map { i in versatileLayers[i].map { Statistics.energyCaptured($0, x: versatile.ffnInputs[i]) } ?? .nan }
        return compare(dense: dense, versatile: versatile, tokens: tokens, kind: model.outputKind, energy: energy)
    }

    /// The figures from two traced forward passes over the same tokens.
    public static func compare(dense: ForwardResult, versatile: ForwardResult, tokens: [Int], kind: OutputKind,
                               energy: [Double]? = nil) -> StartQuality {
        var layers: [Layer] = []
        for (i, r) in versatile.routing.enumerated() where i < dense.layerOutputs.count && i < versatile.layerOutputs.count {
            layers.append(Layer(layer: i, residualChange: relativeChange(dense.layerOutputs[i].data, versatile.layerOutputs[i].data),
                                depthCounts: r.depthCounts, expertLoad: r.expertLoad, energyCaptured: energy?[i] ?? .nan,
                                tokenDepths: r.tokenDepths))
        }
        let d = dense.output, v = versatile.output
        let head = Matrix(rows: min(8, d.rows), cols: d.cols, data: Array(d.data.prefix(min(8, d.rows) * d.cols)))
        switch kind {
        case .logits:
            var ceDense = 0.0, ceVersatile = 0.0, kls: [Double] = [], agree = 0
            for t in 0..<d.rows {
                let p = logSoftmax(d.row(t)), q = logSoftmax(v.row(t))
                var kl = 0.0
                for i in p.indices where p[i] > -80 { kl += exp(p[i]) * (p[i] - q[i]) }
                kls.append(max(0, kl))
                if argmax(p) == argmax(q) { agree += 1 }
                if t + 1 < tokens.count, tokens[t + 1] < p.count {
                    ceDense -= p[tokens[t + 1]]
                    ceVersatile -= q[tokens[t + 1]]
                }
            }
            let predictions = Double(max(0, d.rows - 1))
            return StartQuality(outputKind: kind, tokens: tokens,
                                denseCrossEntropy: predictions > 0 ? ceDense / predictions : nil,
                                versatileCrossEntropy: predictions > 0 ? ceVersatile / predictions : nil,
                                kl: Spread(kls), top1Agreement: d.rows > 0 ? Double(agree) / Double(d.rows) : nil,
                                tokenCosine: nil, pooledCosine: nil, layers: layers, denseOutputHead: head)
        case .hiddenStates:
            let cosines = (0..<d.rows).map { cosine(Array(d.row($0)), Array(v.row($0))) }
            var pd = [Double](repeating: 0, count: d.cols), pv = pd
            for t in 0..<d.rows {
                for c in 0..<d.cols { pd[c] += Double(d.data[t * d.cols + c]); pv[c] += Double(v.data[t * v.cols + c]) }
            }
            return StartQuality(outputKind: kind, tokens: tokens, denseCrossEntropy: nil, versatileCrossEntropy: nil, kl: nil,
                                top1Agreement: nil, tokenCosine: Spread(cosines), pooledCosine: cosine(pd, pv), layers: layers, denseOutputHead: head)
        }
    }

    static func logSoftmax(_ row: ArraySlice<Float>) -> [Double] {
        let m = Double(row.max() ?? 0)
        var sum = 0.0
        for x in row { sum += exp(Double(x) - m) }
        let log = m + Foundation.log(sum)
        return row.map { Double($0) - log }
    }

    static func argmax(_ x: [Double]) -> Int {
        var best = 0
        for i in x.indices where x[i] > x[best] { best = i }
        return best
    }

    static func cosine<T: BinaryFloatingPoint>(_ a: [T], _ b: [T]) -> Double {
        var ab = 0.0, aa = 0.0, bb = 0.0
        for i in a.indices { ab += Double(a[i]) * Double(b[i]); aa += Double(a[i]) * Double(a[i]); bb += Double(b[i]) * Double(b[i]) }
        return aa > 0 && bb > 0 ? ab / (aa * bb).squareRoot() : (aa == bb ? 1 : 0)
    }

    static func relativeChange(_ a: [Float], _ b: [Float]) -> Double {
        var diff = 0.0, norm = 0.0
        for i in a.indices { let x = Double(a[i]), y = Double(b[i]); diff += (y - x) * (y - x); norm += x * x }
        return norm > 0 ? (diff / norm).squareRoot() : 0
    }

    /// Every figure, for scripts (`stats --json`, `verify --json`).
    public var json: JSON {
        var m: [(String, JSON)] = [("tokens", .int(tokens.count)), ("output", .string(outputKind.rawValue))]
        if let a = denseCrossEntropy, let b = versatileCrossEntropy {
            m += [("dense_cross_entropy", num(a)), ("versatile_cross_entropy", num(b)),
                  ("dense_perplexity", num(exp(a))), ("versatile_perplexity", num(exp(b)))]
        }
        if let kl { m.append(("kl_dense_versatile", kl.json)) }
        if let top1Agreement { m.append(("top1_agreement", num(top1Agreement))) }
        if let tokenCosine { m.append(("token_cosine", tokenCosine.json)) }
        if let pooledCosine { m.append(("pooled_cosine", num(pooledCosine))) }
        if !meanEnergyCaptured.isNaN { m.append(("mean_energy_captured", num(meanEnergyCaptured))) }
        m.append(("layers", .array(layers.map { l in
            var o: [(String, JSON)] = [("layer", .int(l.layer)), ("residual_change", num(l.residualChange)),
                                       ("depth_histogram", .array(l.depthCounts.map { .int($0) })),
                                       ("expert_load", .array(l.expertLoad.map { .int($0) }))]
            if !l.energyCaptured.isNaN { o.append(("energy_captured", num(l.energyCaptured))) }
            return .object(o)
        })))
        return .object(m)
    }

    public var meanEnergyCaptured: Double {
        let e = layers.map(\.energyCaptured).filter { !$0.isNaN }
        return e.isEmpty ? .nan : e.reduce(0, +) / Double(e.count)
    }

    /// Each token's chosen loop count summed over the upcycled layers.
    public var totalDepths: [Int] {
        let upcycled = layers.filter { !$0.dense }
        guard let first = upcycled.first else { return [] }
        return (0..<first.tokenDepths.count).map { t in upcycled.reduce(0) { $0 + $1.tokenDepths[t] } }
    }
}

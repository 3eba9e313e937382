import Foundation
import VFFNFormats
import VFFNModels

/// What a converted checkpoint's gates do on some tokens, layer by layer (`vffn-convert stats`).
public struct LayerStatistics: Sendable, Equatable {
    public let layer: Int
    /// Tokens per chosen loop count, L = 1...D.
    public let depthCounts: [Int]
    /// Times each sub-expert was among a token's top-k.
    public let expertLoad: [Int]
    /// How well the width path's chosen slices reproduce the dense FFN: the mean over tokens of
    /// `1 - |f(h) - f_chosen(h)|^2 / |f(h)|^2`, where `f_chosen` keeps only the neurons of the
    /// top-k sub-experts (and the output bias). 1 means nothing is lost; top-k of N random slices
    /// keeps about k/N of the neurons.
    public let energyCaptured: Double
}

/// What a converted checkpoint's gates do on some tokens, per layer (the older, single-model part of `stats`).
public enum Statistics {
    /// Runs the converted model (VersatileFFN semantics) on `tokens` and measures every layer at
    /// the inputs it really receives.
    public static func compute(_ checkpoint: Checkpoint, tokens: [Int]) throws(VFFNError) -> [LayerStatistics] {
        try compute(Architectures.load(checkpoint), tokens: tokens, configPath: checkpoint.configPath)
    }

    /// The same for a model already loaded.
    public static func compute(_ model: any LanguageModel, tokens: [Int], configPath: String) throws(VFFNError) -> [LayerStatistics] {
        guard let layers = model.versatileLayers else {
            throw .badInput(configPath, "has no \"versatile_ffn\" section; not a converted checkpoint")
        }
        let result = try model.forward(tokens, mode: .versatile(), trace: true)
        return layers.enumerated().compactMap { i, block in
            block.map { layer in
                LayerStatistics(layer: i, depthCounts: result.routing[i].depthCounts, expertLoad: result.routing[i].expertLoad,
                                energyCaptured: energyCaptured(layer, x: result.ffnInputs[i]))
            }
        }
    }

    static func energyCaptured(_ layer: VersatileFFNLayer, x: Matrix) -> Double {
        let f = layer.sublayer.ffn, n = layer.numExperts, d = x.cols
        // The activations once: each slice's output is its columns' share of the projection,
        // as the width path computes it (an FFN's cost, not two).
        let a = f.activations(layer.sublayer.ffnInput(x))
        let dense = f.project(a, neurons: 0..<f.intermediateSize)
        let bias = f.outputBias ?? [Float](repeating: 0, count: d)
        let width = f.intermediateSize / n, rows = Array(0..<x.rows)
        // Each slice's own contribution, without the shared output bias.
        let slices = (0..<n).map { e -> Matrix in
            let neurons = e * width..<(e + 1) * width
            var y = f.project(a.gather(rows, columns: neurons), neurons: neurons)
            for t in 0..<y.rows { for c in 0..<d { y.data[t * d + c] -= bias[c] } }
            return y
        }
        let logits = layer.expertGate(x)
        var total = 0.0
        for t in 0..<x.rows {
            let chosen = VersatileFFNLayer.route(logits.row(t), k: layer.topK).map(\.expert)
            var err = 0.0, energy = 0.0
            for c in 0..<d {
                var kept = Double(bias[c])
                for e in chosen { kept += Double(slices[e].data[t * d + c]) }
                let full = Double(dense.data[t * d + c])
                err += (full - kept) * (full - kept)
                energy += full * full
            }
            total += energy > 0 ? 1 - err / energy : 1
        }
        return total / Double(max(x.rows, 1))
    }
}

extension Array where Element == LayerStatistics {
    /// The per-layer table `stats` prints.
    public var table: String {
        let depth = first.map { "depth histogram L=1..\($0.depthCounts.count)" } ?? "depth histogram"
        let out = textTable(["layer", depth, "sub-expert load", "energy captured"], map { s in
            [String(s.layer), s.depthCounts.map(String.init).joined(separator: " "),
             s.expertLoad.map(String.init).joined(separator: " "), String(format: "%.3f", s.energyCaptured)]
        })
        let mean = isEmpty ? 0 : map(\.energyCaptured).reduce(0, +) / Double(count)
        return out + "  mean energy captured: " + String(format: "%.3f", mean) + "\n"
    }

    public var json: JSON {
        .object([("layers", .array(map { s in
            .object([("layer", .int(s.layer)), ("depth_histogram", .array(s.depthCounts.map { .int($0) })),
                     ("expert_load", .array(s.expertLoad.map { .int($0) })),
                     ("energy_captured", .number(String(format: "%.6f", s.energyCaptured)))])
        }))])
    }
}

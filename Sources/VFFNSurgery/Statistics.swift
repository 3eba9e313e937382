import Foundation
import VFFNFormats
import VFFNModels

/// What the gates' chosen slices keep of the dense FFN (`StartQuality`'s per-layer energy).
enum Statistics {
    /// How well the width path's chosen slices reproduce the dense FFN: the mean over tokens of
    /// `1 - |f(h) - f_chosen(h)|^2 / |f(h)|^2`, where `f_chosen` keeps only the neurons of the
    /// top-k sub-experts (and the output bias). 1 means nothing is lost; top-k of N random slices
    /// keeps about k/N of the neurons.
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

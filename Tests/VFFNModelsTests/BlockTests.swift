import Foundation
import Testing
import VFFNFormats
@testable import VFFNModels

/// Hand-computed cases of the kernels and of SPEC section 1.
@Suite struct BlockTests {
    @Test func routingTakesTopKWithTiesToTheLowerIndex() {
        let r = VersatileFFNLayer.route([0.5, 2.0, 2.0, -1], k: 2)
        #expect(r.map(\.expert) == [1, 2])
        #expect(r.map(\.weight) == [0.5, 0.5])
        let s = VersatileFFNLayer.route([3, 1, 2], k: 2)
        #expect(s.map(\.expert) == [0, 2])
        #expect(abs(s[0].weight - 0.7310586) < 1e-6 && abs(s[1].weight - 0.2689414) < 1e-6)
        #expect(VersatileFFNLayer.route([1, 2, 3], k: 1).map(\.weight) == [1])
    }

    @Test func depthIsArgmaxPlusOneWithinTheLimit() {
        #expect(VersatileFFNLayer.depth([1, 3, 3, 0], limit: 4) == 2)
        #expect(VersatileFFNLayer.depth([1, 3, 3, 9], limit: 3) == 2)
        #expect(VersatileFFNLayer.depth([1, 3, 3, 9], limit: 1) == 1)
        #expect(VersatileFFNLayer.depth([-1, -1, 5, 9][1...], limit: 3) == 3)
    }

    @Test func rmsNormByHand() {
        let y = Norm.rms(weight: [1, 2], eps: 0)(Matrix(rows: 1, cols: 2, data: [3, 4]))
        // mean(x^2) = 12.5; x / sqrt(12.5) = [0.848528, 1.131371]; times the weight.
        #expect(abs(y.data[0] - 0.8485281) < 1e-6 && abs(y.data[1] - 2.2627417) < 1e-6)
    }

    @Test func linearViewsSliceRowsAndColumnsWithoutCopying() {
        // W = [[1,2,3],[4,5,6]], b = [10, 20]; x = [1, 1, 1] and [0, 1, 2].
        let w = Linear(weight: [1, 2, 3, 4, 5, 6], outFeatures: 2, inFeatures: 3, bias: [10, 20])
        let x = Matrix(rows: 2, cols: 3, data: [1, 1, 1, 0, 1, 2])
        #expect(w(x).data == [16, 35, 18, 37])
        #expect(w.rows(1..<2)(x).data == [35, 37])
        // Columns 1..<3 read x's two features against W[:, 1:3]; the bias stays whole.
        let c = w.columns(1..<3)
        #expect(c(Matrix(rows: 1, cols: 2, data: [1, 2])).data == [18, 37])
        #expect(c.rows(0..<1)(Matrix(rows: 1, cols: 2, data: [1, 2])).data == [18])
        #expect(w(x, includeBias: false).data == [6, 15, 8, 17])
    }

    /// Mapped F16/BF16 weights are decoded in blocks of rows; mapped F32 is read in place when
    /// aligned and decoded when not. Every path must give what decoded floats give.
    @Test func mappedWeightsMatchDecodedFloats() {
        final class Owner { let bytes: [UInt8]; init(_ b: [UInt8]) { bytes = b } }
        let rows = Linear.decodeBlock / 64 + 3, cols = 64
        var rng = SystemRandomNumberGenerator()
        let values = (0..<rows * cols).map { _ in Float.random(in: -1...1, using: &rng) }
        let x = Matrix(rows: 2, cols: cols, data: (0..<2 * cols).map { Float($0) / 7 - 2 })
        for (dtype, shift) in [(DType.BF16, 0), (.F16, 0), (.F32, 0), (.F32, 1)] {
            let owner = Owner([UInt8](repeating: 0, count: shift) + FloatCodec.encode(values, as: dtype))
            let bytes = owner.bytes.withUnsafeBytes { UnsafeRawBufferPointer(rebasing: $0[shift...]) }
            let mapped = Linear(mapped: bytes, dtype: dtype, owner: owner, outFeatures: rows, inFeatures: cols, bias: nil)
            let decoded = Linear(weight: FloatCodec.decode(bytes, as: dtype), outFeatures: rows, inFeatures: cols)
            #expect(mapped.values == decoded.values)
            for (a, b) in [(mapped, decoded), (mapped.rows(5..<rows - 1), decoded.rows(5..<rows - 1)),
                           (mapped.columns(3..<11).rows(rows - 20..<rows), decoded.columns(3..<11).rows(rows - 20..<rows))] {
                let input = Matrix(rows: 2, cols: a.inFeatures, data: Array(x.data.prefix(2 * a.inFeatures)))
                let ya = a(input), yb = b(input)
                #expect(ya.maxAbsDifference(yb) <= 1e-6 * max(1, yb.maxAbs), "\(dtype) shift \(shift)")
            }
            #expect(mapped.row(rows - 1) == Array(decoded.values.suffix(cols)))
        }
    }

    /// A SwiGLU FFN with d = 3, I = 4, biases everywhere, deterministic small values.
    static func ffn(bias: Bool) -> GatedFeedForward {
        func values(_ n: Int, _ k: Float) -> [Float] { (0..<n).map { sinf(Float($0) * k + 0.3) } }
        return GatedFeedForward(
            gate: Linear(weight: values(12, 1.1), outFeatures: 4, inFeatures: 3, bias: bias ? values(4, 0.7) : nil),
            up: Linear(weight: values(12, 0.9), outFeatures: 4, inFeatures: 3, bias: bias ? values(4, 1.3) : nil),
            down: Linear(weight: values(12, 0.5), outFeatures: 3, inFeatures: 4, bias: bias ? [0.25, -0.5, 1] : nil))
    }

    @Test func subExpertsPartitionTheFFNUpToTheSharedOutputBias() {
        let h = Matrix(rows: 2, cols: 3, data: [0.5, -1, 2, 1.5, 0.25, -0.75])
        for bias in [false, true] {
            let f = Self.ffn(bias: bias)
            let whole = f(h)
            let sum = f.subExpert(0, of: 2)(h) + f.subExpert(1, of: 2)(h)
            let b: [Float] = bias ? [0.25, -0.5, 1] : [0, 0, 0]
            for r in 0..<2 {
                for c in 0..<3 { #expect(abs(sum.data[r * 3 + c] - b[c] - whole.data[r * 3 + c]) < 1e-6) }
            }
        }
        // Sub-expert 1 of 2 is exactly neurons 2 and 3: silu(gate) * up through down's columns 2, 3.
        let f = Self.ffn(bias: false)
        let x: [Float] = [0.5, -1, 2]
        var expected: [Float] = [0, 0, 0]
        for n in 2..<4 {
            let g = (0..<3).reduce(Float(0)) { $0 + f.gate.values[n * 3 + $1] * x[$1] }
            let u = (0..<3).reduce(Float(0)) { $0 + f.up.values[n * 3 + $1] * x[$1] }
            let a = g / (1 + expf(-g)) * u
            for o in 0..<3 { expected[o] += f.down.values[o * 4 + n] * a }
        }
        let got = f.subExpert(1, of: 2)(Matrix(rows: 1, cols: 3, data: x)).data
        for o in 0..<3 { #expect(abs(got[o] - expected[o]) < 1e-6) }
    }

    @Test func blockMixesDepthAndWidthAsSpecified() {
        let sub = FFNSublayer(placement: .preNorm, norm: .rms(weight: [1, 0.5, 2], eps: 1e-6), ffn: Self.ffn(bias: true))
        // Router logits [x1, 2 x1]: top-2 of 2, so both experts, softmax-weighted. Depth logits
        // [x2, 0, x0]: L = 3 for token 0 and L = 1 for token 1 (D = 3).
        let gate = Linear(weight: [0, 1, 0, 0, 2, 0], outFeatures: 2, inFeatures: 3)
        let depth = Linear(weight: [0, 0, 1, 0, 0, 0, 1, 0, 0], outFeatures: 3, inFeatures: 3)
        let block = VersatileFFNLayer(sublayer: sub, expertGate: gate, depthPredictor: depth, topK: 2)
        let x = Matrix(rows: 2, cols: 3, data: [2, 0.5, 0.1, -1, 0.2, 0.3])
        let (out, stats) = block(x)
        #expect(stats.depthCounts == [1, 0, 1])
        #expect(stats.expertLoad == [2, 2])

        for t in 0..<2 {
            let xt = Matrix(rows: 1, cols: 3, data: Array(x.row(t)))
            let gl = [(0..<3).reduce(Float(0)) { $0 + gate.values[$1] * xt.data[$1] }, (0..<3).reduce(Float(0)) { $0 + gate.values[3 + $1] * xt.data[$1] }]
            let e0 = expf(gl[0]), e1 = expf(gl[1])
            let width = sub.apply(sub.ffn.subExpert(0, of: 2), to: xt).data.enumerated().map { $1 * e0 / (e0 + e1) }
            let width1 = sub.apply(sub.ffn.subExpert(1, of: 2), to: xt).data.map { $0 * e1 / (e0 + e1) }
            let L = t == 0 ? 3 : 1
            var deep = xt
            for _ in 0..<L { deep = sub(deep) }
            let m = Float(3 - L) / 3
            for c in 0..<3 {
                let expected = (1 - m) * deep.data[c] + m * (width[c] + width1[c])
                #expect(abs(out.data[t * 3 + c] - expected) < 1e-5, "token \(t) feature \(c)")
            }
        }
        // With the depth limited to 1 the block is the dense sub-layer, bit for bit.
        #expect(block(x, depthLimit: 1).0.data == sub(x).data)
    }
}

import Foundation
import Testing
import TestSupport
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

    /// A GGUF's Q8_0 matrices and permuted q/k rows run in place: every view of them (a
    /// sub-expert's columns, which start and end inside Q8_0 blocks; rows; products) gives what
    /// the dequantized, un-permuted bytes give.
    @Test(arguments: ["gguf/llama-gqa-q8_0.gguf", "gguf/llama-gqa-f32.gguf"])
    func storedMatricesReadAsTheirDecodedBytes(file path: String) throws {
        let file = try TensorFileFormat.open(path: Fixtures.path(path))
        var inPlace = 0
        for info in file.tensors where info.shape.count == 2 {
            guard let stored = try file.storedMatrix(info) else { continue }
            inPlace += 1
            let (out, inputs) = (info.shape[0], info.shape[1])
            let a = Linear(stored: stored, outFeatures: out, inFeatures: inputs)
            let decoded = FloatCodec.decode(try file.bytes(info), as: info.dtype)
            let b = Linear(weight: decoded, outFeatures: out, inFeatures: inputs)
            #expect(a.values == decoded, "\(info.name)")
            #expect(a.rows(3..<out - 2).columns(5..<inputs - 7).values == b.rows(3..<out - 2).columns(5..<inputs - 7).values, "\(info.name)")
            let x = Matrix(rows: 3, cols: inputs, data: (0..<3 * inputs).map { Float(($0 * 37) % 11) - 5 })
            #expect(a(x).data == b(x).data, "\(info.name)")
        }
        #expect(inPlace >= 2 * 2, "\(path): \(inPlace) matrices read in place")
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

    /// Mapped F16 weights are decoded in blocks of rows, BF16 ones read by the AVX-512 kernel
    /// (where the CPU has it) at any byte alignment, over full 4 x 4 tiles and edges, with the
    /// features split among threads; mapped F32 is read in place when aligned and decoded when
    /// not. Every path must give what decoded floats give.
    @Test func mappedWeightsMatchDecodedFloats() {
        final class Owner { let bytes: [UInt8]; init(_ b: [UInt8]) { bytes = b } }
        let rows = Linear.decodeBlock / 64 + 3, cols = 64
        var rng = SystemRandomNumberGenerator()
        let values = (0..<rows * cols).map { _ in Float.random(in: -1...1, using: &rng) }
        let tokens = 9
        let x = Matrix(rows: tokens, cols: cols, data: (0..<tokens * cols).map { Float($0 % 97) / 7 - 6 })
        for (dtype, shift) in [(DType.BF16, 0), (.BF16, 1), (.F16, 0), (.F32, 0), (.F32, 1)] {
            let owner = Owner([UInt8](repeating: 0, count: shift) + FloatCodec.encode(values, as: dtype))
            let bytes = owner.bytes.withUnsafeBytes { UnsafeRawBufferPointer(rebasing: $0[shift...]) }
            let mapped = Linear(mapped: bytes, dtype: dtype, owner: owner, outFeatures: rows, inFeatures: cols, bias: nil)
            let decoded = Linear(weight: FloatCodec.decode(bytes, as: dtype), outFeatures: rows, inFeatures: cols)
            #expect(mapped.values == decoded.values)
            for (a, b) in [(mapped, decoded), (mapped.rows(5..<rows - 1), decoded.rows(5..<rows - 1)),
                           (mapped.columns(3..<11).rows(rows - 20..<rows), decoded.columns(3..<11).rows(rows - 20..<rows)),
                           (mapped.columns(5..<42).rows(1..<rows - 2), decoded.columns(5..<42).rows(1..<rows - 2))] {
                let input = Matrix(rows: tokens, cols: a.inFeatures, data: Array(x.data.prefix(tokens * a.inFeatures)))
                let ya = a(input), yb = b(input)
                #expect(ya.maxAbsDifference(yb) <= 1e-6 * max(1, yb.maxAbs), "\(dtype) shift \(shift)")
            }
            #expect(mapped.row(rows - 1) == Array(decoded.values.suffix(cols)))
        }
    }

    /// Each token's output does not depend on which others share its product, to the bit: the
    /// bf16 kernel's 4 x 6 tiles, the 4 x 4 tiles and the edges after them, and the per-token
    /// edge tiles all sum an output the same way (so a depth loop over a few tokens gives what
    /// the whole sequence would).
    @Test func bf16ProductsDoNotDependOnTheTokensBesideThem() {
        final class Owner { let bytes: [UInt8]; init(_ b: [UInt8]) { bytes = b } }
        let rows = 23, cols = 53
        let values = (0..<rows * cols).map { Float(($0 * 7919) % 1000) / 500 - 1 }
        let owner = Owner(FloatCodec.encode(values, as: .BF16))
        let bytes = owner.bytes.withUnsafeBytes { $0 }
        let w = Linear(mapped: bytes, dtype: .BF16, owner: owner, outFeatures: rows, inFeatures: cols)
        let all = Matrix(rows: 13, cols: cols, data: (0..<13 * cols).map { Float(($0 * 31) % 17) / 8 - 1 })
        let alone = (0..<13).map { t in w(all.gather([t])).data }
        for tokens in 1...13 {
            let y = w(all.gather(Array(0..<tokens)))
            for t in 0..<tokens { #expect(Array(y.row(t)) == alone[t], "token \(t) of \(tokens)") }
        }
    }

    /// A product's result does not depend on how many threads split it, to the bit (the bf16
    /// kernel's edge tiles sum as its full tiles do): --threads never changes a number.
    @Test func productsDoNotDependOnTheThreadCount() {
        final class Owner { let bytes: [UInt8]; init(_ b: [UInt8]) { bytes = b } }
        let rows = 4099, cols = 37   // neither a multiple of 4 nor of 16
        let values = (0..<rows * cols).map { Float(($0 * 7919) % 1000) / 500 - 1 }
        let x = Matrix(rows: 7, cols: cols, data: (0..<7 * cols).map { Float(($0 * 31) % 17) / 8 - 1 })
        let before = ComputeThreads.count
        defer { ComputeThreads.set(before) }
        for dtype in [DType.BF16, .F16, .F32] {
            let owner = Owner(FloatCodec.encode(values, as: dtype))
            let bytes = owner.bytes.withUnsafeBytes { $0 }
            let w = Linear(mapped: bytes, dtype: dtype, owner: owner, outFeatures: rows, inFeatures: cols)
            var outputs: [[Float]] = []
            for threads in [1, 2, 3] {
                ComputeThreads.set(threads)
                outputs.append(w(x).data)
            }
            #expect(outputs[0] == outputs[1] && outputs[1] == outputs[2], "\(dtype)")
        }
        // GPT-2's Conv1D layout sums over blocks of input rows; wide enough that a thread's part
        // alone would be summed in fewer, larger blocks.
        let (inputs, outputs) = (2000, 3000)
        let conv = (0..<inputs * outputs).map { Float(($0 * 7919) % 1000) / 500 - 1 }
        let h = Matrix(rows: 3, cols: inputs, data: (0..<3 * inputs).map { Float(($0 * 31) % 17) / 8 - 1 })
        for dtype in [DType.BF16, .F16] {
            let owner = Owner(FloatCodec.encode(conv, as: dtype))
            let bytes = owner.bytes.withUnsafeBytes { $0 }
            let w = Linear(mapped: bytes, dtype: dtype, owner: owner, outFeatures: outputs, inFeatures: inputs, transposed: true)
            var results: [[Float]] = []
            for threads in [1, 2] {
                ComputeThreads.set(threads)
                results.append(w(h).data)
            }
            #expect(results[0] == results[1], "transposed \(dtype)")
        }
    }

    @Test func layerNormByHand() {
        // x = [1, 2, 3, 6]: mean 3, biased variance 3.5, so (x - 3) / sqrt(3.5).
        let y = Norm.layer(weight: [1, 2, 1, 1], bias: [0, 0, 1, -1], eps: 0)(Matrix(rows: 1, cols: 4, data: [1, 2, 3, 6]))
        let s = 1 / Float(3.5).squareRoot()
        let expected: [Float] = [-2 * s, -2 * s, 1, 3 * s - 1]
        for i in 0..<4 { #expect(abs(y.data[i] - expected[i]) < 1e-6, "\(i)") }
        // eps counts: a constant row normalizes to the bias, not to NaN.
        #expect(Norm.layer(weight: [1, 1], bias: [0.5, -0.5], eps: 1e-12)(Matrix(rows: 1, cols: 2, data: [7, 7])).data == [0.5, -0.5])
    }

    @Test func activationsByHand() {
        // Exact GELU: x * Phi(x); the tanh form differs in the fourth decimal at x = 1.
        #expect(abs(Activation.gelu(1) - 0.8413447) < 1e-6)
        #expect(abs(Activation.gelu(-2) - -0.0455003) < 1e-6)
        #expect(abs(Activation.geluTanh(1) - 0.8411920) < 1e-6)
        #expect(abs(Activation.geluTanh(-2) - -0.0454023) < 1e-6)
        #expect(Activation.relu(-3) == 0 && Activation.relu(2.5) == 2.5)
        #expect(Activation(huggingFaceName: "gelu_pytorch_tanh") == .geluTanh)
        #expect(Activation(huggingFaceName: "gelu") == .gelu)
        #expect(Activation(huggingFaceName: "quick_gelu") == nil)
    }

    /// GPT-2's Conv1D stores W as [in, out]: a transposed view must compute what the [out, in]
    /// view of the same matrix computes, for every slice and every storage path, including F16
    /// decoded in several blocks of input rows that are accumulated into the output.
    @Test func conv1DLayoutMatchesTheLinearLayout() {
        final class Owner { let bytes: [UInt8]; init(_ b: [UInt8]) { bytes = b } }
        let inputs = Linear.decodeBlock / 48 + 5, outputs = 48
        var rng = SystemRandomNumberGenerator()
        let stored = (0..<inputs * outputs).map { _ in Float.random(in: -1...1, using: &rng) }   // [in, out]
        var outIn = [Float](repeating: 0, count: inputs * outputs)
        for i in 0..<inputs { for o in 0..<outputs { outIn[o * inputs + i] = stored[i * outputs + o] } }
        let bias = (0..<outputs).map { Float($0) / 10 }
        let reference = Linear(weight: outIn, outFeatures: outputs, inFeatures: inputs, bias: bias)
        let x = Matrix(rows: 3, cols: inputs, data: (0..<3 * inputs).map { _ in Float.random(in: -1...1, using: &rng) })
        for dtype in [DType.F32, .F16] {
            let owner = Owner(FloatCodec.encode(stored, as: dtype))
            let bytes = owner.bytes.withUnsafeBytes { $0 }
            let conv = Linear(mapped: bytes, dtype: dtype, owner: owner, outFeatures: outputs, inFeatures: inputs, bias: bias, transposed: true)
            let ref = dtype == .F32 ? reference : Linear(weight: Linear(weight: FloatCodec.decode(bytes, as: .F16), outFeatures: outputs,
                                                                         inFeatures: inputs, transposed: true).values,
                                                         outFeatures: outputs, inFeatures: inputs, bias: bias)
            #expect(conv.values == ref.values)
            #expect(conv.row(7) == ref.row(7))
            for (a, b) in [(conv, ref), (conv.rows(8..<24), ref.rows(8..<24)), (conv.columns(100..<inputs - 3).rows(40..<48), ref.columns(100..<inputs - 3).rows(40..<48))] {
                let input = Matrix(rows: 3, cols: a.inFeatures, data: (0..<3).flatMap { x.row($0).prefix(a.inFeatures) })
                let ya = a(input), yb = b(input)
                #expect(ya.maxAbsDifference(yb) <= 1e-5 * max(1, yb.maxAbs), "\(dtype)")
            }
        }
    }

    @Test func ungatedSubExpertsPartitionTheFFNUpToTheOutputBias() {
        // d = 2, I = 4, Conv1D layout for the input projection as in GPT-2.
        let input = Linear(weight: [0.5, -1, 0.25, 2, 1, 0.5, -0.5, 0.75], outFeatures: 4, inFeatures: 2, bias: [0.1, -0.2, 0.3, 0], transposed: true)
        let output = Linear(weight: [1, 0, -1, 2, 0.5, 0.5, 1, -1], outFeatures: 2, inFeatures: 4, bias: [3, -3])
        let f = UngatedFeedForward(input: input, output: output, activation: .gelu)
        let h = Matrix(rows: 1, cols: 2, data: [1, -0.5])
        // Neuron n reads column n of the [in, out] input weight.
        let pre: [Float] = (0..<4).map { n in 1 * input.values[n * 2] - 0.5 * input.values[n * 2 + 1] + input.bias![n] }
        #expect(abs(pre[0] - (0.5 * 1 + 1 * -0.5 + 0.1)) < 1e-7)
        let a = pre.map { Activation.gelu($0) }
        let e1 = f.subExpert(1, of: 2)(h).data
        for o in 0..<2 {
            let expected = output.values[o * 4 + 2] * a[2] + output.values[o * 4 + 3] * a[3] + output.bias![o]
            #expect(abs(e1[o] - expected) < 1e-6)
        }
        let sum = f.subExpert(0, of: 2)(h) + f.subExpert(1, of: 2)(h)
        let whole = f(h)
        for o in 0..<2 { #expect(abs(sum.data[o] - output.bias![o] - whole.data[o]) < 1e-6) }
    }

    @Test func postNormSublayerIsNormOfResidualPlusFFN() {
        let f = UngatedFeedForward(input: Linear(weight: [1, 0, 0, 1], outFeatures: 2, inFeatures: 2, bias: [0, 0]),
                                   output: Linear(weight: [2, 0, 0, 2], outFeatures: 2, inFeatures: 2, bias: [0, 0]), activation: .relu)
        let sub = FFNSublayer(placement: .postNorm, norm: .layer(weight: [1, 1], bias: [0, 0], eps: 0), ffn: f)
        // x = [1, -1]: f(x) = [2, 0], x + f(x) = [3, -1], normalized to [1, -1].
        let y = sub(Matrix(rows: 1, cols: 2, data: [1, -1]))
        #expect(abs(y.data[0] - 1) < 1e-6 && abs(y.data[1] + 1) < 1e-6)
        #expect(sub.ffnInput(Matrix(rows: 1, cols: 2, data: [1, -1])).data == [1, -1])
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

import Foundation
import COpenBLAS

/// A row-major f32 matrix: one row per token for activations.
public struct Matrix: Sendable {
    public let rows: Int
    public let cols: Int
    public var data: [Float]

    public init(rows: Int, cols: Int, data: [Float]) {
        precondition(data.count == rows * cols, "matrix \(rows)x\(cols) given \(data.count) values")
        self.rows = rows
        self.cols = cols
        self.data = data
    }

    public init(zeros rows: Int, _ cols: Int) {
        self.init(rows: rows, cols: cols, data: [Float](repeating: 0, count: rows * cols))
    }

    public func row(_ i: Int) -> ArraySlice<Float> { data[i * cols..<(i + 1) * cols] }

    /// The rows at `indices`, in that order.
    public func gather(_ indices: [Int]) -> Matrix {
        var out = [Float]()
        out.reserveCapacity(indices.count * cols)
        for i in indices { out.append(contentsOf: row(i)) }
        return Matrix(rows: indices.count, cols: cols, data: out)
    }

    public var isFinite: Bool { data.allSatisfy(\.isFinite) }

    public var maxAbs: Float { data.reduce(0) { max($0, abs($1)) } }

    /// Largest elementwise |a - b|.
    public func maxAbsDifference(_ other: Matrix) -> Float {
        precondition(rows == other.rows && cols == other.cols)
        var m: Float = 0
        for i in data.indices { m = max(m, abs(data[i] - other.data[i])) }
        return m
    }

    public static func + (a: Matrix, b: Matrix) -> Matrix {
        precondition(a.rows == b.rows && a.cols == b.cols)
        var out = a
        for i in out.data.indices { out.data[i] += b.data[i] }
        return out
    }
}

/// A `[out, in]` weight as Hugging Face `nn.Linear` stores it, optionally restricted to a block
/// of output rows and input columns without copying: that is how a sub-expert reads its slice
/// of the dense FFN.
public struct Linear: Sendable {
    /// The full stored matrix, `[storedOut, storedIn]` row-major.
    let weight: [Float]
    let storedIn: Int
    public let outputs: Range<Int>
    public let inputs: Range<Int>
    /// Bias over the selected outputs (already sliced).
    public let bias: [Float]?

    public var outFeatures: Int { outputs.count }
    public var inFeatures: Int { inputs.count }

    public init(weight: [Float], outFeatures: Int, inFeatures: Int, bias: [Float]? = nil) {
        precondition(weight.count == outFeatures * inFeatures)
        precondition(bias == nil || bias!.count == outFeatures)
        self.weight = weight
        self.storedIn = inFeatures
        self.outputs = 0..<outFeatures
        self.inputs = 0..<inFeatures
        self.bias = bias
    }

    private init(weight: [Float], storedIn: Int, outputs: Range<Int>, inputs: Range<Int>, bias: [Float]?) {
        self.weight = weight
        self.storedIn = storedIn
        self.outputs = outputs
        self.inputs = inputs
        self.bias = bias
    }

    public var isFinite: Bool { weight.allSatisfy(\.isFinite) && (bias ?? []).allSatisfy(\.isFinite) }

    /// Output neurons `r` (relative to this view), with their bias entries.
    public func rows(_ r: Range<Int>) -> Linear {
        Linear(weight: weight, storedIn: storedIn,
               outputs: outputs.lowerBound + r.lowerBound..<outputs.lowerBound + r.upperBound,
               inputs: inputs, bias: bias.map { Array($0[r]) })
    }

    /// Input features `c` (relative to this view); the bias stays whole.
    public func columns(_ c: Range<Int>) -> Linear {
        Linear(weight: weight, storedIn: storedIn, outputs: outputs,
               inputs: inputs.lowerBound + c.lowerBound..<inputs.lowerBound + c.upperBound, bias: bias)
    }

    /// `y = x W^T + b` for all rows of x at once (one sgemm).
    public func callAsFunction(_ x: Matrix, includeBias: Bool = true) -> Matrix {
        precondition(x.cols == inFeatures, "linear expects \(inFeatures) inputs, got \(x.cols)")
        var y = [Float](repeating: 0, count: x.rows * outFeatures)
        if x.rows > 0, outFeatures > 0, inFeatures > 0 {
            let offset = outputs.lowerBound * storedIn + inputs.lowerBound
            x.data.withUnsafeBufferPointer { xp in
                weight.withUnsafeBufferPointer { wp in
                    y.withUnsafeMutableBufferPointer { yp in
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans,
                                    Int32(x.rows), Int32(outFeatures), Int32(inFeatures),
                                    1, xp.baseAddress, Int32(x.cols),
                                    wp.baseAddress! + offset, Int32(storedIn),
                                    0, yp.baseAddress, Int32(outFeatures))
                    }
                }
            }
        }
        if includeBias, let bias {
            for r in 0..<x.rows {
                for c in 0..<outFeatures { y[r * outFeatures + c] += bias[c] }
            }
        }
        return Matrix(rows: x.rows, cols: outFeatures, data: y)
    }
}

/// The normalizations a sub-layer can wrap its FFN in.
public enum Norm: Sendable {
    /// `w * x / sqrt(mean(x^2) + eps)`, computed in f32 as transformers' LlamaRMSNorm does.
    case rms(weight: [Float], eps: Float)

    public func callAsFunction(_ x: Matrix) -> Matrix {
        switch self {
        case let .rms(weight, eps):
            var out = x
            for r in 0..<x.rows {
                var ss: Float = 0
                for c in 0..<x.cols { let v = x.data[r * x.cols + c]; ss += v * v }
                let scale = 1 / (ss / Float(x.cols) + eps).squareRoot()
                for c in 0..<x.cols { out.data[r * x.cols + c] = weight[c] * (x.data[r * x.cols + c] * scale) }
            }
            return out
        }
    }
}

@inline(__always) func silu(_ v: Float) -> Float { v / (1 + expf(-v)) }

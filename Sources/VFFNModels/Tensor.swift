import COpenBLAS
import Foundation
import VFFNFormats

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

/// Where a weight matrix's values live: decoded in memory, or still in the checkpoint's mapped
/// bytes. Mapped F32 is used in place; F16 and BF16 are decoded a block of rows at a time when
/// used, so a forward pass never holds the whole model in f32 (a 7B bf16 model would not fit).
public enum WeightStorage: @unchecked Sendable {
    case floats([Float])
    /// Little-endian `dtype` values, row-major; `owner` keeps the mapping alive.
    case mapped(UnsafeRawBufferPointer, DType, owner: AnyObject)
}

/// A `[out, in]` weight as Hugging Face `nn.Linear` stores it, optionally restricted to a block
/// of output rows and input columns without copying: that is how a sub-expert reads its slice
/// of the dense FFN.
public struct Linear: Sendable {
    let storage: WeightStorage
    /// Columns of the stored matrix (its leading dimension).
    let storedIn: Int
    public let outputs: Range<Int>
    public let inputs: Range<Int>
    /// Bias over the selected outputs (already sliced).
    public let bias: [Float]?

    /// Largest block of decoded rows held at once, in floats (4 MiB): small enough to stay in
    /// cache-friendly territory, large enough that each sgemm still sees hundreds of rows.
    static let decodeBlock = 1 << 20

    public var outFeatures: Int { outputs.count }
    public var inFeatures: Int { inputs.count }

    public init(weight: [Float], outFeatures: Int, inFeatures: Int, bias: [Float]? = nil) {
        precondition(weight.count == outFeatures * inFeatures)
        self.init(storage: .floats(weight), storedIn: inFeatures, outputs: 0..<outFeatures, inputs: 0..<inFeatures, bias: bias)
    }

    /// A weight read in place from mapped checkpoint bytes of `dtype` (F32, F16 or BF16).
    public init(mapped bytes: UnsafeRawBufferPointer, dtype: DType, owner: AnyObject, outFeatures: Int, inFeatures: Int, bias: [Float]? = nil) {
        precondition(dtype.isComputeFloat && bytes.count == outFeatures * inFeatures * dtype.bitSize / 8)
        self.init(storage: .mapped(bytes, dtype, owner: owner), storedIn: inFeatures, outputs: 0..<outFeatures, inputs: 0..<inFeatures, bias: bias)
    }

    private init(storage: WeightStorage, storedIn: Int, outputs: Range<Int>, inputs: Range<Int>, bias: [Float]?) {
        precondition(bias == nil || bias!.count == outputs.count)
        self.storage = storage
        self.storedIn = storedIn
        self.outputs = outputs
        self.inputs = inputs
        self.bias = bias
    }

    /// Output neurons `r` (relative to this view), with their bias entries.
    public func rows(_ r: Range<Int>) -> Linear {
        Linear(storage: storage, storedIn: storedIn,
               outputs: outputs.lowerBound + r.lowerBound..<outputs.lowerBound + r.upperBound,
               inputs: inputs, bias: bias.map { Array($0[r]) })
    }

    /// Input features `c` (relative to this view); the bias stays whole.
    public func columns(_ c: Range<Int>) -> Linear {
        Linear(storage: storage, storedIn: storedIn, outputs: outputs,
               inputs: inputs.lowerBound + c.lowerBound..<inputs.lowerBound + c.upperBound, bias: bias)
    }

    /// Calls `body` with consecutive blocks of this view's rows as contiguous f32
    /// (`pointer`, leading dimension, first row relative to the view, row count).
    func withRowBlocks(_ body: (UnsafePointer<Float>, Int, Int, Int) -> Void) {
        guard outFeatures > 0, inFeatures > 0 else { return }
        switch storage {
        case let .floats(w):
            w.withUnsafeBufferPointer { body($0.baseAddress! + outputs.lowerBound * storedIn + inputs.lowerBound, storedIn, 0, outFeatures) }
        case let .mapped(bytes, .F32, _) where Int(bitPattern: bytes.baseAddress) % MemoryLayout<Float>.alignment == 0:
            let p = bytes.baseAddress!.assumingMemoryBound(to: Float.self)
            body(p + outputs.lowerBound * storedIn + inputs.lowerBound, storedIn, 0, outFeatures)
        case let .mapped(bytes, dtype, _):
            let size = dtype.bitSize / 8
            let blockRows = max(1, min(outFeatures, Self.decodeBlock / inFeatures))
            var scratch = [Float](repeating: 0, count: blockRows * inFeatures)
            scratch.withUnsafeMutableBufferPointer { buf in
                for first in stride(from: 0, to: outFeatures, by: blockRows) {
                    let count = min(blockRows, outFeatures - first)
                    for r in 0..<count {
                        let start = ((outputs.lowerBound + first + r) * storedIn + inputs.lowerBound) * size
                        FloatCodec.decode(UnsafeRawBufferPointer(rebasing: bytes[start..<start + inFeatures * size]), as: dtype,
                                          into: UnsafeMutableBufferPointer(rebasing: buf[r * inFeatures..<(r + 1) * inFeatures]))
                    }
                    body(UnsafePointer(buf.baseAddress!), inFeatures, first, count)
                }
            }
        }
    }

    /// Row `r` of this view, decoded (an embedding lookup).
    public func row(_ r: Int) -> [Float] { rows(r..<r + 1).values }

    /// Every value of this view, row-major.
    public var values: [Float] {
        var out = [Float]()
        out.reserveCapacity(outFeatures * inFeatures)
        withRowBlocks { p, ld, _, count in
            for r in 0..<count { out.append(contentsOf: UnsafeBufferPointer(start: p + r * ld, count: inFeatures)) }
        }
        return out
    }

    public var isFinite: Bool {
        var finite = (bias ?? []).allSatisfy(\.isFinite)
        withRowBlocks { p, ld, _, count in
            for r in 0..<count where finite { finite = UnsafeBufferPointer(start: p + r * ld, count: inFeatures).allSatisfy(\.isFinite) }
        }
        return finite
    }

    /// `y = x W^T + b` for all rows of x at once (one sgemm per block of decoded rows).
    public func callAsFunction(_ x: Matrix, includeBias: Bool = true) -> Matrix {
        precondition(x.cols == inFeatures, "linear expects \(inFeatures) inputs, got \(x.cols)")
        var y = [Float](repeating: 0, count: x.rows * outFeatures)
        if x.rows > 0 {
            x.data.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { yp in
                    withRowBlocks { w, ld, first, count in
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans,
                                    Int32(x.rows), Int32(count), Int32(inFeatures),
                                    1, xp.baseAddress, Int32(x.cols), w, Int32(ld),
                                    0, yp.baseAddress! + first, Int32(outFeatures))
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

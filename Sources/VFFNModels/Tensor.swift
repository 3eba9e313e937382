import CKernels
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

    /// The rows at `indices`, in that order (only `columns` of them).
    public func gather(_ indices: [Int], columns: Range<Int>? = nil) -> Matrix {
        let columns = columns ?? 0..<cols
        var out = [Float]()
        out.reserveCapacity(indices.count * columns.count)
        for i in indices { out.append(contentsOf: data[i * cols + columns.lowerBound..<i * cols + columns.upperBound]) }
        return Matrix(rows: indices.count, cols: columns.count, data: out)
    }

    public var isFinite: Bool { data.allSatisfy(\.isFinite) }

    /// Rewrites the values elementwise, parts of them on every compute thread (`body` gets the
    /// base pointer and the indices to rewrite).
    mutating func updateInParallel(_ body: (UnsafeMutablePointer<Float>, Range<Int>) -> Void) {
        guard !data.isEmpty else { return }
        data.withUnsafeMutableBufferPointer { p in
            nonisolated(unsafe) let base = p.baseAddress!
            ComputeThreads.forEachPart(of: p.count, parts: ComputeThreads.parts(items: p.count / 1024, work: p.count * 64)) { body(base, $0) }
        }
    }

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

    /// Every value clamped to [-limit, limit] (OLMo's clip_qkv).
    public func clamped(to limit: Float) -> Matrix {
        var out = self
        for i in out.data.indices { out.data[i] = min(max(out.data[i], -limit), limit) }
        return out
    }

    /// Every value divided by `s`, as transformers divides Granite's logits (not times 1/s).
    public func divided(by s: Float) -> Matrix {
        guard s != 1 else { return self }
        var out = self
        for i in out.data.indices { out.data[i] /= s }
        return out
    }

    /// Every value times `s`; the matrix itself for 1, so unscaled families round as before.
    public func scaled(by s: Float) -> Matrix {
        guard s != 1 else { return self }
        var out = self
        for i in out.data.indices { out.data[i] *= s }
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
    /// ggml Q8_0 rows (per 32 values an f16 scale and 32 int8), dequantized a block of rows at a
    /// time like F16 and BF16: a Q8_0 GGUF runs at its own size, never widened whole to f32.
    case q8_0(UnsafeRawBufferPointer, owner: AnyObject)
}

/// A weight as Hugging Face stores it: `[out, in]` for `nn.Linear`, or `[in, out]` for GPT-2's
/// `Conv1D` (`transposed`). A view can be restricted to a block of output and input features
/// without copying: that is how a sub-expert reads its slice of the dense FFN.
public struct Linear: Sendable {
    let storage: WeightStorage
    /// Stored `[in, out]` (Conv1D) rather than `[out, in]`.
    let transposed: Bool
    /// Columns of the stored matrix (its leading dimension).
    let storedColumns: Int
    public let outputs: Range<Int>
    public let inputs: Range<Int>
    /// Bias over the selected outputs (already sliced).
    public let bias: [Float]?
    /// The stored row of each output row, where the file keeps them in another order (a llama
    /// GGUF's rotary permutation of q and k); nil: the same order.
    let rowOrder: [Int]?

    /// Decoded rows held at once by one product, in floats (16 MiB, split among its threads):
    /// each block is one sgemm, which packs the activations again, so blocks of a few hundred rows
    /// spent a tenth of the forward on that; 1, 4 and 16 Mi floats measured, 4 the fastest.
    static let decodeBlock = 1 << 22
    /// The outputs one sgemm call computes (see `callAsFunction`).
    static let sgemmOutputs = 256

    public var outFeatures: Int { outputs.count }
    public var inFeatures: Int { inputs.count }

    /// `weight` row-major, `[out, in]`, or `[in, out]` when `transposed`.
    public init(weight: [Float], outFeatures: Int, inFeatures: Int, bias: [Float]? = nil, transposed: Bool = false) {
        precondition(weight.count == outFeatures * inFeatures)
        self.init(storage: .floats(weight), transposed: transposed, storedColumns: transposed ? outFeatures : inFeatures,
                  outputs: 0..<outFeatures, inputs: 0..<inFeatures, bias: bias)
    }

    /// A weight read in place from mapped checkpoint bytes of `dtype` (F32, F16 or BF16).
    package init(mapped bytes: UnsafeRawBufferPointer, dtype: DType, owner: AnyObject, outFeatures: Int, inFeatures: Int,
                bias: [Float]? = nil, transposed: Bool = false) {
        precondition(dtype.isComputeFloat && bytes.count == outFeatures * inFeatures * dtype.bitSize / 8)
        self.init(storage: .mapped(bytes, dtype, owner: owner), transposed: transposed, storedColumns: transposed ? outFeatures : inFeatures,
                  outputs: 0..<outFeatures, inputs: 0..<inFeatures, bias: bias)
    }

    /// A `[out, in]` matrix as its file stores it (`TensorFile.storedMatrix`), read in place.
    public init(stored: StoredMatrix, outFeatures: Int, inFeatures: Int, bias: [Float]? = nil) {
        let storage: WeightStorage
        switch stored.encoding {
        case let .float(dtype):
            precondition(stored.data.raw.count == outFeatures * inFeatures * dtype.bitSize / 8)
            storage = .mapped(stored.data.raw, dtype, owner: stored.data)
        case .q8_0:
            precondition(inFeatures % 32 == 0 && stored.data.raw.count == outFeatures * inFeatures / 32 * 34)
            storage = .q8_0(stored.data.raw, owner: stored.data)
        }
        precondition(stored.rowOrder == nil || stored.rowOrder!.count == outFeatures)
        self.init(storage: storage, transposed: false, storedColumns: inFeatures, outputs: 0..<outFeatures, inputs: 0..<inFeatures,
                  bias: bias, rowOrder: stored.rowOrder)
    }

    private init(storage: WeightStorage, transposed: Bool, storedColumns: Int, outputs: Range<Int>, inputs: Range<Int>, bias: [Float]?,
                 rowOrder: [Int]? = nil) {
        precondition(bias == nil || bias!.count == outputs.count)
        precondition(rowOrder == nil || !transposed)
        self.storage = storage
        self.transposed = transposed
        self.storedColumns = storedColumns
        self.outputs = outputs
        self.inputs = inputs
        self.bias = bias
        self.rowOrder = rowOrder
    }

    /// The same weights with `bias` added after them (a tied head with a bias of its own).
    public func adding(bias: [Float]) -> Linear {
        Linear(storage: storage, transposed: transposed, storedColumns: storedColumns, outputs: outputs, inputs: inputs, bias: bias, rowOrder: rowOrder)
    }

    /// Output features `r` (relative to this view), with their bias entries.
    public func rows(_ r: Range<Int>) -> Linear {
        Linear(storage: storage, transposed: transposed, storedColumns: storedColumns,
               outputs: outputs.lowerBound + r.lowerBound..<outputs.lowerBound + r.upperBound,
               inputs: inputs, bias: bias.map { Array($0[r]) }, rowOrder: rowOrder)
    }

    /// Input features `c` (relative to this view); the bias stays whole.
    public func columns(_ c: Range<Int>) -> Linear {
        Linear(storage: storage, transposed: transposed, storedColumns: storedColumns, outputs: outputs,
               inputs: inputs.lowerBound + c.lowerBound..<inputs.lowerBound + c.upperBound, bias: bias, rowOrder: rowOrder)
    }

    /// The view's stored rows and columns: outputs x inputs, or inputs x outputs when transposed.
    private var storedRows: Range<Int> { transposed ? inputs : outputs }
    private var storedColumnRange: Range<Int> { transposed ? outputs : inputs }

    /// Calls `body` with consecutive blocks of this view's stored rows as contiguous f32
    /// (`pointer`, leading dimension, first stored row relative to the view, row count).
    /// `blockRows` fixes the rows per decoded block (a part of a product passes its whole
    /// product's, so that how a Conv1D product is summed does not depend on the split).
    func withStoredBlocks(blockRows fixedRows: Int? = nil, _ body: (UnsafePointer<Float>, Int, Int, Int) -> Void) {
        let rows = storedRows, cols = storedColumnRange
        guard rows.count > 0, cols.count > 0 else { return }
        switch storage {
        case let .floats(w) where rowOrder == nil:
            w.withUnsafeBufferPointer { body($0.baseAddress! + rows.lowerBound * storedColumns + cols.lowerBound, storedColumns, 0, rows.count) }
        case let .mapped(bytes, .F32, _) where rowOrder == nil && Int(bitPattern: bytes.baseAddress) % MemoryLayout<Float>.alignment == 0:
            let p = bytes.baseAddress!.assumingMemoryBound(to: Float.self)
            body(p + rows.lowerBound * storedColumns + cols.lowerBound, storedColumns, 0, rows.count)
        default:
            let width = cols.count
            let blockRows = max(1, min(rows.count, fixedRows ?? Self.decodeBlock / width))
            DecodeWorkspace.shared.with(count: blockRows * width) { buf in
                for first in stride(from: 0, to: rows.count, by: blockRows) {
                    let count = min(blockRows, rows.count - first)
                    for r in 0..<count {
                        let row = rows.lowerBound + first + r
                        decodeStoredRow(rowOrder?[row] ?? row, columns: cols, into: UnsafeMutableBufferPointer(start: buf + r * width, count: width))
                    }
                    body(UnsafePointer(buf), width, first, count)
                }
            }
        }
    }

    /// Columns `cols` of stored row `row`, as f32.
    private func decodeStoredRow(_ row: Int, columns cols: Range<Int>, into out: UnsafeMutableBufferPointer<Float>) {
        switch storage {
        case let .floats(w):
            _ = out.initialize(from: w[row * storedColumns + cols.lowerBound..<row * storedColumns + cols.upperBound])
        case let .mapped(bytes, dtype, _):
            let size = dtype.bitSize / 8, start = (row * storedColumns + cols.lowerBound) * size
            FloatCodec.decode(UnsafeRawBufferPointer(rebasing: bytes[start..<start + cols.count * size]), as: dtype, into: out)
        case let .q8_0(bytes, _):
            // The 34-byte blocks that cover the columns; a view that starts or ends inside a
            // block (a sub-expert's slice) takes its part of it.
            let rowBase = row * (storedColumns / 32) * 34
            var c = cols.lowerBound
            while c < cols.upperBound {
                let block = c / 32, base = rowBase + block * 34
                let d = Float(Float16(bitPattern: UInt16(bytes[base]) | UInt16(bytes[base + 1]) << 8))
                let end = min(cols.upperBound, (block + 1) * 32)
                for j in c..<end { out[j - cols.lowerBound] = Float(Int8(bitPattern: bytes[base + 2 + j - block * 32])) * d }
                c = end
            }
        }
    }

    /// Row `r` of this view, decoded (an embedding lookup).
    public func row(_ r: Int) -> [Float] { rows(r..<r + 1).values }

    /// Every value of this view as `[out, in]`, row-major.
    public var values: [Float] {
        var out = [Float](repeating: 0, count: outFeatures * inFeatures)
        let n = inFeatures
        withStoredBlocks { p, ld, first, count in
            for r in 0..<count {
                let src = UnsafeBufferPointer(start: p + r * ld, count: storedColumnRange.count)
                if transposed {
                    for (o, v) in src.enumerated() { out[o * n + first + r] = v }
                } else {
                    out.replaceSubrange((first + r) * n..<(first + r + 1) * n, with: src)
                }
            }
        }
        return out
    }

    public var isFinite: Bool {
        var finite = (bias ?? []).allSatisfy(\.isFinite)
        let width = storedColumnRange.count
        withStoredBlocks { p, ld, _, count in
            for r in 0..<count where finite { finite = UnsafeBufferPointer(start: p + r * ld, count: width).allSatisfy(\.isFinite) }
        }
        return finite
    }

    /// Whether products with bf16 weights run CKernels' AVX-512 kernel. It beats widening to f32
    /// and sgemm by 1.2x at 256 tokens and 1.8x at 64 on this project's machine (one thread; its
    /// sums run in another order, so results differ from sgemm's by rounding).
    static let bf16Kernel = vffn_gemm_bf16_available() != 0

    /// Output features `r` without the bias: a part of a product one thread computes.
    private func outputPart(_ r: Range<Int>) -> Linear {
        Linear(storage: storage, transposed: transposed, storedColumns: storedColumns,
               outputs: outputs.lowerBound + r.lowerBound..<outputs.lowerBound + r.upperBound, inputs: inputs, bias: nil, rowOrder: rowOrder)
    }

    /// `y = x W^T + b` for all rows of x at once. The output features are split among the
    /// compute threads; each decodes its own blocks of rows and runs a single-threaded sgemm on
    /// each, so decoding overlaps the other threads' products and no thread waits for another.
    /// How the features are split does not change a single rounding.
    public func callAsFunction(_ x: Matrix, includeBias: Bool = true) -> Matrix {
        precondition(x.cols == inFeatures, "linear expects \(inFeatures) inputs, got \(x.cols)")
        // Every element is written by a first product with beta 0, unless there is nothing to sum.
        var y = inFeatures == 0 ? [Float](repeating: 0, count: x.rows * outFeatures)
            : [Float](unsafeUninitializedCapacity: x.rows * outFeatures) { _, n in n = x.rows * outFeatures }
        if x.rows > 0 {
            let n = outFeatures, T = x.rows
            let parts = ComputeThreads.parts(items: n, work: T * n * inFeatures)
            x.data.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { yp in
                    nonisolated(unsafe) let (xBase, yBase) = (xp.baseAddress!, yp.baseAddress!)
                    if case let .mapped(bytes, .BF16, _) = storage, !transposed, rowOrder == nil, Self.bf16Kernel {
                        // bf16 weights straight from the mapping, widened in registers: no decode
                        // pass and no sgemm packing pass over W (CKernels).
                        nonisolated(unsafe) let w = bytes.baseAddress!
                        let (ld, first, k) = (storedColumns, outputs.lowerBound, inputs.lowerBound)
                        ComputeThreads.forEachPart(of: n, parts: parts) { part in
                            vffn_gemm_bf16(xBase, x.cols, w + 2 * ((first + part.lowerBound) * ld + k), ld,
                                           yBase + part.lowerBound, n, T, part.count, inFeatures)
                        }
                        return
                    }
                    // OpenBLAS computes a column at the edge of a call, or in a call small enough
                    // for its small-matrix kernels, with other roundings (measured on AVX-512):
                    // every sgemm covers one fixed, globally aligned chunk of outputs, so each
                    // output is summed the same way whatever the threads. A transposed (Conv1D)
                    // product also sums over blocks of input rows, sized by the product's width,
                    // the same blocks whatever the split.
                    let chunk = Self.sgemmOutputs
                    let chunks = (n + chunk - 1) / chunk
                    let blockRows = transposed ? max(1, Self.decodeBlock / n)
                        : max(1, Self.decodeBlock / max(1, min(parts, chunks)) / max(1, inFeatures) / chunk) * chunk
                    ComputeThreads.forEachPart(of: chunks, parts: min(parts, chunks)) { chunkRange in
                        let part = chunkRange.lowerBound * chunk..<min(chunkRange.upperBound * chunk, n)
                        outputPart(part).withStoredBlocks(blockRows: blockRows) { w, ld, first, count in
                            if transposed {
                                // A block of input rows: its share of this part's outputs, accumulated.
                                for c in stride(from: 0, to: part.count, by: chunk) {
                                    let width = min(chunk, part.count - c)
                                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans,
                                                Int32(T), Int32(width), Int32(count),
                                                1, xBase + first, Int32(x.cols), w + c, Int32(ld),
                                                first == 0 ? 0 : 1, yBase + part.lowerBound + c, Int32(n))
                                }
                            } else {
                                for c in stride(from: 0, to: count, by: chunk) {
                                    let rows = min(chunk, count - c)
                                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans,
                                                Int32(T), Int32(rows), Int32(inFeatures),
                                                1, xBase, Int32(x.cols), w + c * ld, Int32(ld),
                                                0, yBase + part.lowerBound + first + c, Int32(n))
                                }
                            }
                        }
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
    /// `w * (x - mean) / sqrt(var + eps) + b` with the biased variance, as torch's LayerNorm.
    case layer(weight: [Float], bias: [Float], eps: Float)

    /// The per-feature scale the norm applies last (its weight).
    public var scale: [Float] {
        switch self {
        case let .rms(weight, _), let .layer(weight, _, _): return weight
        }
    }

    public func callAsFunction(_ x: Matrix) -> Matrix {
        var out = x
        let n = x.cols
        switch self {
        case let .rms(weight, eps):
            for r in 0..<x.rows {
                var ss: Float = 0
                for c in 0..<n { let v = x.data[r * n + c]; ss += v * v }
                let scale = 1 / (ss / Float(n) + eps).squareRoot()
                for c in 0..<n { out.data[r * n + c] = weight[c] * (x.data[r * n + c] * scale) }
            }
        case let .layer(weight, bias, eps):
            for r in 0..<x.rows {
                // Double sums: torch accumulates the moments more carefully than a naive f32 loop.
                var sum = 0.0
                for c in 0..<n { sum += Double(x.data[r * n + c]) }
                let mean = sum / Double(n)
                var ss = 0.0
                for c in 0..<n { let v = Double(x.data[r * n + c]) - mean; ss += v * v }
                let rstd = Float(1 / (ss / Double(n) + Double(eps)).squareRoot())
                let m = Float(mean)
                for c in 0..<n { out.data[r * n + c] = (x.data[r * n + c] - m) * rstd * weight[c] + bias[c] }
            }
        }
        return out
    }
}

/// The FFN nonlinearities of the supported families, by their transformers `hidden_act` names.
public enum Activation: String, Sendable {
    /// Exact `x * Phi(x)` with erf (BERT's `gelu`).
    case gelu
    /// The tanh approximation (GPT-2's `gelu_new`; also `gelu_pytorch_tanh`, `gelu_fast`).
    case geluTanh = "gelu_new"
    case relu
    case silu

    /// The activation a config's `hidden_act` / `activation_function` names, or nil if unsupported.
    public init?(huggingFaceName name: String) {
        switch name {
        case "gelu": self = .gelu
        case "gelu_new", "gelu_pytorch_tanh", "gelu_fast": self = .geluTanh
        case "relu": self = .relu
        case "silu", "swish": self = .silu
        default: return nil
        }
    }

    public static let supportedNames = ["gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu"]

    @inline(__always) public func callAsFunction(_ v: Float) -> Float {
        switch self {
        case .gelu: return 0.5 * v * (1 + erff(v * 0.70710678118654752440))
        case .geluTanh: return 0.5 * v * (1 + tanhf(0.79788456080286535588 * (v + 0.044715 * v * v * v)))
        case .relu: return max(v, 0)
        case .silu: return VFFNModels.silu(v)
        }
    }
}

@inline(__always) func silu(_ v: Float) -> Float { v / (1 + expf(-v)) }

/// Reused f32 buffers for decoded weight blocks. A fresh allocation of each block would fault in
/// new pages for every product (gigabytes per forward); concurrent forwards (tests) each take a
/// buffer of their own.
final class DecodeWorkspace: @unchecked Sendable {
    static let shared = DecodeWorkspace()
    private let lock = NSLock()
    private var free: [(UnsafeMutablePointer<Float>, Int)] = []

    func with<R>(count: Int, _ body: (UnsafeMutablePointer<Float>) throws -> R) rethrows -> R {
        lock.lock()
        var buffer = free.popLast()
        lock.unlock()
        if let b = buffer, b.1 < count {
            b.0.deallocate()
            buffer = nil
        }
        let b = buffer ?? (UnsafeMutablePointer<Float>.allocate(capacity: count), count)
        defer {
            lock.lock()
            // One per compute thread of one forward, and a few for concurrent forwards (tests).
            if free.count < 8 { free.append(b) } else { b.0.deallocate() }
            lock.unlock()
        }
        return try body(b.0)
    }
}

/// How many threads the forward pass computes on: `--threads`, else OPENBLAS_NUM_THREADS, else
/// OMP_NUM_THREADS, else the processors this process may use. The work is split here, and
/// OpenBLAS itself runs single-threaded inside each part: its own threads would spin in
/// sched_yield while a part decodes weights (a tenth of the forward on 2 cores).
public enum ComputeThreads {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var chosen: Int?

    public static var count: Int {
        lock.lock()
        defer { lock.unlock() }
        if let chosen { return chosen }
        let env = ProcessInfo.processInfo.environment
        let n = [env["OPENBLAS_NUM_THREADS"], env["OMP_NUM_THREADS"]].compactMap { $0.flatMap { Int($0) } }.first { $0 > 0 }
            ?? ProcessInfo.processInfo.activeProcessorCount
        chosen = max(1, n)
        openblas_set_num_threads(1)
        return chosen!
    }

    /// Sets the thread count (the CLI's `--threads`).
    public static func set(_ n: Int) {
        precondition(n >= 1)
        lock.lock()
        openblas_set_num_threads(1)
        chosen = n
        lock.unlock()
    }

    /// How many parts `items` independent outputs costing `work` multiply-adds are split into:
    /// one below a million multiply-adds or 64 items a part, where threads cost more than they save.
    static func parts(items: Int, work: Int) -> Int {
        guard work >= 1 << 20 else { return 1 }
        return max(1, min(count, items / 64))
    }

    /// Calls `body` on `parts` contiguous parts of `0..<n` in parallel; returns when all are done.
    static func forEachPart(of n: Int, parts: Int, _ body: (Range<Int>) -> Void) {
        guard parts > 1 else { return body(0..<n) }
        // The parts write disjoint ranges.
        withoutActuallyEscaping(body) { body in
            nonisolated(unsafe) let body = body
            DispatchQueue.concurrentPerform(iterations: parts) { p in
                body(p * n / parts..<(p + 1) * n / parts)
            }
        }
    }
}

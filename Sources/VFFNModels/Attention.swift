import COpenBLAS
import Foundation

/// Which keys each query sees.
public enum AttentionMask: Sendable {
    /// Every token sees every token (BERT).
    case bidirectional
    /// Token i sees j <= i, and with a window w only i - j < w (decoders; Mistral's window).
    case causal(window: Int?)

    func visible(_ i: Int, of count: Int) -> ClosedRange<Int> {
        switch self {
        case .bidirectional: return 0...(count - 1)
        case let .causal(window): return (window.map { max(0, i - $0 + 1) } ?? 0)...i
        }
    }
}

/// Softmax attention of T queries over T keys, one sgemm pair per head. `q` is `[T, H*hd]`,
/// `k` and `v` are `[T, KV*hd]`; query head h reads key/value head `h / (H / KV)` (grouped-query
/// attention; KV = H is plain multi-head). Returns `[T, H*hd]`, heads side by side.
/// `softcap` (Gemma 2) bends the scaled scores through `cap * tanh(s / cap)` before the mask.
func attention(q: Matrix, k: Matrix, v: Matrix, heads H: Int, kvHeads KV: Int, headDim hd: Int,
               scale: Float, mask: AttentionMask, softcap: Float? = nil) -> Matrix {
    let T = q.rows
    precondition(q.cols == H * hd && k.cols == KV * hd && v.cols == KV * hd && H % KV == 0)
    var out = [Float](repeating: 0, count: T * H * hd)
    // Heads are independent: split among the compute threads, each with its own score matrix.
    let parts = ComputeThreads.parts(items: H * 64, work: H * T * T * hd)
    q.data.withUnsafeBufferPointer { qp in
        k.data.withUnsafeBufferPointer { kp in
            v.data.withUnsafeBufferPointer { vp in
                out.withUnsafeMutableBufferPointer { op in
                    nonisolated(unsafe) let (qb, kb, vb, ob) = (qp.baseAddress!, kp.baseAddress!, vp.baseAddress!, op.baseAddress!)
                    ComputeThreads.forEachPart(of: H, parts: parts) { heads in
                        var scores = [Float](repeating: 0, count: T * T)
                        for head in heads {
                            let kvHead = head / (H / KV)
                            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(T), Int32(T), Int32(hd), scale,
                                        qb + head * hd, Int32(H * hd), kb + kvHead * hd, Int32(KV * hd), 0, &scores, Int32(T))
                            if let cap = softcap {
                                for i in scores.indices { scores[i] = tanhf(scores[i] / cap) * cap }
                            }
                            for i in 0..<T {
                                let seen = mask.visible(i, of: T)
                                var top = -Float.infinity
                                for j in seen { top = max(top, scores[i * T + j]) }
                                var sum: Float = 0
                                for j in 0..<T {
                                    let p: Float = seen.contains(j) ? expf(scores[i * T + j] - top) : 0
                                    scores[i * T + j] = p
                                    sum += p
                                }
                                for j in 0..<T { scores[i * T + j] /= sum }
                            }
                            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(T), Int32(hd), Int32(T), 1,
                                        scores, Int32(T), vb + kvHead * hd, Int32(KV * hd), 0, ob + head * hd, Int32(H * hd))
                        }
                    }
                }
            }
        }
    }
    return Matrix(rows: T, cols: H * hd, data: out)
}

import VFFNFormats
import VFFNModels

/// How the intermediate neurons of each FFN are grouped into the N contiguous sub-expert slices.
public enum NeuronSplit: String, Sendable, CaseIterable {
    /// Neurons in their stored order (the paper's construction).
    case contiguous
    /// Neurons permuted so that each slice holds a balanced cluster of similar neurons
    /// (MoEfication's idea): balanced k-means on the normalized input-projection vectors.
    case cluster

    /// How `cluster` groups neurons, as recorded in config.json.
    public static let clusterMethod = "balanced_kmeans_cosine"
}

/// Balanced k-means on unit vectors (cosine similarity): k clusters of exactly n/k members,
/// deterministic for a seed. Assignment is greedy over all (vector, centroid) pairs from the most
/// similar down, each cluster taking members until full.
enum BalancedKMeans {
    static let iterations = 25

    /// Cluster members, each sorted, clusters ordered by their smallest member.
    static func clusters(_ vectors: Matrix, k: Int, rng: inout Xoshiro256StarStar) -> [[Int]] {
        let n = vectors.rows, d = vectors.cols
        precondition(n % k == 0)
        let capacity = n / k
        let units = normalizedRows(vectors)
        // k-means++ seeding: each next centroid drawn with probability growing with its distance.
        var chosen = [Int(rng.next() % UInt64(n))]
        var nearest = [Float](repeating: .infinity, count: n)
        while chosen.count < k {
            let c = units.row(chosen.last!)
            var total: Double = 0
            for i in 0..<n {
                var dot: Float = 0
                for j in 0..<d { dot += units.data[i * d + j] * c[c.startIndex + j] }
                nearest[i] = min(nearest[i], max(0, 1 - dot))
                total += Double(nearest[i])
            }
            var pick = Double(rng.next() >> 11) * 0x1p-53 * total
            var next = n - 1
            for i in 0..<n where nearest[i] > 0 {
                pick -= Double(nearest[i])
                if pick <= 0 { next = i; break }
            }
            // All remaining points coincide with a centroid: take the first unused one.
            if chosen.contains(next) { next = (0..<n).first { !chosen.contains($0) }! }
            chosen.append(next)
        }
        var centroids = units.gather(chosen)
        var assignment = [Int](repeating: -1, count: n)
        for _ in 0..<iterations {
            let similarity = Linear(weight: centroids.data, outFeatures: k, inFeatures: d)(units)   // [n, k]
            var pairs = Array(0..<n * k)
            pairs.sort { (similarity.data[$0], $1) > (similarity.data[$1], $0) }
            var next = [Int](repeating: -1, count: n), size = [Int](repeating: 0, count: k), placed = 0
            for p in pairs where placed < n {
                let (i, c) = (p / k, p % k)
                guard next[i] < 0, size[c] < capacity else { continue }
                next[i] = c
                size[c] += 1
                placed += 1
            }
            if next == assignment { break }
            assignment = next
            var sums = [Float](repeating: 0, count: k * d)
            for i in 0..<n { for j in 0..<d { sums[assignment[i] * d + j] += units.data[i * d + j] } }
            centroids = normalizedRows(Matrix(rows: k, cols: d, data: sums))
        }
        var members = [[Int]](repeating: [], count: k)
        for i in 0..<n { members[assignment[i]].append(i) }
        return members.sorted { $0[0] < $1[0] }
    }

    static func normalizedRows(_ m: Matrix) -> Matrix {
        var out = m
        for r in 0..<m.rows {
            var ss: Float = 0
            for c in 0..<m.cols { ss += m.data[r * m.cols + c] * m.data[r * m.cols + c] }
            let scale = ss > 0 ? 1 / ss.squareRoot() : 0
            for c in 0..<m.cols { out.data[r * m.cols + c] *= scale }
        }
        return out
    }
}

/// Reorders the neurons of one FFN tensor: position p of the neuron axis receives what was at
/// `permutation[p]`. Bytes move whole, whatever the dtype, so no value changes.
func permuteNeurons(_ bytes: UnsafeRawBufferPointer, shape: [Int], axis: Int, elementSize: Int, permutation: [Int]) -> [UInt8] {
    precondition(shape[axis] == permutation.count)
    let outer = shape[..<axis].reduce(1, *), inner = shape[(axis + 1)...].reduce(1, *) * elementSize
    let n = permutation.count
    var out = [UInt8](repeating: 0, count: bytes.count)
    out.withUnsafeMutableBytes { o in
        for a in 0..<outer {
            for (p, source) in permutation.enumerated() {
                let from = (a * n + source) * inner, to = (a * n + p) * inner
                o.baseAddress!.advanced(by: to).copyMemory(from: bytes.baseAddress!.advanced(by: from), byteCount: inner)
            }
        }
    }
    return out
}

/// How a converted config.json records a layer's neuron order, so that `strip` can undo it.
/// A cluster split's order (sorted clusters, ordered by their smallest member) is fixed by which
/// cluster each neuron joined: one character per neuron (`0-9a-zA-Z`, clusters numbered in that
/// order), 14 KB a layer at Llama-3-8B's width. Any other order is written out as positions.
public enum NeuronOrder {
    static let digits = Array("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".unicodeScalars)

    /// `order[p]` is the source neuron at position p.
    public static func json(_ order: [Int], experts: Int) -> JSON {
        let n = order.count, width = n / max(experts, 1)
        var cluster = [Int](repeating: -1, count: n)
        var canonical = experts <= digits.count && width * experts == n
        if canonical {
            for (p, neuron) in order.enumerated() where neuron >= 0 && neuron < n { cluster[neuron] = p / width }
            canonical = !cluster.contains(-1) && decode(cluster, experts: experts) == order
        }
        if canonical { return .string(String(String.UnicodeScalarView(cluster.map { digits[$0] }))) }
        return .array(order.map { .int($0) })
    }

    /// The order a cluster assignment gives: each cluster's members ascending, clusters by their
    /// smallest member.
    static func decode(_ cluster: [Int], experts: Int) -> [Int] {
        var members = [[Int]](repeating: [], count: experts)
        for (neuron, c) in cluster.enumerated() { members[c].append(neuron) }
        return members.filter { !$0.isEmpty }.sorted { $0[0] < $1[0] }.flatMap { $0 }
    }

    /// A recorded order, checked to be a permutation of `neurons` neurons.
    public static func read(_ json: JSON, neurons: Int, experts: Int, what: String) throws(VFFNError) -> [Int] {
        var order: [Int]
        if let s = json.stringValue {
            var cluster: [Int] = []
            for c in s.unicodeScalars {
                guard let i = digits.firstIndex(of: c), i < experts else { throw .badInput(nil, "\(what): \"\(c)\" is not a sub-expert index below \(experts)") }
                cluster.append(i)
            }
            guard cluster.count == neurons else { throw .badInput(nil, "\(what) assigns \(cluster.count) neurons, the FFN has \(neurons)") }
            order = decode(cluster, experts: experts)
        } else if let items = json.arrayValue {
            order = items.compactMap(\.intValue)
            guard order.count == items.count else { throw .badInput(nil, "\(what) holds a value that is not an integer") }
        } else {
            throw .badInput(nil, "\(what) is neither a string of sub-expert indices nor an array of neuron positions")
        }
        guard order.count == neurons else { throw .badInput(nil, "\(what) orders \(order.count) neurons, the FFN has \(neurons)") }
        var seen = [Bool](repeating: false, count: neurons)
        for i in order {
            guard i >= 0, i < neurons, !seen[i] else { throw .badInput(nil, "\(what) is not a permutation of 0..<\(neurons) (\(i) is out of range or repeated)") }
            seen[i] = true
        }
        return order
    }

    /// The inverse: position q of the result holds where source neuron q went.
    public static func inverse(_ order: [Int]) -> [Int] {
        var out = [Int](repeating: 0, count: order.count)
        for (p, neuron) in order.enumerated() { out[neuron] = p }
        return out
    }
}

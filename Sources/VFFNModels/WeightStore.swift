import VFFNFormats

/// Shape-checked access to a checkpoint's tensors by name, scoped like the checkpoint's key
/// tree (`weights.scope("model.layers.3")`), that remembers what was read so a loader can
/// refuse tensors it does not understand.
public final class WeightStore: @unchecked Sendable {
    public let checkpoint: Checkpoint
    private(set) var used = Set<String>()

    public init(_ checkpoint: Checkpoint) { self.checkpoint = checkpoint }

    public func scope(_ prefix: String) -> WeightScope { WeightScope(store: self, prefix: prefix) }

    public func contains(_ name: String) -> Bool { checkpoint.contains(name) }

    /// Decodes a float tensor to f32 after checking its shape.
    public func floats(_ name: String, shape: [Int]) throws(VFFNError) -> [Float] {
        let (shard, info) = try floatTensor(name, shape: shape)
        let data = try shard.bytes(info)
        return withExtendedLifetime(data) { FloatCodec.decode(data.raw, as: info.dtype) }
    }

    /// A `[out, in]` float tensor as a weight read in place from the mapped file (a GGUF's Q8_0
    /// blocks and permuted rows included), or decoded for it where the file must decode it.
    /// With `transposed`, the tensor is `[in, out]` (GPT-2's Conv1D).
    public func matrix(_ name: String, out: Int, in inFeatures: Int, bias: [Float]? = nil, transposed: Bool = false) throws(VFFNError) -> Linear {
        let (shard, info) = try floatTensor(name, shape: transposed ? [inFeatures, out] : [out, inFeatures])
        if !transposed, let stored = try shard.storedMatrix(info) {
            return Linear(stored: stored, outFeatures: out, inFeatures: inFeatures, bias: bias)
        }
        let data = try shard.bytes(info)
        return Linear(mapped: data.raw, dtype: info.dtype, owner: data, outFeatures: out, inFeatures: inFeatures,
                      bias: bias, transposed: transposed)
    }

    private func floatTensor(_ name: String, shape: [Int]) throws(VFFNError) -> (any TensorFile, TensorInfo) {
        guard let info = checkpoint.info(name), let shard = checkpoint.shard(of: name) else {
            throw .badInput(checkpoint.path, "missing tensor \"\(name)\" (expected shape \(shape))")
        }
        guard info.shape == shape else {
            throw .badInput(shard.path, "tensor \"\(name)\" has shape \(info.shape), expected \(shape)")
        }
        guard info.dtype.isComputeFloat else {
            throw .badInput(shard.path, "tensor \"\(name)\" has dtype \(info.dtype); weights must be F32, F16 or BF16")
        }
        used.insert(name)
        return (shard, info)
    }

    /// Marks tensors that are present but deliberately not read (e.g. gates in a dense run).
    public func ignore(_ name: String) { used.insert(name) }

    /// Marks every tensor whose name satisfies `predicate` as deliberately not read.
    public func ignore(where predicate: (String) -> Bool) {
        used.formUnion(checkpoint.tensorNames.filter(predicate))
    }

    /// Tensors no loader asked for. Buffers that transformers itself recomputes are ignored.
    public func unusedTensors() -> [String] {
        checkpoint.tensorNames.filter { !used.contains($0) && !$0.hasSuffix("rotary_emb.inv_freq") }
    }

    /// Fails if the checkpoint holds tensors the model did not read: a sign that it is not the
    /// architecture config.json claims.
    public func requireAllUsed() throws(VFFNError) {
        let unused = unusedTensors()
        guard unused.isEmpty else {
            let list = unused.prefix(3).map { "\"\($0)\"" }.joined(separator: ", ")
            throw .badInput(checkpoint.path, "\(unused.count) tensor(s) not part of the \(checkpoint.config["model_type"]?.stringValue ?? "?") model: \(list)\(unused.count > 3 ? ", ..." : "")")
        }
    }
}

/// A prefix of tensor names, from which shape-checked weights are read.
public struct WeightScope: Sendable {
    let store: WeightStore
    public let prefix: String

    public func scope(_ name: String) -> WeightScope {
        WeightScope(store: store, prefix: prefix.isEmpty ? name : prefix + "." + name)
    }

    public func name(_ leaf: String) -> String { prefix.isEmpty ? leaf : prefix + "." + leaf }

    public func contains(_ leaf: String) -> Bool { store.contains(name(leaf)) }

    public func vector(_ leaf: String, count: Int) throws(VFFNError) -> [Float] {
        try store.floats(name(leaf), shape: [count])
    }

    /// An `nn.Linear` under this scope: `weight` `[out, in]` and, if asked, `bias` `[out]`.
    public func linear(out: Int, in inFeatures: Int, bias: Bool) throws(VFFNError) -> Linear {
        let b = bias ? try store.floats(name("bias"), shape: [out]) : nil
        return try store.matrix(name("weight"), out: out, in: inFeatures, bias: b)
    }

    /// A GPT-2 `Conv1D` under this scope: `weight` `[in, out]` and `bias` `[out]`.
    public func conv1D(out: Int, in inFeatures: Int) throws(VFFNError) -> Linear {
        let b = try store.floats(name("bias"), shape: [out])
        return try store.matrix(name("weight"), out: out, in: inFeatures, bias: b, transposed: true)
    }

    /// An `nn.LayerNorm` under this scope. Checkpoints converted from TensorFlow name its
    /// parameters `gamma`/`beta` instead of `weight`/`bias`; transformers accepts both, so do we.
    public func layerNorm(count: Int, eps: Float) throws(VFFNError) -> Norm {
        let (w, b) = contains("weight") || !contains("gamma") ? ("weight", "bias") : ("gamma", "beta")
        return .layer(weight: try vector(w, count: count), bias: try vector(b, count: count), eps: eps)
    }
}

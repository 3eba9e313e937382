import VFFNFormats
#if canImport(Glibc)
import Glibc
#endif

/// What a forward pass returns: logits for causal LMs, last hidden states for encoders.
public enum OutputKind: String, Sendable {
    case logits
    case hiddenStates = "hidden states"
}

/// What a forward pass returns, and what a traced one records per layer.
public struct ForwardResult: Sendable {
    /// `[T, vocab]` logits or `[T, hidden]` hidden states.
    public let output: Matrix
    /// The residual stream after each layer, when traced.
    public let layerOutputs: [Matrix]
    /// What each layer's FFN sub-layer received (the `x` its gates read), when traced.
    public let ffnInputs: [Matrix]
    /// Per layer, where tokens went (empty in dense mode).
    public let routing: [RoutingStats]
}

/// A loaded model that can run dense or as VersatileFFN.
public protocol LanguageModel: Sendable {
    var modelType: String { get }
    var outputKind: OutputKind { get }
    var vocabSize: Int { get }
    var hiddenSize: Int { get }
    /// The longest sequence the model's positions cover (nil: no limit we enforce).
    var maxTokens: Int? { get }
    /// The positions the model was trained on (max_position_embeddings): text is cut there. A
    /// rotary model runs past them, so `maxTokens` does not enforce them.
    var trainedPositions: Int? { get }
    /// The dense FFN sub-layer of every layer.
    var ffnSublayers: [FFNSublayer] { get }
    /// The VersatileFFN block of every layer, or nil for a dense checkpoint.
    var versatileLayers: [VersatileFFNLayer?]? { get }
    func forward(_ tokens: [Int], mode: FFNMode, trace: Bool) throws(VFFNError) -> ForwardResult
}

extension LanguageModel {
    func checkTokens(_ tokens: [Int]) throws(VFFNError) {
        guard !tokens.isEmpty else { throw .usage("no tokens to run") }
        if let bad = tokens.first(where: { $0 < 0 || $0 >= vocabSize }) {
            throw .usage("token id \(bad) is outside the vocabulary [0, \(vocabSize))")
        }
        if let limit = maxTokens, tokens.count > limit {
            throw .usage("\(tokens.count) tokens exceed the \(limit) positions this \(modelType) model covers")
        }
        // The output is [T, vocab] floats, a few [T, hidden] activations live beside it, and
        // attention scores are [T, T]: refuse what cannot fit in half the machine's memory
        // rather than abort while allocating it.
        let memory = Double(sysconf(Int32(_SC_PHYS_PAGES))) * Double(sysconf(Int32(_SC_PAGESIZE)))
        let perToken = Double(vocabSize + 16 * hiddenSize), t = Double(tokens.count)
        let need = 4 * (t * t + t * perToken)
        if memory > 0, need > memory / 2 {
            let most = Int((-perToken + (perToken * perToken + memory / 2).squareRoot()) / 2)
            throw .usage("\(tokens.count) tokens need about \(Int(need / 1e9)) GB for this model's activations and attention scores; "
                         + "this machine has \(Int(memory / 1e9)) GB (at most about \(most) tokens at once)")
        }
    }

    /// Runs one layer's FFN sub-layer in the requested mode.
    func ffnStep(_ layer: Int, _ x: Matrix, mode: FFNMode, routing: inout [RoutingStats]) throws(VFFNError) -> Matrix {
        switch mode {
        case .dense:
            return ffnSublayers[layer](x)
        case let .versatile(limit):
            guard let v = versatileLayers else {
                throw .usage("this is a dense checkpoint (no \"versatile_ffn\" in config.json); run it with --dense")
            }
            // A layer the conversion left dense runs as the dense model's.
            guard let block = v[layer] else {
                routing.append(RoutingStats(depthCounts: [], expertLoad: []))
                return ffnSublayers[layer](x)
            }
            let (y, stats) = block(x, depthLimit: limit)
            routing.append(stats)
            return y
        }
    }
}

/// One tensor of an FFN and how its intermediate neurons are laid out in it.
public struct FFNTensor: Sendable, Equatable {
    public let name: String
    public let shape: [Int]
    /// The axis that indexes the intermediate neurons; nil for an output bias, which every
    /// sub-expert shares whole.
    public let neuronAxis: Int?

    public init(_ name: String, shape: [Int], neuronAxis: Int?) {
        self.name = name
        self.shape = shape
        self.neuronAxis = neuronAxis
    }
}

/// The FFN tensors of one layer, as surgery needs them.
public struct FFNSite: Sendable {
    public let layer: Int
    /// Key prefix of the FFN module, e.g. `model.layers.3.mlp`; gates are named under it.
    public let prefix: String
    /// Every tensor of the FFN. The first is the input projection (gate_proj, c_fc,
    /// intermediate.dense) whose per-neuron weight vectors, of length d, describe what each neuron
    /// responds to; its dtype is the dtype the gates are stored in.
    public let tensors: [FFNTensor]

    public init(layer: Int, prefix: String, tensors: [FFNTensor]) {
        self.layer = layer
        self.prefix = prefix
        self.tensors = tensors
    }
}

/// Where every layer's FFN tensors are and how their neurons lie: what surgery slices and permutes.
public struct FFNLayout: Sendable {
    public let hiddenSize: Int
    public let intermediateSize: Int
    public let sites: [FFNSite]
    /// The checkpoint's block topology (SPEC 5), which a converted config records as `block`.
    public let topology: ModelFamily.Topology
    /// Gemma's embedding scale in the checkpoint's stored dtype (SPEC 5), which a converted
    /// config records for the remote code: transformers, loading in f32, would not round it.
    public var embeddingScale: Float? = nil
}

/// One model family: how to find its FFNs for surgery and how to load it for a forward pass.
/// Adding an architecture is one file with one of these, listed in `Architectures.all`.
public protocol Architecture: Sendable {
    /// The model types this architecture implements, each declared once (ModelFamily.swift).
    static var families: [ModelFamily] { get }
    static func ffnLayout(_ checkpoint: Checkpoint) throws(VFFNError) -> FFNLayout
    static func load(_ checkpoint: Checkpoint) throws(VFFNError) -> any LanguageModel
}

/// Every architecture this tool runs, and the families they declare: the one place that lists model types.
public enum Architectures {
    public static let all: [any Architecture.Type] = [Llama.self, GPT2.self, BERT.self]

    public static var supportedModelTypes: [String] { all.flatMap { $0.modelTypes } }

    public static func lookup(_ checkpoint: Checkpoint) throws(VFFNError) -> any Architecture.Type {
        let configPath = checkpoint.configPath
        guard let type = checkpoint.config["model_type"]?.stringValue else {
            throw .badInput(configPath, "has no \"model_type\"")
        }
        guard let arch = all.first(where: { $0.modelTypes.contains(type) }) else {
            throw .badInput(configPath, "model_type \"\(type)\" is not supported (supported: \(supportedModelTypes.joined(separator: ", ")))")
        }
        // A quantized checkpoint's weights are not the dense function's, and slicing packed
        // integers into sub-experts is meaningless: refused by name, before any tensor is read.
        if let q = checkpoint.config["quantization_config"], !q.isNull {
            let method = q["quant_method"]?.stringValue ?? (q["load_in_4bit"]?.boolValue == true || q["load_in_8bit"]?.boolValue == true ? "bitsandbytes" : nil)
            throw .badInput(configPath, "is a quantized checkpoint (quantization_config\(method.map { ", quant_method \"\($0)\"" } ?? "")); "
                            + "convert the unquantized model, stored as F32, F16 or BF16")
        }
        // The same weights packed without the config entry (a stripped GPTQ/AWQ upload, or
        // bitsandbytes' 4-bit state), named by the tensors that give them away.
        let packed = [(".qweight", "GPTQ/AWQ qweight"), (".qzeros", "GPTQ/AWQ qzeros"), (".g_idx", "GPTQ g_idx"),
                      (".weight.absmax", "bitsandbytes absmax"), (".weight.quant_map", "bitsandbytes quant_map"), (".weight_scale", "fp8 weight_scale")]
        if let (name, what) = checkpoint.tensorNames.lazy.compactMap({ n in packed.first { n.hasSuffix($0.0) }.map { (n, $0.1) } }).first {
            throw .badInput(checkpoint.path, "holds packed quantized weights (\(what): \"\(name)\"); convert the unquantized model, stored as F32, F16 or BF16")
        }
        return arch
    }

    /// Loads the model a checkpoint directory holds, with its VersatileFFN gates if converted.
    public static func load(_ checkpoint: Checkpoint) throws(VFFNError) -> any LanguageModel {
        try lookup(checkpoint).load(checkpoint)
    }
}

/// Typed reads from config.json with one clear error per missing or mistyped key.
public struct ConfigReader {
    public let json: JSON
    public let path: String

    public init(_ json: JSON, path: String) {
        self.json = json
        self.path = path
    }

    public func int(_ key: String) throws(VFFNError) -> Int {
        guard let v = json[key] else { throw .badInput(path, "missing \"\(key)\"") }
        guard let i = v.intValue else { throw .badInput(path, "\"\(key)\" is \(v.compact), expected an integer") }
        guard i > 0 else { throw .badInput(path, "\"\(key)\" is \(i), expected a positive integer") }
        return i
    }

    public func int(_ key: String, default value: Int) throws(VFFNError) -> Int {
        if json[key] == nil || json[key]!.isNull { return value }
        return try int(key)
    }

    public func double(_ key: String, default value: Double) throws(VFFNError) -> Double {
        guard let v = json[key], !v.isNull else { return value }
        guard let d = v.doubleValue else { throw .badInput(path, "\"\(key)\" is \(v.compact), expected a number") }
        return d
    }

    public func bool(_ key: String, default value: Bool) throws(VFFNError) -> Bool {
        guard let v = json[key], !v.isNull else { return value }
        guard let b = v.boolValue else { throw .badInput(path, "\"\(key)\" is \(v.compact), expected true or false") }
        return b
    }
}

/// The key prefix of a checkpoint's base model: the first of `candidates` ("" for none) under
/// which `probe` exists. Head classes save `transformer.h.0...` or `bert.encoder...`; base-model
/// saves (and many original uploads) have no prefix; both occur in real checkpoints.
func basePrefix(_ checkpoint: Checkpoint, candidates: [String], probe: String) throws(VFFNError) -> String {
    for c in candidates where checkpoint.contains(c.isEmpty ? probe : c + "." + probe) { return c }
    let names = candidates.map { $0.isEmpty ? "\"\(probe)\"" : "\"\($0).\(probe)\"" }.joined(separator: " or ")
    throw .badInput(checkpoint.path, "has no \(names): not a \(checkpoint.config["model_type"]?.stringValue ?? "?") checkpoint")
}

/// The output projection of a causal LM: `lm_head.weight`, or the token embedding when tied.
/// Some tied checkpoints still store `lm_head.weight` (a copy of the embedding); it is not read.
/// `bias`: the head has one (Phi's), kept when the weight is tied, as transformers ties weights only.
func languageModelHead(_ store: WeightStore, tied: Bool, embedding: Linear, name: String = DecoderTensor.head, bias: Bool = false) throws(VFFNError) -> Linear {
    let b = bias ? try store.floats(String(name.dropLast("weight".count)) + "bias", shape: [embedding.outFeatures]) : nil
    guard !tied, store.contains(name) else {
        if store.contains(name) { store.ignore(name) }
        return b.map { embedding.adding(bias: $0) } ?? embedding
    }
    return try store.matrix(name, out: embedding.outFeatures, in: embedding.inFeatures, bias: b)
}

/// Checks that every FFN tensor surgery will slice exists with the shape the config implies.
func checkSites(_ sites: [FFNSite], in checkpoint: Checkpoint) throws(VFFNError) {
    for site in sites {
        for t in site.tensors {
            let (name, shape) = (t.name, t.shape)
            guard let info = checkpoint.info(name) else {
                throw .badInput(checkpoint.path, "missing FFN tensor \"\(name)\" (expected shape \(shape))")
            }
            guard info.shape == shape else {
                throw .badInput(checkpoint.shard(of: name)!.path, "tensor \"\(name)\" has shape \(info.shape), expected \(shape)")
            }
            guard info.dtype.isComputeFloat else {
                throw .badInput(checkpoint.shard(of: name)!.path, "tensor \"\(name)\" has dtype \(info.dtype); FFN weights must be F32, F16 or BF16")
            }
        }
    }
}

/// The gates named in config.json's `versatile_ffn`, wrapped around each layer's sub-layer.
/// `basePrefixes` are the architecture's base-model prefixes ("transformer", "bert"): a checkpoint
/// saved again through another class (GPT2LMHeadModel adds `transformer.`, BertModel drops
/// `bert.`, as a transformers trainer does on save) holds the gates under the other spelling
/// than config.json records, and they are found there; likewise a text tower's gates under
/// another of `bases.all`, its base module's spellings, than `bases.here`.
func loadVersatileLayers(_ store: WeightStore, sublayers: [FFNSublayer], hiddenSize d: Int, intermediateSize I: Int, topology: ModelFamily.Topology,
                         basePrefixes: [String] = [], bases: (all: [String], here: String)? = nil) throws(VFFNError) -> [VersatileFFNLayer?]? {
    let path = store.checkpoint.configPath
    guard let s = try VersatileFFNSettings.read(from: store.checkpoint.config, path: path) else { return nil }
    // The gates were made for the block recorded; a config edited since (GPT-NeoX's
    // use_parallel_residual) would run them in another one.
    if let recorded = store.checkpoint.config[VersatileFFNSettings.key]?["block"]?.stringValue, recorded != topology.rawValue {
        throw .badInput(path, "versatile_ffn.block is \"\(recorded)\" but this config.json makes \(topology.rawValue) blocks; the gates were made for the recorded one")
    }
    let gates = s.gateTensors.sorted { $0.layer < $1.layer }
    guard Set(gates.map(\.layer)).count == gates.count, gates.allSatisfy({ sublayers.indices.contains($0.layer) }) else {
        throw .badInput(path, "versatile_ffn.gate_tensors must name layers of 0..<\(sublayers.count), each at most once")
    }
    for g in gates where I % s.shape(of: g).numExperts != 0 {
        throw .badInput(path, "versatile_ffn.num_experts \(s.shape(of: g).numExperts) of layer \(g.layer) does not divide the intermediate size \(I)")
    }
    func resolve(_ name: String) -> String {
        let checkpoint = store.checkpoint
        if checkpoint.contains(name) { return name }
        for p in basePrefixes {
            if name.hasPrefix(p + "."), checkpoint.contains(String(name.dropFirst(p.count + 1))) { return String(name.dropFirst(p.count + 1)) }
            if checkpoint.contains(p + "." + name) { return p + "." + name }
        }
        // A text tower's gates recorded under another spelling of its base module.
        if let bases, let from = bases.all.sorted(by: { $0.count > $1.count }).first(where: { name.hasPrefix($0 + ".") }) {
            let respelled = bases.here + name.dropFirst(from.count)
            if checkpoint.contains(respelled) { return respelled }
        }
        return name // reported missing by the store
    }
    var layers = [VersatileFFNLayer?](repeating: nil, count: sublayers.count)
    for g in gates {
        let (n, k, depth) = s.shape(of: g)
        layers[g.layer] = VersatileFFNLayer(
            sublayer: sublayers[g.layer],
            expertGate: Linear(weight: try store.floats(resolve(g.expertGate), shape: [n, d]), outFeatures: n, inFeatures: d),
            depthPredictor: Linear(weight: try store.floats(resolve(g.depthPredictor), shape: [depth, d]), outFeatures: depth, inFeatures: d),
            topK: k)
    }
    return layers
}

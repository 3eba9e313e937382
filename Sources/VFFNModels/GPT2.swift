import Foundation
import VFFNFormats

/// GPT-2: learned positions, pre-norm LayerNorm blocks, fused q/k/v, a tanh-GELU FFN, and every
/// projection a `Conv1D` stored `[in, out]`.
public enum GPT2: Architecture {
    public static let families = [
        ModelFamily("gpt2", output: .logits, autoClass: "AutoModelForCausalLM", remoteCodeClass: "VersatileGPT2LMHeadModel",
                    notInOLMo: "learned positions, LayerNorm with biases and a GELU FFN"),
    ]

    /// The config.json keys GPT-2's forward pass reads, with transformers' defaults.
    public struct Config: Sendable {
        public var vocabSize: Int
        public var hiddenSize: Int          // n_embd
        public var intermediateSize: Int    // n_inner, 4 * n_embd when null
        public var numLayers: Int
        public var numHeads: Int
        public var maxPositions: Int        // n_positions
        public var layerNormEps: Float
        public var activation: Activation
        public var scaleAttentionWeights: Bool
        /// Also divide attention scores by layer index + 1 (`scale_attn_by_inverse_layer_idx`).
        public var scaleByLayer: Bool
        public var tieWordEmbeddings: Bool

        public init(_ json: JSON, path: String) throws(VFFNError) {
            let r = ConfigReader(json, path: path)
            vocabSize = try r.int("vocab_size")
            hiddenSize = try r.int("n_embd")
            intermediateSize = try r.int("n_inner", default: 4 * hiddenSize)
            numLayers = try r.int("n_layer")
            numHeads = try r.int("n_head")
            guard hiddenSize % numHeads == 0 else {
                throw .badInput(path, "n_embd \(hiddenSize) is not a multiple of n_head \(numHeads)")
            }
            maxPositions = try r.int("n_positions", default: try r.int("n_ctx", default: 1024))
            layerNormEps = Float(try r.double("layer_norm_epsilon", default: 1e-5))
            let act = json["activation_function"]?.stringValue ?? "gelu_new"
            guard let a = Activation(huggingFaceName: act) else {
                throw .badInput(path, "activation_function \"\(act)\" is not supported (\(Activation.supportedNames.joined(separator: ", ")))")
            }
            activation = a
            scaleAttentionWeights = try r.bool("scale_attn_weights", default: true)
            scaleByLayer = try r.bool("scale_attn_by_inverse_layer_idx", default: false)
            tieWordEmbeddings = try r.bool("tie_word_embeddings", default: true)
            guard try !r.bool("add_cross_attention", default: false) else {
                throw .badInput(path, "add_cross_attention is true; GPT-2 with cross-attention is not supported")
            }
        }

        public var headDim: Int { hiddenSize / numHeads }
    }

    struct Layer: Sendable {
        let inputNorm: Norm          // ln_1
        let q, k, v: Linear          // column blocks of c_attn [d, 3d]
        let o: Linear                // attn.c_proj [d, d]
    }

    /// A loaded GPT-2, dense or VersatileFFN.
    public struct Model: LanguageModel {
        public let config: Config
        let tokenEmbedding: Linear     // wte [vocab, d]
        let positionEmbedding: Linear  // wpe [n_positions, d]
        let layers: [Layer]
        public let ffnSublayers: [FFNSublayer]
        public let versatileLayers: [VersatileFFNLayer?]?
        let finalNorm: Norm            // ln_f
        let lmHead: Linear             // [vocab, d], wte when tied

        public var modelType: String { "gpt2" }
        public var outputKind: OutputKind { .logits }
        public var vocabSize: Int { config.vocabSize }
        public var hiddenSize: Int { config.hiddenSize }
        public var maxTokens: Int? { config.maxPositions }
        public var trainedPositions: Int? { config.maxPositions }

        public func forward(_ tokens: [Int], mode: FFNMode, trace: Bool) throws(VFFNError) -> ForwardResult {
            try checkTokens(tokens)
            let d = config.hiddenSize, H = config.numHeads, hd = config.headDim
            var x = Matrix(zeros: tokens.count, d)
            for (t, id) in tokens.enumerated() {
                let word = tokenEmbedding.row(id), position = positionEmbedding.row(t)
                for c in 0..<d { x.data[t * d + c] = word[c] + position[c] }
            }
            var traced: [Matrix] = [], ffnInputs: [Matrix] = []
            var routing: [RoutingStats] = []
            for (i, layer) in layers.enumerated() {
                let h = layer.inputNorm(x)
                var scale: Float = config.scaleAttentionWeights ? 1 / Float(hd).squareRoot() : 1
                if config.scaleByLayer { scale /= Float(i + 1) }
                let a = attention(q: layer.q(h), k: layer.k(h), v: layer.v(h), heads: H, kvHeads: H, headDim: hd,
                                  scale: scale, mask: .causal(window: nil))
                x = x + layer.o(a)
                if trace { ffnInputs.append(x) }
                x = try ffnStep(i, x, mode: mode, routing: &routing)
                if trace { traced.append(x) }
            }
            return ForwardResult(output: lmHead(finalNorm(x)), layerOutputs: traced, ffnInputs: ffnInputs, routing: routing)
        }
    }

    static func config(_ checkpoint: Checkpoint) throws(VFFNError) -> Config {
        try Config(checkpoint.config, path: checkpoint.configPath)
    }

    /// `transformer` for GPT2LMHeadModel saves, none for GPT2Model saves and OpenAI's upload.
    static func prefix(_ checkpoint: Checkpoint) throws(VFFNError) -> String {
        try basePrefix(checkpoint, candidates: ["transformer", ""], probe: "wte.weight")
    }

    /// The FFN's two Conv1D projections under `h.N.mlp`, named once for the layout and for loading.
    static let ffnInput = "c_fc", ffnOutput = "c_proj"

    public static func ffnLayout(_ checkpoint: Checkpoint) throws(VFFNError) -> FFNLayout {
        let c = try config(checkpoint)
        let base = try prefix(checkpoint)
        let d = c.hiddenSize, I = c.intermediateSize
        let sites = (0..<c.numLayers).map { i in
            let p = (base.isEmpty ? "" : base + ".") + "h.\(i).mlp"
            // Conv1D stores [in, out]: neurons are c_fc's columns and c_proj's rows.
            return FFNSite(layer: i, prefix: p, tensors: [
                FFNTensor("\(p).\(ffnInput).weight", shape: [d, I], neuronAxis: 1), FFNTensor("\(p).\(ffnInput).bias", shape: [I], neuronAxis: 0),
                FFNTensor("\(p).\(ffnOutput).weight", shape: [I, d], neuronAxis: 0), FFNTensor("\(p).\(ffnOutput).bias", shape: [d], neuronAxis: nil),
            ])
        }
        try checkSites(sites, in: checkpoint)
        return FFNLayout(hiddenSize: d, intermediateSize: I, sites: sites, topology: .preNorm)
    }

    public static func load(_ checkpoint: Checkpoint) throws(VFFNError) -> any LanguageModel {
        let c = try config(checkpoint)
        let store = WeightStore(checkpoint)
        let root = store.scope(try prefix(checkpoint))
        let d = c.hiddenSize, I = c.intermediateSize
        let wte = try root.scope("wte").linear(out: c.vocabSize, in: d, bias: false)
        let wpe = try root.scope("wpe").linear(out: c.maxPositions, in: d, bias: false)
        var layers: [Layer] = []
        var sublayers: [FFNSublayer] = []
        for i in 0..<c.numLayers {
            let l = root.scope("h.\(i)")
            let attn = l.scope("attn")
            // The causal-mask buffers older transformers saved; the mask is implied, not read.
            for buffer in ["bias", "masked_bias"] where attn.contains(buffer) { store.ignore(attn.name(buffer)) }
            let qkv = try attn.scope("c_attn").conv1D(out: 3 * d, in: d)
            layers.append(Layer(
                inputNorm: try l.scope("ln_1").layerNorm(count: d, eps: c.layerNormEps),
                q: qkv.rows(0..<d), k: qkv.rows(d..<2 * d), v: qkv.rows(2 * d..<3 * d),
                o: try attn.scope("c_proj").conv1D(out: d, in: d)))
            let mlp = l.scope("mlp")
            let ffn = UngatedFeedForward(
                input: try mlp.scope(ffnInput).conv1D(out: I, in: d),
                output: try mlp.scope(ffnOutput).conv1D(out: d, in: I),
                activation: c.activation)
            sublayers.append(FFNSublayer(placement: .preNorm, norm: try l.scope("ln_2").layerNorm(count: d, eps: c.layerNormEps), ffn: ffn))
        }
        let finalNorm = try root.scope("ln_f").layerNorm(count: d, eps: c.layerNormEps)
        let lmHead = try languageModelHead(store, tied: c.tieWordEmbeddings, embedding: wte)
        let versatile = try loadVersatileLayers(store, sublayers: sublayers, hiddenSize: d, intermediateSize: I, topology: .preNorm, basePrefixes: ["transformer"])
        try store.requireAllUsed()
        return Model(config: c, tokenEmbedding: wte, positionEmbedding: wpe, layers: layers, ffnSublayers: sublayers,
                     versatileLayers: versatile, finalNorm: finalNorm, lmHead: lmHead)
    }
}

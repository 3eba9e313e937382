import Foundation
import VFFNFormats

/// BERT, the encoder: word + position + token-type embeddings with a LayerNorm, bidirectional
/// attention, post-norm layers (`S(x) = LayerNorm(x + f(x))`) and an exact-GELU FFN. `run`
/// returns the last hidden states; pooler and task heads are carried through, not run.
public enum BERT: Architecture {
    public static let families = [
        ModelFamily("bert", topology: .postNorm, output: .hiddenStates, autoClass: "AutoModel", remoteCodeClass: "VersatileBertModel",
                    notInOLMo: "an encoder's post-norm layers and bidirectional attention"),
    ]

    /// The config.json keys BERT's forward pass reads, with transformers' defaults.
    public struct Config: Sendable {
        public var vocabSize: Int
        public var hiddenSize: Int
        public var intermediateSize: Int
        public var numLayers: Int
        public var numHeads: Int
        public var maxPositions: Int
        public var typeVocabSize: Int
        public var layerNormEps: Float
        public var activation: Activation

        public init(_ json: JSON, path: String) throws(VFFNError) {
            let r = ConfigReader(json, path: path)
            vocabSize = try r.int("vocab_size")
            hiddenSize = try r.int("hidden_size")
            intermediateSize = try r.int("intermediate_size")
            numLayers = try r.int("num_hidden_layers")
            numHeads = try r.int("num_attention_heads")
            guard hiddenSize % numHeads == 0 else {
                throw .badInput(path, "hidden_size \(hiddenSize) is not a multiple of num_attention_heads \(numHeads)")
            }
            maxPositions = try r.int("max_position_embeddings", default: 512)
            typeVocabSize = try r.int("type_vocab_size", default: 2)
            layerNormEps = Float(try r.double("layer_norm_eps", default: 1e-12))
            let act = json["hidden_act"]?.stringValue ?? "gelu"
            guard let a = Activation(huggingFaceName: act) else {
                throw .badInput(path, "hidden_act \"\(act)\" is not supported (\(Activation.supportedNames.joined(separator: ", ")))")
            }
            activation = a
            let positions = json["position_embedding_type"]?.stringValue ?? "absolute"
            guard positions == "absolute" else {
                throw .badInput(path, "position_embedding_type \"\(positions)\" is not supported (only absolute)")
            }
            guard try !r.bool("is_decoder", default: false), try !r.bool("add_cross_attention", default: false) else {
                throw .badInput(path, "BERT as a decoder (is_decoder or add_cross_attention) is not supported")
            }
        }

        public var headDim: Int { hiddenSize / numHeads }
    }

    struct Layer: Sendable {
        let q, k, v, o: Linear           // attention.self.{query,key,value}, attention.output.dense
        let attentionNorm: Norm          // attention.output.LayerNorm
    }

    /// A loaded BERT encoder, dense or VersatileFFN.
    public struct Model: LanguageModel {
        public let config: Config
        let wordEmbedding: Linear        // [vocab, d]
        let positionEmbedding: Linear    // [max_positions, d]
        let tokenTypeEmbedding: Linear   // [type_vocab, d]; every token is type 0
        let embeddingNorm: Norm
        let layers: [Layer]
        public let ffnSublayers: [FFNSublayer]
        public let versatileLayers: [VersatileFFNLayer?]?

        public var modelType: String { "bert" }
        public var outputKind: OutputKind { .hiddenStates }
        public var vocabSize: Int { config.vocabSize }
        public var hiddenSize: Int { config.hiddenSize }
        public var maxTokens: Int? { config.maxPositions }
        public var trainedPositions: Int? { config.maxPositions }

        public func forward(_ tokens: [Int], mode: FFNMode, trace: Bool) throws(VFFNError) -> ForwardResult {
            try checkTokens(tokens)
            let d = config.hiddenSize, H = config.numHeads, hd = config.headDim
            var x = Matrix(zeros: tokens.count, d)
            let type0 = tokenTypeEmbedding.row(0)
            for (t, id) in tokens.enumerated() {
                // transformers' order: (word + token type) + position.
                let word = wordEmbedding.row(id), position = positionEmbedding.row(t)
                for c in 0..<d { x.data[t * d + c] = (word[c] + type0[c]) + position[c] }
            }
            x = embeddingNorm(x)
            var traced: [Matrix] = [], ffnInputs: [Matrix] = []
            var routing: [RoutingStats] = []
            for (i, layer) in layers.enumerated() {
                let a = attention(q: layer.q(x), k: layer.k(x), v: layer.v(x), heads: H, kvHeads: H, headDim: hd,
                                  scale: 1 / Float(hd).squareRoot(), mask: .bidirectional)
                x = layer.attentionNorm(layer.o(a) + x)
                if trace { ffnInputs.append(x) }
                x = try ffnStep(i, x, mode: mode, routing: &routing)
                if trace { traced.append(x) }
            }
            return ForwardResult(output: x, layerOutputs: traced, ffnInputs: ffnInputs, routing: routing)
        }
    }

    static func config(_ checkpoint: Checkpoint) throws(VFFNError) -> Config {
        try Config(checkpoint.config, path: checkpoint.configPath)
    }

    /// `bert` for BertFor* head classes, none for BertModel saves (sentence-transformers).
    static func prefix(_ checkpoint: Checkpoint) throws(VFFNError) -> String {
        try basePrefix(checkpoint, candidates: ["bert", ""], probe: "embeddings.word_embeddings.weight")
    }

    /// The FFN's two projections under `encoder.layer.N`, named once for the layout and for loading.
    static let ffnInput = "intermediate.dense", ffnOutput = "output.dense"

    public static func ffnLayout(_ checkpoint: Checkpoint) throws(VFFNError) -> FFNLayout {
        let c = try config(checkpoint)
        let base = try prefix(checkpoint)
        let d = c.hiddenSize, I = c.intermediateSize
        // The FFN sub-layer spans two modules (intermediate, output), so its gates hang off the layer.
        let sites = (0..<c.numLayers).map { i in
            let p = (base.isEmpty ? "" : base + ".") + "encoder.layer.\(i)"
            return FFNSite(layer: i, prefix: p, tensors: [
                FFNTensor("\(p).\(ffnInput).weight", shape: [I, d], neuronAxis: 0), FFNTensor("\(p).\(ffnInput).bias", shape: [I], neuronAxis: 0),
                FFNTensor("\(p).\(ffnOutput).weight", shape: [d, I], neuronAxis: 1), FFNTensor("\(p).\(ffnOutput).bias", shape: [d], neuronAxis: nil),
            ])
        }
        try checkSites(sites, in: checkpoint)
        return FFNLayout(hiddenSize: d, intermediateSize: I, sites: sites, topology: .postNorm)
    }

    public static func load(_ checkpoint: Checkpoint) throws(VFFNError) -> any LanguageModel {
        let c = try config(checkpoint)
        let store = WeightStore(checkpoint)
        let base = try prefix(checkpoint)
        let root = store.scope(base)
        let d = c.hiddenSize, I = c.intermediateSize, eps = c.layerNormEps
        let emb = root.scope("embeddings")
        // Index buffers (I64) that some transformers versions saved, the pooler, and task heads
        // (cls.*, classifier.*, ...) outside the base model: carried by convert, not run.
        for buffer in ["position_ids", "token_type_ids"] where emb.contains(buffer) { store.ignore(emb.name(buffer)) }
        let pooler = root.name("pooler.")
        store.ignore { $0.hasPrefix(pooler) || (!base.isEmpty && !$0.hasPrefix(base + ".")) }
        let words = try emb.scope("word_embeddings").linear(out: c.vocabSize, in: d, bias: false)
        let positions = try emb.scope("position_embeddings").linear(out: c.maxPositions, in: d, bias: false)
        let types = try emb.scope("token_type_embeddings").linear(out: c.typeVocabSize, in: d, bias: false)
        let embeddingNorm = try emb.scope("LayerNorm").layerNorm(count: d, eps: eps)
        var layers: [Layer] = []
        var sublayers: [FFNSublayer] = []
        for i in 0..<c.numLayers {
            let l = root.scope("encoder.layer.\(i)")
            let attn = l.scope("attention")
            layers.append(Layer(
                q: try attn.scope("self.query").linear(out: d, in: d, bias: true),
                k: try attn.scope("self.key").linear(out: d, in: d, bias: true),
                v: try attn.scope("self.value").linear(out: d, in: d, bias: true),
                o: try attn.scope("output.dense").linear(out: d, in: d, bias: true),
                attentionNorm: try attn.scope("output.LayerNorm").layerNorm(count: d, eps: eps)))
            let ffn = UngatedFeedForward(
                input: try l.scope(ffnInput).linear(out: I, in: d, bias: true),
                output: try l.scope(ffnOutput).linear(out: d, in: I, bias: true),
                activation: c.activation)
            sublayers.append(FFNSublayer(placement: .postNorm, norm: try l.scope("output.LayerNorm").layerNorm(count: d, eps: eps), ffn: ffn))
        }
        let versatile = try loadVersatileLayers(store, sublayers: sublayers, hiddenSize: d, intermediateSize: I, topology: .postNorm, basePrefixes: ["bert"])
        try store.requireAllUsed()
        return Model(config: c, wordEmbedding: words, positionEmbedding: positions, tokenTypeEmbedding: types,
                     embeddingNorm: embeddingNorm, layers: layers, ffnSublayers: sublayers, versatileLayers: versatile)
    }
}

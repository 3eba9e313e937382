/// The tensors of a Llama-shaped decoder layer under their Hugging Face names, and llama.cpp's
/// name for each (gguf-py's `tensor_mapping.py`), spelled here once. The forward's loader and
/// surgery's layout (VFFNModels), the OLMo export (VFFNSurgery) and the GGUF reader, which sits
/// in this module below them all, read these instead of spelling the names again.
public enum DecoderTensor: String, CaseIterable, Sendable {
    case inputNorm = "input_layernorm"
    case q = "self_attn.q_proj"
    case k = "self_attn.k_proj"
    case v = "self_attn.v_proj"
    case o = "self_attn.o_proj"
    /// Phi-3's fused [q | k | v].
    case qkv = "self_attn.qkv_proj"
    /// Qwen3's per-head norms.
    case qNorm = "self_attn.q_norm"
    case kNorm = "self_attn.k_norm"
    /// The FFN's norm in pre-norm families; OLMo 2 puts it on the attention output instead.
    case postAttentionNorm = "post_attention_layernorm"
    /// OLMo 2's and Gemma 2's norm on the FFN output.
    case postFeedforwardNorm = "post_feedforward_layernorm"
    /// Gemma 2's norm before the FFN (its post_attention_layernorm is on the attention output).
    case preFeedforwardNorm = "pre_feedforward_layernorm"
    case gate = "mlp.gate_proj"
    case up = "mlp.up_proj"
    case down = "mlp.down_proj"
    /// Phi-3's fused [gate; up].
    case gateUp = "mlp.gate_up_proj"
    /// StarCoder2's ungated projections.
    case fcIn = "mlp.c_fc"
    case fcOut = "mlp.c_proj"

    /// Where layer `i` lives in a causal LM, and its FFN module (where the gates are named).
    public static func layer(_ i: Int) -> String { DecoderNames.causalLM.layer(i) }
    public static let ffnModule = "mlp"
    public static let embedding = DecoderNames.causalLM.embedding
    public static let finalNorm = DecoderNames.causalLM.finalNorm
    public static let head = DecoderNames.causalLM.head

    /// `name` below layer `i` of a causal LM, e.g. `model.layers.3.mlp.down_proj`.
    public func at(_ i: Int) -> String { DecoderNames.causalLM.at(self, i) }

    /// The leaf under the FFN module (`down_proj`), for tensors inside it.
    public var ffnLeaf: String? {
        rawValue.hasPrefix(Self.ffnModule + ".") ? String(rawValue.dropFirst(Self.ffnModule.count + 1)) : nil
    }

    /// llama.cpp's per-layer name (`blk.N.<this>`), for the tensors GGUF files carry.
    public var gguf: String? {
        switch self {
        case .inputNorm: return "attn_norm"
        case .q: return "attn_q"
        case .k: return "attn_k"
        case .v: return "attn_v"
        case .o: return "attn_output"
        case .qNorm: return "attn_q_norm"
        case .kNorm: return "attn_k_norm"
        case .postAttentionNorm: return "ffn_norm"
        case .gate: return "ffn_gate"
        case .up: return "ffn_up"
        case .down: return "ffn_down"
        case .qkv, .gateUp, .fcIn, .fcOut, .postFeedforwardNorm, .preFeedforwardNorm: return nil
        }
    }

    /// The tensor llama.cpp's per-layer name stands for.
    public static let byGGUF: [String: DecoderTensor] = Dictionary(uniqueKeysWithValues: allCases.compactMap { t in t.gguf.map { ($0, t) } })

    /// llama.cpp's whole-model tensors and their Hugging Face names.
    public static let ggufGlobals = ["token_embd.weight": embedding, "output_norm.weight": finalNorm, "output.weight": head]
}

/// Where a decoder's tensors sit in its checkpoint: under `model.` in a causal LM, or under a
/// multimodal wrapper's text tower (Gemma3ForConditionalGeneration saves
/// `language_model.model.layers.N...`, and transformers 5 names the same module
/// `model.language_model.layers.N...` in memory, as some tools then save it), and the families
/// that spell some tensors their own way (GPT-NeoX's `gpt_neox.embed_in`, Phi's `self_attn.dense`).
public struct DecoderNames: Sendable, Equatable {
    /// The module holding the embedding, `layers` and the final norm.
    public let base: String
    public let head: String
    let embeddingLeaf: String
    let finalNormLeaf: String
    /// The family's own names for tensors of a layer, where they differ from `DecoderTensor`'s.
    let renamed: [DecoderTensor: String]

    public init(base: String, head: String, embedding: String = "embed_tokens", finalNorm: String = "norm",
                renamed: [DecoderTensor: String] = [:]) {
        self.base = base
        self.head = head
        self.embeddingLeaf = embedding
        self.finalNormLeaf = finalNorm
        self.renamed = renamed
    }

    public static let causalLM = DecoderNames(base: "model", head: "lm_head.weight")
    /// GPT-NeoX (Pythia): `gpt_neox.embed_in`, fused per-head `attention.query_key_value`, the
    /// untied head `embed_out`.
    public static let gptNeoX = DecoderNames(base: "gpt_neox", head: "embed_out.weight", embedding: "embed_in", finalNorm: "final_layer_norm",
                                             renamed: [.qkv: "attention.query_key_value", .o: "attention.dense",
                                                       .fcIn: "mlp.dense_h_to_4h", .fcOut: "mlp.dense_4h_to_h"])
    /// Phi-1/1.5/2: `self_attn.dense`, `fc1`/`fc2`, `q_layernorm`/`k_layernorm`, `final_layernorm`.
    public static let phi = DecoderNames(base: "model", head: "lm_head.weight", finalNorm: "final_layernorm",
                                         renamed: [.o: "self_attn.dense", .fcIn: "mlp.fc1", .fcOut: "mlp.fc2",
                                                   .qNorm: "self_attn.q_layernorm", .kNorm: "self_attn.k_layernorm"])
    /// Every spelling of a decoder's output head.
    public static var heads: Set<String> { Set(([causalLM, gptNeoX, phi] + textTowers).map(\.head)) }
    /// A multimodal wrapper's text tower: in the original layout, in transformers 5's, and as
    /// transformers 5.23 saves a subclass of the wrapper (a trained remote-code model), which
    /// it reads back as the second.
    public static let textTowers = [DecoderNames(base: "language_model.model", head: "language_model.lm_head.weight"),
                                    DecoderNames(base: "model.language_model", head: "lm_head.weight"),
                                    DecoderNames(base: "model.language_model.model", head: "lm_head.weight")]

    public func layer(_ i: Int) -> String { "\(base).layers.\(i)" }
    public var embedding: String { base + "." + embeddingLeaf + ".weight" }
    public var finalNorm: String { base + "." + finalNormLeaf + ".weight" }
    /// The tensor's name below a layer (`self_attn.o_proj`, or the family's own).
    public func leaf(_ tensor: DecoderTensor) -> String { renamed[tensor] ?? tensor.rawValue }
    public func at(_ tensor: DecoderTensor, _ i: Int) -> String { layer(i) + "." + leaf(tensor) }
}

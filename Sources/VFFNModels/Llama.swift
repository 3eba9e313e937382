import Foundation
import VFFNFormats

/// Llama, Mistral, Qwen2, Qwen3, SmolLM3, Granite, OLMo, StarCoder2 and Phi-3: pre-norm blocks,
/// rotate-half RoPE, grouped-query attention, and a SwiGLU FFN (StarCoder2: an ungated GELU one
/// with biases). They differ only in config flags (q/k/v biases, sliding windows, Qwen3's
/// per-head q/k norms, SmolLM3's layers without RoPE, Granite's four multipliers, OLMo's
/// parameter-free LayerNorm and clip_qkv, StarCoder2's LayerNorm with bias, Phi-3's fused
/// qkv_proj and gate_up_proj, partial rotary and longrope), read into `Llama.Config`.
public enum Llama: Architecture {
    /// Each model type this file runs, declared once: the facts other modules read
    /// (`ModelFamily`) and how its config is read and its layers run (`DecoderTraits`).
    static let declarations: [(family: ModelFamily, traits: DecoderTraits)] = [
        (ModelFamily("llama", output: .logits, autoClass: "AutoModelForCausalLM", remoteCodeClass: "VersatileLlamaForCausalLM", notInOLMo: nil),
         DecoderTraits()),
        (ModelFamily("mistral", output: .logits, autoClass: "AutoModelForCausalLM", remoteCodeClass: "VersatileMistralForCausalLM", notInOLMo: nil),
         DecoderTraits(windows: .everyLayer, slidingWindowDefault: 4096)),
        (ModelFamily("qwen2", output: .logits, autoClass: "AutoModelForCausalLM", remoteCodeClass: "VersatileQwen2ForCausalLM", notInOLMo: nil),
         DecoderTraits(qkvBias: .always, outputBias: .never, windows: .fromMaxWindowLayers)),
        (ModelFamily("qwen3", output: .logits, autoClass: "AutoModelForCausalLM", remoteCodeClass: "VersatileQwen3ForCausalLM",
                     notInOLMo: "per-head q/k norms (OLMo's block has none; OLMo 2's span the whole projection)"),
         // Qwen3's MLP has no bias switch: a stray mlp_bias is ignored, as transformers does.
         DecoderTraits(mlpBias: .never, qkNormPerHead: true, headDimDefault: 128, windows: .fromMaxWindowLayers)),
        (ModelFamily("smollm3", output: .logits, autoClass: "AutoModelForCausalLM", remoteCodeClass: "VersatileSmolLM3ForCausalLM",
                     notInOLMo: "layers without rotary embeddings (OLMo rotates every layer)"),
         DecoderTraits(windows: .noRopeLayers, noRopeLayers: true, tiedByDefault: true, ropeThetaDefault: 2_000_000)),
        (ModelFamily("granite", topology: .scaledPreNorm, output: .logits, autoClass: "AutoModelForCausalLM", remoteCodeClass: "VersatileGraniteForCausalLM",
                     notInOLMo: "embedding, attention, residual and logits multipliers"),
         DecoderTraits(multipliers: true)),
        // OLMo 1 and 1.7 as transformers holds them; the export writes them back in OLMo's own
        // terms (layer_norm_type default without affine, clip_qkv).
        (ModelFamily("olmo", output: .logits, autoClass: "AutoModelForCausalLM", remoteCodeClass: "VersatileOlmoForCausalLM", notInOLMo: nil),
         DecoderTraits(norm: .layerWithoutParameters(eps: 1e-5), clipQKV: true)),
        // StarCoder2 says use_bias for every projection, attention and MLP alike.
        (ModelFamily("starcoder2", output: .logits, autoClass: "AutoModelForCausalLM", remoteCodeClass: "VersatileStarcoder2ForCausalLM",
                     notInOLMo: "an ungated GELU FFN and LayerNorms with biases"),
         DecoderTraits(qkvBias: .key("use_bias", default: true), outputBias: .key("use_bias", default: true), mlpBias: .key("use_bias", default: true),
                       norm: .layerWithBias(epsKey: "norm_epsilon", defaultEps: 1e-5), ffn: .ungated(defaultActivation: "gelu_pytorch_tanh"),
                       windows: .everyLayer, tiedByDefault: true)),
        // Phi-3, 3.5-mini and Phi-4-mini. Phi3Config reads its early checkpoints' "su" and "yarn"
        // as longrope, and pins the original context to its top-level key (4096 when absent).
        (ModelFamily("phi3", output: .logits, autoClass: "AutoModelForCausalLM", remoteCodeClass: "VersatilePhi3ForCausalLM",
                     notInOLMo: "partial rotary embeddings and longrope scaling"),
         DecoderTraits(norm: .rms(defaultEps: 1e-5), ffn: .fusedGateUp, fusedQKV: true, windows: .everyLayer,
                       ropeAliases: ["su": "longrope", "yarn": "longrope"], originalContextDefault: 4096)),
        // OLMo 2: norms on the attention and FFN outputs instead of their inputs, and q/k norms
        // over the whole projection (heads x head_dim) before the reshape and RoPE.
        // Gemma 1: RMSNorm by 1 + w, embeddings times sqrt(hidden_size), GeGLU with the tanh GELU.
        (ModelFamily("gemma", output: .logits, autoClass: "AutoModelForCausalLM", remoteCodeClass: "VersatileGemmaForCausalLM",
                     notInOLMo: "1 + w RMSNorms, GeGLU and scaled embeddings"),
         DecoderTraits(norm: .rmsOnePlusWeight(defaultEps: 1e-6), ffn: .geglu, headDimDefault: 256, tiedByDefault: true,
                       embeddingsTimesSqrtHidden: true)),
        // Gemma 2: the sandwich (four norms per layer), attention scaled by
        // query_pre_attn_scalar^-1/2, attention-score and final-logit soft-caps, windows on
        // alternate layers, `hidden_activation`.
        (ModelFamily("gemma2", topology: .sandwich, output: .logits, autoClass: "AutoModelForCausalLM", remoteCodeClass: "VersatileGemma2ForCausalLM",
                     notInOLMo: "sandwich norms, soft-caps and GeGLU"),
         DecoderTraits(norm: .rmsOnePlusWeight(defaultEps: 1e-6), ffn: .geglu, headDimDefault: 256, windows: .evenLayers, tiedByDefault: true,
                       embeddingsTimesSqrtHidden: true, sandwich: true, slidingWindowDefault: 4096, softcapDefaults: (50, 30))),
        // Gemma 3's text model (Gemma3ForCausalLM: 270m, 1b): Gemma 2 plus per-head q/k norms by
        // 1 + w, five sliding layers to one full (`sliding_window_pattern`), local and global rope
        // bases, no soft-caps unless the config sets them.
        (ModelFamily("gemma3_text", topology: .sandwich, output: .logits, autoClass: "AutoModelForCausalLM", remoteCodeClass: "VersatileGemma3ForCausalLM",
                     notInOLMo: "sandwich norms, GeGLU and per-layer-type rotary embeddings"),
         gemma3Text),
        // Gemma 3 4B, 12B and 27B ship as Gemma3ForConditionalGeneration: the same text model
        // inside, converted in place; the vision tower stays as it is.
        (ModelFamily("gemma3", topology: .sandwich, output: .logits, autoClass: "AutoModelForImageTextToText",
                     remoteCodeClass: "VersatileGemma3ForConditionalGeneration", notInOLMo: "a vision tower beside the text model"),
         { var t = gemma3Text; t.textTower = true; return t }()),
        // OLMo's own trainer writes OLMo 2 as norm_after with full-width q/k norms: the export does too.
        (ModelFamily("olmo2", topology: .outputNorm, output: .logits, autoClass: "AutoModelForCausalLM", remoteCodeClass: "VersatileOlmo2ForCausalLM",
                     notInOLMo: nil),
         DecoderTraits(mlpBias: .never, norm: .rms(defaultEps: 1e-5), outputNorms: true, qkNormFullWidth: true)),
        // OLMo 3: OLMo 2 with three sliding layers to one full, and YaRN on the full ones only.
        (ModelFamily("olmo3", topology: .outputNorm, output: .logits, autoClass: "AutoModelForCausalLM", remoteCodeClass: "VersatileOlmo3ForCausalLM",
                     notInOLMo: "sliding-window layers with a rotary embedding of their own"),
         DecoderTraits(mlpBias: .never, norm: .rms(defaultEps: 1e-5), outputNorms: true, qkNormFullWidth: true,
                       windows: .pattern(key: nil, period: 4), ropeThetaDefault: 500_000, slidingWindowDefault: 4096,
                       ropePerLayerType: .defaultLocalBase)),
        // GPT-NeoX (Pythia): a parallel block with two LayerNorms, fused per-head qkv with biases,
        // a quarter of each head rotated, an ungated GELU FFN with biases, the untied embed_out.
        // use_parallel_residual false makes it sequential (pre-norm).
        (ModelFamily("gpt_neox", topology: .parallel, output: .logits, autoClass: "AutoModelForCausalLM", remoteCodeClass: "VersatileGPTNeoXForCausalLM",
                     notInOLMo: "parallel attention and FFN, LayerNorms with biases and an ungated GELU FFN"),
         DecoderTraits(qkvBias: .key("attention_bias", default: true), outputBias: .key("attention_bias", default: true), mlpBias: .always,
                       norm: .layerWithBias(epsKey: "layer_norm_eps", defaultEps: 1e-5), ffn: .ungated(defaultActivation: "gelu"),
                       names: .gptNeoX,
                       parallel: .separateNorms(key: "use_parallel_residual"), fusedQKVPerHead: true,
                       partialRotary: ("rotary_pct", 0.25), ropeThetaKey: "rotary_emb_base", headDimFromHidden: true,
                       ignoredLayerBuffers: ["attention.bias", "attention.masked_bias"])),
        // Phi-1, 1.5 and 2: one LayerNorm before both branches, half of each head rotated,
        // `dense` after attention, optional per-head q/k LayerNorms, fc1/fc2, an lm_head bias.
        (ModelFamily("phi", topology: .parallel, output: .logits, autoClass: "AutoModelForCausalLM", remoteCodeClass: "VersatilePhiForCausalLM",
                     notInOLMo: "parallel attention and FFN (OLMo's block is sequential)"),
         DecoderTraits(qkvBias: .always, outputBias: .always, mlpBias: .always,
                       norm: .layerWithBias(epsKey: "layer_norm_eps", defaultEps: 1e-5), ffn: .ungated(defaultActivation: "gelu_new"),
                       qkNormPerHead: true,
                       names: .phi,
                       parallel: .sharedNorm, qkNormKey: "qk_layernorm", partialRotary: ("partial_rotary_factor", 0.5), headBias: true)),
        // Command-R (Cohere): one mean-centred LayerNorm (weight, no bias) before both branches,
        // interleaved RoPE, optional q/k norms with weights per head, logits times logit_scale.
        (ModelFamily("cohere", topology: .parallel, output: .logits, autoClass: "AutoModelForCausalLM", remoteCodeClass: "VersatileCohereForCausalLM",
                     notInOLMo: "parallel attention and FFN (OLMo's block is sequential)"),
         DecoderTraits(mlpBias: .never, norm: .layerWithoutBias(epsKey: "layer_norm_eps", defaultEps: 1e-5), qkNormPerHead: true, tiedByDefault: true,
                       ropeThetaDefault: 500_000, parallel: .sharedNorm, qkNormKey: "use_qk_norm", qkNormWeightsPerHead: true,
                       interleavedRope: true, partialRotary: nil, logitScaleDefault: 0.0625)),
        // Command R7B and A (Cohere 2): Cohere with three sliding layers to one full, and RoPE on
        // the sliding layers only.
        (ModelFamily("cohere2", topology: .parallel, output: .logits, autoClass: "AutoModelForCausalLM", remoteCodeClass: "VersatileCohere2ForCausalLM",
                     notInOLMo: "parallel attention and FFN (OLMo's block is sequential)"),
         DecoderTraits(mlpBias: .never, norm: .layerWithoutBias(epsKey: "layer_norm_eps", defaultEps: 1e-5), windows: .pattern(key: "sliding_window_pattern", period: 4),
                       tiedByDefault: true, slidingWindowDefault: 4096, parallel: .sharedNorm, interleavedRope: true,
                       ropeOnSlidingLayersOnly: true, partialRotary: nil, headDimFromHidden: true, logitScaleDefault: 0.0625)),
    ]

    public static var families: [ModelFamily] { declarations.map(\.family) }

    /// Gemma 3's text model (Gemma3ForCausalLM: 270m, 1b): Gemma 2 plus per-head q/k norms by
    /// 1 + w, five sliding layers to one full (`sliding_window_pattern`), local and global rope
    /// bases, no soft-caps unless the config sets them; Gemma3TextConfig's defaults.
    static let gemma3Text = DecoderTraits(
        norm: .rmsOnePlusWeight(defaultEps: 1e-6), ffn: .geglu, qkNormPerHead: true, headDimDefault: 256,
        windows: .pattern(key: "sliding_window_pattern", period: 6), tiedByDefault: true, embeddingsTimesSqrtHidden: true,
        sandwich: true, ropeThetaDefault: 1_000_000, slidingWindowDefault: 4096, attentionSoftcapApplied: false,
        ropePerLayerType: .localBase(key: "rope_local_base_freq", default: 10000),
        configDefaults: [("vocab_size", .int(262_208)), ("hidden_size", .int(2304)), ("intermediate_size", .int(9216)),
                         ("num_hidden_layers", .int(26)), ("num_attention_heads", .int(8)), ("num_key_value_heads", .int(4)),
                         ("max_position_embeddings", .int(131_072))])

    static func declaration(_ modelType: String) -> (family: ModelFamily, traits: DecoderTraits)? {
        declarations.first { $0.family.modelType == modelType }
    }

    /// How a family of this file differs from Llama: which config keys it reads, with its own
    /// config class's defaults (a 4.x save omits values equal to them), and which pieces its
    /// layers have. The default value of every field is Llama's.
    public struct DecoderTraits: Sendable {
        /// Whether a family's projections carry biases.
        public enum Bias: Sendable {
            case always, never
            case key(String, default: Bool)
        }
        /// Which norm a family uses and how it scales.
        public enum NormRule: Sendable {
            /// RMSNorm with a weight, eps from `rms_norm_eps`.
            case rms(defaultEps: Double)
            /// Gemma's RMSNorm, which scales by `1 + w` (its weights are stored around 0).
            case rmsOnePlusWeight(defaultEps: Double)
            /// OLMo's LayerNorm without weight or bias, eps fixed in its code.
            case layerWithoutParameters(eps: Double)
            /// LayerNorm with weight and bias.
            case layerWithBias(epsKey: String, defaultEps: Double)
            /// Cohere's LayerNorm: mean-centred, with a weight and no bias.
            case layerWithoutBias(epsKey: String, defaultEps: Double)

            /// The eps as the config gives it, else the family's value.
            func eps(_ r: ConfigReader) throws(VFFNError) -> Double {
                switch self {
                case let .rms(value), let .rmsOnePlusWeight(value): return try r.double("rms_norm_eps", default: value)
                case let .layerWithoutParameters(value): return value
                case let .layerWithBias(key, value), let .layerWithoutBias(key, value): return try r.double(key, default: value)
                }
            }
        }
        /// A family's FFN: gated or not, its activation.
        public enum FFNRule: Sendable {
            case gated, fusedGateUp
            /// Gemma's gated FFN with the tanh GELU (`hidden_act` "gelu" means it, as GemmaConfig says).
            case geglu
            case ungated(defaultActivation: String)
        }
        /// Which layers attend within a sliding window.
        public enum WindowRule: Sendable {
            /// `layer_types`, or no window at all.
            case none
            /// `sliding_window` on every layer (Mistral), unless `layer_types` says otherwise.
            case everyLayer
            /// `use_sliding_window`: layers from `max_window_layers` (28 by default) on (Qwen2).
            case fromMaxWindowLayers
            /// `use_sliding_window`: the NoPE layers, or what `layer_types` says (SmolLM3).
            case noRopeLayers
            /// Layers 0, 2, 4, ... unless `layer_types` says otherwise (Gemma 2).
            case evenLayers
            /// Every layer but each `period`-th (the config's `key`, else `period`), unless
            /// `layer_types` says otherwise: OLMo 3's 3 sliding : 1 full, Gemma 3's 5 : 1.
            case pattern(key: String?, period: Int)
        }

        public var qkvBias: Bias = .key("attention_bias", default: false)
        public var outputBias: Bias = .key("attention_bias", default: false)
        public var mlpBias: Bias = .key("mlp_bias", default: false)
        public var norm: NormRule = .rms(defaultEps: 1e-6)
        public var ffn: FFNRule = .gated
        /// Phi-3's qkv_proj, rows [q | k | v].
        public var fusedQKV = false
        /// Qwen3's RMSNorm over each head of q and k before RoPE.
        public var qkNormPerHead = false
        /// OLMo 2's norms after attention and the FFN (no input norm), and its q/k norms over
        /// the whole projection.
        public var outputNorms = false
        public var qkNormFullWidth = false
        /// `head_dim` when the config has none (nil: hidden / heads).
        public var headDimDefault: Int?
        public var windows: WindowRule = .none
        /// SmolLM3's `no_rope_layers` / `no_rope_layer_interval`.
        public var noRopeLayers = false
        /// Granite's embedding, attention, residual and logits multipliers.
        public var multipliers = false
        /// OLMo's clip_qkv.
        public var clipQKV = false
        public var tiedByDefault = false
        /// Gemma: token embeddings times sqrt(hidden_size).
        public var embeddingsTimesSqrtHidden = false
        /// Gemma 2: norms before and after both attention and the FFN, the scale
        /// query_pre_attn_scalar^-1/2, soft-caps on attention scores and final logits, and the
        /// activation under `hidden_activation`.
        public var sandwich = false
        /// Rope type names the family's config class renames.
        public var ropeAliases: [String: String] = [:]
        /// The config class's defaults, for configs that leave the key out.
        public var ropeThetaDefault: Double = 10000
        public var slidingWindowDefault: Int?
        public var softcapDefaults: (attention: Float?, final: Float?) = (nil, nil)
        /// Gemma 3's attention keeps `attn_logit_softcapping` in its config but never applies it
        /// (transformers 5.23 passes no softcap to its attention); the final soft-cap it applies.
        public var attentionSoftcapApplied = true
        /// One rotary embedding per layer type (OLMo 3, Gemma 3): transformers 5 nests
        /// `rope_parameters` as {full_attention, sliding_attention}; 4.x's `rope_scaling` applies
        /// to the full-attention layers only.
        public var ropePerLayerType: RopePerLayerType?
        /// The decoder is a multimodal wrapper's text tower (Gemma3ForConditionalGeneration): its
        /// settings are under `text_config`, its tensors under `DecoderNames.textTowers`, and the
        /// vision tower and projector are carried through unread.
        public var textTower = false
        /// The config class's values for keys a config leaves out. A wrapper's nested
        /// text_config is saved as its difference from them: Gemma 3 4B's lists six keys.
        public var configDefaults: [(key: String, value: JSON)] = []
        /// One rotary embedding per layer type (Gemma 3, OLMo 3).
        public enum RopePerLayerType: Sendable {
            /// OLMo 3: a 4.x top-level `rope_theta` is the full layers' base only; the sliding
            /// layers keep the config class's default unless 5.x nests their own (SPEC 5, and
            /// transformers 5.23's Olmo3Config; 4.x gave both the same base).
            case defaultLocalBase
            /// Sliding layers rotate with their own base under `key` (Gemma 3's rope_local_base_freq).
            case localBase(key: String, default: Double)
        }
        /// longrope's original context: the top-level key, else this (nil: the nested key, else
        /// max_position_embeddings).
        public var originalContextDefault: Int?
        /// Where the tensors sit, for families that name them their own way (GPT-NeoX, Phi).
        public var names = DecoderNames.causalLM
        /// SPEC 5's parallel block, `y = h + A(N_1 h) + F(N_2 h)`.
        public var parallel: ParallelRule?
        /// Whether attention and the FFN read the same input (GPT-NeoX, Phi, Cohere), and with which norms.
        public enum ParallelRule: Sendable {
            /// Phi and Cohere: one norm (input_layernorm) before both branches.
            case sharedNorm
            /// GPT-NeoX: input_layernorm before attention, post_attention_layernorm before the FFN;
            /// the config's `key` false makes the block sequential (pre-norm).
            case separateNorms(key: String)
        }
        /// GPT-NeoX's query_key_value, rows laid out per head (q_j, k_j, v_j for head j).
        public var fusedQKVPerHead = false
        /// The config key that turns the per-head q/k norms on (Phi's qk_layernorm, Cohere's
        /// use_qk_norm); nil: the family always has them when `qkNormPerHead`.
        public var qkNormKey: String?
        /// Cohere: each head's q/k norm has weights of its own (`[heads, head_dim]`).
        public var qkNormWeightsPerHead = false
        /// Cohere: RoPE rotates the interleaved pairs (2i, 2i + 1), not (i, i + rotary / 2).
        public var interleavedRope = false
        /// Cohere 2: only the sliding layers rotate; the full ones have no positions but the mask.
        public var ropeOnSlidingLayersOnly = false
        /// The 4.x top-level key of the rotary fraction and the config class's default (GPT-NeoX's
        /// rotary_pct 0.25, Phi's partial_rotary_factor 0.5); 5.x nests it in rope_parameters.
        /// nil: the family rotates whole heads whatever the config says (Cohere's rotary
        /// embedding reads no fraction).
        public var partialRotary: (key: String, default: Double)? = ("partial_rotary_factor", 1)
        /// The 4.x top-level key of the rope base (GPT-NeoX's rotary_emb_base).
        public var ropeThetaKey = "rope_theta"
        /// GPT-NeoX and Cohere 2 take head_dim as hidden_size / heads whatever the config says.
        public var headDimFromHidden = false
        /// Phi's lm_head has a bias.
        public var headBias = false
        /// Cohere's logit_scale, multiplied into the logits, when the config has none.
        public var logitScaleDefault: Double?
        /// Per-layer buffers older checkpoints saved that the forward does not read (GPT-NeoX's
        /// causal mask `attention.bias` and `attention.masked_bias`): carried through, not refused.
        public var ignoredLayerBuffers: [String] = []
    }

    /// The FFN's projections under `mlp.`, named once for surgery's layout and for loading:
    /// SwiGLU's gate, up and down, or StarCoder2's ungated c_fc and c_proj.
    public enum FFNKind: Sendable, Equatable {
        case gated
        /// Phi-3's gate_up_proj: rows [0, I) are the gate, [I, 2I) the up projection.
        case fusedGateUp
        case ungated(Activation)

        /// Each projection, whether it is an input one (neurons as rows), and how many
        /// I-row blocks it stacks (2 for a fused gate and up).
        public var projections: [(tensor: DecoderTensor, input: Bool, blocks: Int)] {
            switch self {
            case .gated: return [(.gate, true, 1), (.up, true, 1), (.down, false, 1)]
            case .fusedGateUp: return [(.gateUp, true, 2), (.down, false, 1)]
            case .ungated: return [(.fcIn, true, 1), (.fcOut, false, 1)]
            }
        }
    }

    /// A decoder's config.json as its family's traits read it.
    public struct Config: Sendable {
        public var modelType: String
        /// Where the tensors sit (a text tower's are found by `Llama.config(_:)`).
        public var names = DecoderNames.causalLM
        public var textTower: Bool
        public var vocabSize: Int
        public var hiddenSize: Int
        public var intermediateSize: Int
        public var numLayers: Int
        public var numHeads: Int
        public var numKVHeads: Int
        public var headDim: Int
        /// The family's norm rule, and its eps as the config gives it (q/k norms use it too).
        public var norm: DecoderTraits.NormRule
        public var normEps: Double
        /// OLMo: every norm is a LayerNorm without weight or bias, eps 1e-5 (hard-coded there).
        public var parameterFreeLayerNorm: Bool {
            if case .layerWithoutParameters = norm { return true }
            return false
        }
        public var ffn: FFNKind
        /// The gate's activation in a gated FFN (silu; Gemma's tanh GELU).
        public var gatedActivation: Activation
        /// Phi-3's qkv_proj: rows [q | k | v].
        public var fusedQKV: Bool
        /// GPT-NeoX's query_key_value: rows (q_j, k_j, v_j) per head j.
        public var fusedQKVPerHead: Bool
        /// SPEC 5's parallel block (`y = h + A(N_1 h) + F(N_2 h)`), and whether N_1 = N_2 (Phi,
        /// Cohere: input_layernorm serves both).
        public var parallel: Bool { topology == .parallel }
        public var sharedNorm: Bool
        /// The block topology, from the family and (GPT-NeoX) the config.
        public var topology: ModelFamily.Topology
        /// OLMo: q, k and v are clamped to [-clip, clip] after their projections.
        public var clipQKV: Float?
        public var tieWordEmbeddings: Bool
        /// Biases on q, k and v (Qwen2 always; Llama when `attention_bias`).
        public var qkvBias: Bool
        /// Bias on o_proj (Llama's `attention_bias` covers it; Qwen2 has none).
        public var outputBias: Bool
        public var mlpBias: Bool
        /// Qwen3: RMSNorm over each head of q and of k (weight `[head_dim]`) before RoPE; Cohere's
        /// LayerNorms have weights per head (`[heads, head_dim]`).
        public var qkNormPerHead: Bool
        public var qkNormWeightsPerHead: Bool
        /// OLMo 2: `post_attention_layernorm` on the attention output, `post_feedforward_layernorm`
        /// on the FFN output, no input norm; q/k norms over heads x head_dim.
        public var outputNorms: Bool
        public var qkNormFullWidth: Bool
        /// Gemma 2: four norms per layer, and tanh soft-caps (cap * tanh(s / cap)) on the
        /// attention scores and the final logits.
        public var sandwich: Bool
        public var attentionSoftcap: Float?
        public var finalLogitSoftcap: Float?
        /// Per layer, whether q and k are rotated (SmolLM3's `no_rope_layers` marks NoPE layers 0).
        public var ropeLayers: [Bool]
        /// Granite's multipliers (1, 1/sqrt(head_dim), 1 and 1 for every other family): token
        /// embeddings are scaled, attention scores use `attentionScale`, both residual branches
        /// are scaled, and logits divided.
        public var embeddingMultiplier: Float
        /// Gemma's sqrt(hidden_size), which the loader rounds to the embedding's stored dtype.
        public var embeddingsScaledBySqrtHidden: Bool
        public var attentionScale: Float
        public var residualMultiplier: Float
        public var logitsScaling: Float
        /// Per layer, the attention window (nil: full causal attention).
        public var slidingWindows: [Int?]
        /// Per layer, whether it is a sliding layer type, which picks `slidingRotary` even when
        /// `sliding_window` is null (transformers' layer types do not depend on the window).
        public var slidingLayers: [Bool]
        /// The rotary embedding of the full-attention layers (of every layer, in most families),
        /// and of the sliding layers where the family has one per layer type.
        public var rotary: Rotary
        public var slidingRotary: Rotary?
        /// The leading dims of each head that rotate (`partial_rotary_factor`); the rest pass.
        public var rotaryDim: Int
        /// Cohere: pairs (2i, 2i + 1) rotate together.
        public var interleavedRope: Bool
        /// Cohere's logit_scale (1 elsewhere), multiplied into the logits; Phi's lm_head bias.
        public var logitScale: Float
        public var headBias: Bool
        public var ignoredLayerBuffers: [String]
        public var inverseFrequencies: [Float] { rotary.inverseFrequencies }
        public var longInverseFrequencies: [Float]? { rotary.longInverseFrequencies }
        public var longropeOriginal: Int? { rotary.longropeOriginal }
        public var rotaryScale: Float { rotary.scale }
        public var ropeTheta: Double { rotary.theta }
        public var ropeType: String { rotary.type }
        public var maxPositionEmbeddings: Int?
        /// Longest sequence the rotary embedding is defined for here (nil: no limit): dynamic
        /// NTK scaling beyond max_position_embeddings is not implemented.
        public var maxPositions: Int?

        public init(_ top: JSON, path: String) throws(VFFNError) {
            modelType = top["model_type"]?.stringValue ?? "llama"
            guard let (family, traits) = Llama.declaration(modelType) else {
                throw .badInput(path, "model_type \"\(modelType)\" is not one of \(Llama.families.map(\.modelType).joined(separator: ", "))")
            }
            var json = top
            textTower = traits.textTower
            names = traits.names
            if traits.textTower {
                guard let text = top["text_config"], case .object = text else {
                    throw .badInput(path, "model_type \"\(modelType)\" needs a \"text_config\" object")
                }
                json = text
            }
            for (key, value) in traits.configDefaults where json[key] == nil { json = json.setting(key, to: value) }
            let r = ConfigReader(json, path: path)
            func bias(_ rule: DecoderTraits.Bias) throws(VFFNError) -> Bool {
                switch rule {
                case .always: return true
                case .never: return false
                case let .key(key, value): return try r.bool(key, default: value)
                }
            }
            vocabSize = try r.int("vocab_size")
            hiddenSize = try r.int("hidden_size")
            intermediateSize = try r.int("intermediate_size")
            numLayers = try r.int("num_hidden_layers")
            numHeads = try r.int("num_attention_heads")
            // GPT-NeoX has no grouped-query attention: transformers reads no KV head count there.
            numKVHeads = traits.fusedQKVPerHead ? numHeads : try r.int("num_key_value_heads", default: numHeads)
            guard numHeads % numKVHeads == 0 else {
                throw .badInput(path, "num_attention_heads \(numHeads) is not a multiple of num_key_value_heads \(numKVHeads)")
            }
            if json["head_dim"] != nil, json["head_dim"]!.isNull == false, !traits.headDimFromHidden {
                headDim = try r.int("head_dim")
            } else if let given = traits.headDimDefault {
                headDim = given
            } else {
                guard hiddenSize % numHeads == 0 else {
                    throw .badInput(path, "hidden_size \(hiddenSize) is not a multiple of num_attention_heads \(numHeads)")
                }
                headDim = hiddenSize / numHeads
            }
            guard headDim % 2 == 0 else { throw .badInput(path, "head dimension \(headDim) is odd; rotary embeddings need it even") }
            switch traits.ffn {
            case let .ungated(defaultActivation):
                let act = json["hidden_act"]?.stringValue ?? defaultActivation
                guard let a = Activation(huggingFaceName: act) else {
                    throw .badInput(path, "hidden_act \"\(act)\" is not supported (supported: \(Activation.supportedNames.joined(separator: ", ")))")
                }
                ffn = .ungated(a)
                gatedActivation = .silu
            case .gated, .fusedGateUp:
                let act = json["hidden_act"]?.stringValue ?? "silu"
                guard act == "silu" || act == "swish" else {
                    throw .badInput(path, "hidden_act \"\(act)\" is not supported for \(modelType) (only silu)")
                }
                if case .fusedGateUp = traits.ffn { ffn = .fusedGateUp } else { ffn = .gated }
                gatedActivation = .silu
            case .geglu:
                let act = json[traits.sandwich ? "hidden_activation" : "hidden_act"]?.stringValue ?? "gelu_pytorch_tanh"
                guard ["gelu", "gelu_pytorch_tanh", "gelu_new", "gelu_fast"].contains(act) else {
                    throw .badInput(path, "hidden_act \"\(act)\" is not supported for \(modelType) (the tanh GELU)")
                }
                ffn = .gated
                gatedActivation = .geluTanh
            }
            fusedQKV = traits.fusedQKV
            fusedQKVPerHead = traits.fusedQKVPerHead
            // GPT-NeoX's use_parallel_residual false is a pre-norm block.
            switch traits.parallel {
            case .sharedNorm: (topology, sharedNorm) = (.parallel, true)
            case let .separateNorms(key): (topology, sharedNorm) = (try r.bool(key, default: true) ? .parallel : .preNorm, false)
            case nil: (topology, sharedNorm) = (family.topology, false)
            }
            norm = traits.norm
            normEps = try traits.norm.eps(r)
            if traits.clipQKV, let clip = json["clip_qkv"], !clip.isNull {
                let c = try r.double("clip_qkv", default: .nan)
                guard c > 0, c.isFinite else { throw .badInput(path, "clip_qkv \(c) must be positive") }
                clipQKV = Float(c)
            } else {
                clipQKV = nil
            }
            // A wrapper ties by its own key (Gemma3Config's), as transformers ties the wrapper's head.
            tieWordEmbeddings = try (traits.textTower ? ConfigReader(top, path: path) : r).bool("tie_word_embeddings", default: traits.tiedByDefault)
            qkvBias = try bias(traits.qkvBias)
            outputBias = try bias(traits.outputBias)
            mlpBias = try bias(traits.mlpBias)
            qkNormPerHead = traits.qkNormPerHead
            if let key = traits.qkNormKey, !(try r.bool(key, default: false)) { qkNormPerHead = false }
            qkNormWeightsPerHead = traits.qkNormWeightsPerHead
            interleavedRope = traits.interleavedRope
            headBias = traits.headBias
            ignoredLayerBuffers = traits.ignoredLayerBuffers
            logitScale = try traits.logitScaleDefault.map { (v) throws(VFFNError) in Float(try r.double("logit_scale", default: v)) } ?? 1
            guard logitScale.isFinite, logitScale != 0 else { throw .badInput(path, "logit_scale \(logitScale) must be finite and non-zero") }
            outputNorms = traits.outputNorms
            qkNormFullWidth = traits.qkNormFullWidth
            sandwich = traits.sandwich
            func cap(_ key: String, default value: Float?) throws(VFFNError) -> Float? {
                guard traits.sandwich, let v = json[key] else { return value }
                if v.isNull { return nil }
                let c = try r.double(key, default: .nan)
                guard c > 0, c.isFinite else { throw .badInput(path, "\(key) \(c) must be positive") }
                return Float(c)
            }
            attentionSoftcap = traits.attentionSoftcapApplied ? try cap("attn_logit_softcapping", default: traits.softcapDefaults.attention) : nil
            finalLogitSoftcap = try cap("final_logit_softcapping", default: traits.softcapDefaults.final)
            ropeLayers = try Self.ropeLayers(r, traits: traits, layers: numLayers)
            embeddingsScaledBySqrtHidden = traits.embeddingsTimesSqrtHidden
            if traits.multipliers {
                embeddingMultiplier = Float(try r.double("embedding_multiplier", default: 1))
                attentionScale = Float(try r.double("attention_multiplier", default: 1))
                residualMultiplier = Float(try r.double("residual_multiplier", default: 1))
                logitsScaling = Float(try r.double("logits_scaling", default: 1))
            } else {
                // Gemma's sqrt(hidden_size); `load` rounds it to the embedding's stored dtype.
                let embed: Float = traits.embeddingsTimesSqrtHidden ? Float(Double(hiddenSize).squareRoot()) : 1
                // Gemma 2 scales scores by query_pre_attn_scalar^-1/2 (256 by default), not head_dim's.
                let scale = traits.sandwich ? Float(pow(try r.double("query_pre_attn_scalar", default: 256), -0.5)) : 1 / Float(headDim).squareRoot()
                (embeddingMultiplier, attentionScale, residualMultiplier, logitsScaling) = (embed, scale, 1, 1)
            }
            guard logitsScaling != 0, logitsScaling.isFinite, embeddingMultiplier.isFinite, attentionScale.isFinite, residualMultiplier.isFinite else {
                throw .badInput(path, "granite multipliers must be finite and logits_scaling non-zero")
            }
            (slidingLayers, slidingWindows) = try Self.slidingLayers(r, traits: traits, layers: numLayers)
            // Cohere 2 rotates where a layer has a window (transformers tests the window, not the type).
            if traits.ropeOnSlidingLayersOnly { ropeLayers = slidingWindows.map { $0 != nil } }
            maxPositionEmbeddings = (json["max_position_embeddings"]?.isNull ?? true) ? nil : try r.int("max_position_embeddings")
            (rotary, slidingRotary, rotaryDim) = try Self.rotaries(r, traits: traits, headDim: headDim, maxPositions: maxPositionEmbeddings)
            let dynamic = rotary.type == "dynamic" || slidingRotary?.type == "dynamic" && slidingLayers.contains(true)
            maxPositions = dynamic ? try r.int("max_position_embeddings") : nil
            if try r.bool("use_bidirectional_attention", default: false) {
                throw .badInput(path, "use_bidirectional_attention (an embedding model's bidirectional attention) is not supported")
            }
        }

        /// SmolLM3 lists 1 (rotate) or 0 (NoPE) per layer, or, without the list, leaves RoPE out
        /// of every `no_rope_layer_interval`-th layer, as SmolLM3Config derives it.
        static func ropeLayers(_ r: ConfigReader, traits: DecoderTraits, layers: Int) throws(VFFNError) -> [Bool] {
            guard traits.noRopeLayers else { return Array(repeating: true, count: layers) }
            if let list = r.json["no_rope_layers"], !list.isNull {
                guard let items = list.arrayValue, items.count == layers, items.allSatisfy({ $0.intValue == 0 || $0.intValue == 1 }) else {
                    throw .badInput(r.path, "no_rope_layers must list 0 or 1 for each of the \(layers) layers")
                }
                return items.map { $0.intValue == 1 }
            }
            let interval = try r.int("no_rope_layer_interval", default: 4)
            guard interval > 0 else { throw .badInput(r.path, "no_rope_layer_interval \(interval) must be positive") }
            return (0..<layers).map { ($0 + 1) % interval != 0 }
        }

        /// Which layers are of the sliding type, and each layer's window (nil: full attention).
        /// transformers 5 lists `layer_types`; older configs say it with `sliding_window`
        /// (Mistral), `use_sliding_window` + `max_window_layers` (Qwen2) or the family's pattern.
        /// A sliding type without a window attends fully but still takes the sliding layers'
        /// rotary embedding, as transformers' layer types do not depend on the window.
        static func slidingLayers(_ r: ConfigReader, traits: DecoderTraits, layers: Int) throws(VFFNError) -> (types: [Bool], windows: [Int?]) {
            let window: Int? = r.json["sliding_window"] == nil ? traits.slidingWindowDefault
                : r.json["sliding_window"]!.isNull ? nil : try r.int("sliding_window")
            func sliding(_ types: [Bool]) -> (types: [Bool], windows: [Int?]) { (types, types.map { $0 ? window : nil }) }
            let none = [Bool](repeating: false, count: layers)
            if case .noRopeLayers = traits.windows {
                // SmolLM3 slides only with use_sliding_window, whatever layer_types says; without
                // layer_types, its NoPE layers are the sliding ones.
                guard try r.bool("use_sliding_window", default: false), window != nil else { return sliding(none) }
                if r.json["layer_types"]?.arrayValue == nil {
                    return sliding(try ropeLayers(r, traits: traits, layers: layers).map { !$0 })
                }
            }
            if let types = r.json["layer_types"]?.arrayValue {
                guard types.count == layers else { throw .badInput(r.path, "layer_types has \(types.count) entries for \(layers) layers") }
                var out: [Bool] = []
                for t in types {
                    switch t.stringValue {
                    case "full_attention": out.append(false)
                    case "sliding_attention":
                        guard window != nil else { throw .badInput(r.path, "layer_types asks for sliding_attention but sliding_window is null") }
                        out.append(true)
                    default: throw .badInput(r.path, "layer_types entry \(t.compact) is not supported (full_attention, sliding_attention)")
                    }
                }
                return sliding(out)
            }
            switch traits.windows {
            case .everyLayer:
                return sliding(Array(repeating: window != nil, count: layers))
            case .fromMaxWindowLayers:
                guard try r.bool("use_sliding_window", default: false), window != nil else { return sliding(none) }
                let from = try r.int("max_window_layers", default: 28)   // Qwen2Config's and Qwen3Config's default
                return sliding((0..<layers).map { $0 >= from })
            case .evenLayers:
                return sliding((0..<layers).map { $0 % 2 == 0 })
            case let .pattern(key, period):
                let p = try key.map { (k) throws(VFFNError) in try r.int(k, default: period) } ?? period
                return sliding((0..<layers).map { ($0 + 1) % p != 0 })
            case .none, .noRopeLayers:
                return sliding(none)
            }
        }

        /// The rotary embeddings, read from `rope_parameters` (transformers 5) or `rope_theta` and
        /// `rope_scaling` (4.x). Families with one embedding per layer type nest them in 5.x; in
        /// 4.x their `rope_scaling` belongs to the full-attention layers only, and the sliding ones
        /// rotate unscaled (Gemma 3 with `rope_local_base_freq`, OLMo 3 with its default base).
        static func rotaries(_ r: ConfigReader, traits: DecoderTraits, headDim: Int, maxPositions: Int?) throws(VFFNError) -> (Rotary, Rotary?, Int) {
            var rope = Self.ropeParameters(r.json)
            // GPT-NeoX reads rotary_emb_base only: transformers 4 and 5 both ignore a lone rope_theta there.
            let topTheta = try r.double(traits.ropeThetaKey, default: .nan)
            let nested = rope.params?["full_attention"] != nil || rope.params?["sliding_attention"] != nil
            var sliding: (params: JSON?, type: String, theta: Double)?
            if let perType = traits.ropePerLayerType {
                let localDefault: Double
                switch perType {
                case .defaultLocalBase: localDefault = traits.ropeThetaDefault
                case let .localBase(key, value): localDefault = try r.double(key, default: value)
                }
                if nested {
                    let local = rope.params?["sliding_attention"], full = rope.params?["full_attention"]
                    sliding = (local, Self.ropeType(local), local?["rope_theta"]?.doubleValue ?? localDefault)
                    rope = (full, Self.ropeType(full))
                } else {
                    sliding = (nil, "default", localDefault)
                }
            } else if nested {
                throw .badInput(r.path, "rope_parameters per layer type is not read for model_type \"\(r.json["model_type"]?.stringValue ?? "?")\"")
            }
            if let alias = traits.ropeAliases[rope.type] { rope.type = alias }
            let theta = rope.params?["rope_theta"]?.doubleValue ?? (topTheta.isNaN ? traits.ropeThetaDefault : topTheta)
            // transformers 5 keeps partial_rotary_factor in rope_parameters, 4.x at the top level.
            let partialKey = traits.partialRotary?.key ?? "partial_rotary_factor"
            let partial = traits.partialRotary.map { rope.params?["partial_rotary_factor"]?.doubleValue ?? r.json[$0.key]?.doubleValue ?? $0.default } ?? 1
            guard partial > 0, partial <= 1 else { throw .badInput(r.path, "\(partialKey) \(partial) must be in (0, 1]") }
            let dim = Int(Double(headDim) * partial)   // int(), as transformers truncates
            guard dim % 2 == 0, dim > 0 else { throw .badInput(r.path, "rotary dimension \(dim) (head_dim x \(partialKey)) is not even") }
            func make(_ theta: Double, _ rope: (params: JSON?, type: String)) throws(VFFNError) -> Rotary {
                guard theta > 0, theta.isFinite else { throw .badInput(r.path, "rope_theta \(theta) must be positive") }
                let f = try Self.inverseFrequencies(r, dim: dim, theta: theta, rope: rope, maxPositions: maxPositions,
                                                    originalContextDefault: traits.originalContextDefault, nested: nested)
                return Rotary(theta: theta, type: rope.type, inverseFrequencies: f.short, longInverseFrequencies: f.long,
                              longropeOriginal: f.original, scale: f.scale)
            }
            return (try make(theta, rope), try sliding.map { (s) throws(VFFNError) in try make(s.theta, (s.params, s.type)) }, dim)
        }

        /// The rotary settings: `rope_parameters` (transformers 5) or `rope_scaling` (transformers 4),
        /// whichever is present and not null, and its type (`rope_type`, or 4.x's older `type`).
        static func ropeParameters(_ json: JSON) -> (params: JSON?, type: String) {
            let params = [json["rope_parameters"], json["rope_scaling"]].compactMap { $0 }.first { !$0.isNull }
            return (params, ropeType(params))
        }

        /// A rope settings object's type: `rope_type`, or 4.x's older `type`, or "default".
        static func ropeType(_ params: JSON?) -> String {
            params?["rope_type"]?.stringValue ?? params?["type"]?.stringValue ?? "default"
        }

        /// `1 / theta^(2i/dim)` in f32 as transformers computes it, adjusted by the rope type for
        /// the types we implement; longrope also gives its long-sequence set and cos/sin scale.
        /// `nested`: the settings are one layer type's of a nested `rope_parameters`, which
        /// transformers 5 takes as they are (no top-level original context, and yarn's
        /// `truncate` looked up in the outer dict, so always on).
        static func inverseFrequencies(_ r: ConfigReader, dim: Int, theta: Double, rope: (params: JSON?, type: String), maxPositions: Int?,
                                       originalContextDefault: Int? = nil, nested: Bool = false) throws(VFFNError) -> (short: [Float], long: [Float]?, original: Int?, scale: Float) {
            let params = rope.params
            let base = Float(theta)
            var inv = (0..<dim / 2).map { i in 1 / powf(base, Float(2 * i) / Float(dim)) }
            let type = rope.type
            switch type {
            case "longrope":
                // transformers' _compute_longrope_parameters: 1 / (factor_i * theta^(2i/dim)),
                // short factors up to original_max_position_embeddings, long ones beyond it.
                func factors(_ key: String) throws(VFFNError) -> [Float] {
                    guard let list = params?[key]?.arrayValue, list.count == dim / 2,
                          case let values = list.compactMap(\.doubleValue), values.count == list.count, values.allSatisfy({ $0 > 0 })
                    else { throw .badInput(r.path, "longrope \(key) must list \(dim / 2) positive numbers (one per rotary frequency)") }
                    return values.map(Float.init)
                }
                let short = try factors("short_factor"), long = try factors("long_factor")
                // transformers 5 prefers the top-level value (Phi-3 saves it there, and Phi3Config
                // defaults it to 4096), then the nested one, then max_position_embeddings.
                guard let original = r.json["original_max_position_embeddings"]?.intValue
                        ?? originalContextDefault ?? params?["original_max_position_embeddings"]?.intValue ?? maxPositions,
                      original > 0 else {
                    throw .badInput(r.path, "longrope needs original_max_position_embeddings")
                }
                let frequency = { (ext: [Float]) in (0..<dim / 2).map { i in 1 / (ext[i] * powf(base, Float(2 * i) / Float(dim))) } }
                let factor = params?["factor"]?.doubleValue ?? Double(maxPositions ?? original) / Double(original)
                let attention = params?["attention_factor"]?.doubleValue
                    ?? (factor <= 1 ? 1 : (1 + log(factor) / log(Double(original))).squareRoot())
                return (frequency(short), frequency(long), original, Float(attention))
            case "yarn":
                // transformers' _compute_yarn_parameters: frequencies blended between the original
                // (high ones, extrapolated) and the interpolated ones (low ones, divided by factor)
                // by a linear ramp over the correction range, and cos/sin scaled by the attention factor.
                // As transformers 5 standardizes it: the top-level value, the nested one, then
                // max_position_embeddings.
                let top = nested ? nil : r.json["original_max_position_embeddings"]?.doubleValue
                guard let original = top ?? params?["original_max_position_embeddings"]?.doubleValue ?? maxPositions.map(Double.init), original > 0 else {
                    throw .badInput(r.path, "yarn rope scaling needs original_max_position_embeddings")
                }
                guard let factor = params?["factor"]?.doubleValue ?? maxPositions.map({ Double($0) / original }), factor > 0 else {
                    throw .badInput(r.path, "yarn rope scaling needs a positive factor")
                }
                func mscale(_ scale: Double, _ m: Double = 1) -> Double { scale <= 1 ? 1 : 0.1 * m * log(scale) + 1 }
                let attention: Double
                if let given = params?["attention_factor"]?.doubleValue {
                    attention = given
                } else if let m = params?["mscale"]?.doubleValue, let all = params?["mscale_all_dim"]?.doubleValue, m != 0, all != 0 {
                    attention = mscale(factor, m) / mscale(factor, all)
                } else {
                    attention = mscale(factor)
                }
                let fast = params?["beta_fast"]?.doubleValue ?? 32, slow = params?["beta_slow"]?.doubleValue ?? 1
                let truncate = nested ? true : params?["truncate"]?.boolValue ?? true
                func correction(_ rotations: Double) -> Double {
                    Double(dim) * log(original / (rotations * 2 * Double.pi)) / (2 * log(theta))
                }
                var low = correction(fast), high = correction(slow)
                if truncate { (low, high) = (low.rounded(.down), high.rounded(.up)) }
                low = max(low, 0)
                high = min(high, Double(dim - 1))
                if low == high { high += 0.001 }
                let extrapolation = inv
                inv = (0..<dim / 2).map { i in
                    let ramp = min(max((Float(i) - Float(low)) / (Float(high) - Float(low)), 0), 1)
                    let keep = 1 - ramp   // the share of the original frequency
                    return extrapolation[i] / Float(factor) * (1 - keep) + extrapolation[i] * keep
                }
                return (inv, nil, nil, Float(attention))
            case "default", "dynamic":
                // Dynamic NTK scaling changes nothing until a sequence outgrows
                // max_position_embeddings, which `forward` refuses.
                break
            case "linear":
                guard let factor = params?["factor"]?.doubleValue else { throw .badInput(r.path, "linear rope scaling without a factor") }
                inv = inv.map { $0 / Float(factor) }
            case "llama3":
                guard let p = params, let factor = p["factor"]?.doubleValue, let low = p["low_freq_factor"]?.doubleValue,
                      let high = p["high_freq_factor"]?.doubleValue, let original = p["original_max_position_embeddings"]?.doubleValue
                else { throw .badInput(r.path, "llama3 rope scaling needs factor, low_freq_factor, high_freq_factor and original_max_position_embeddings") }
                let lowWavelen = Float(original / low), highWavelen = Float(original / high)
                inv = inv.map { f in
                    let wavelen = 2 * Float.pi / f
                    if wavelen < highWavelen { return f }
                    if wavelen > lowWavelen { return f / Float(factor) }
                    let smooth = (Float(original) / wavelen - Float(low)) / Float(high - low)
                    return (1 - smooth) * f / Float(factor) + smooth * f
                }
            default:
                let key = r.json["rope_parameters"].map { $0.isNull ? "rope_scaling" : "rope_parameters" } ?? "rope_scaling"
                throw .badInput(r.path, "\(key) rope type \"\(type)\" is not supported (default, linear, llama3, dynamic, longrope, yarn)")
            }
            return (inv, nil, nil, 1)
        }
    }

    /// One rotary embedding: its base and type, `rotaryDim / 2` inverse frequencies, and
    /// longrope's long-sequence set; `scale` multiplies cos and sin (longrope's and YaRN's
    /// attention factor).
    public struct Rotary: Sendable {
        public var theta: Double
        public var type: String
        public var inverseFrequencies: [Float]
        public var longInverseFrequencies: [Float]?
        public var longropeOriginal: Int?
        public var scale: Float
    }

    struct Layer: Sendable {
        /// The norm before attention, or (OLMo 2) after it.
        let inputNorm: Norm?
        let attentionOutputNorm: Norm?
        /// q, k and v; GPT-NeoX's fused per-head layout is `qkvPerHead` instead, split after the product.
        let q, k, v: Linear?
        let qkvPerHead: Linear?
        let o: Linear
        /// Norms of q and k applied before RoPE: one over each head (Qwen3), one per head
        /// (Cohere's weights per head), or one over the whole projection (OLMo 2).
        let qNorm, kNorm: [Norm]
        /// nil for SmolLM3's NoPE layers.
        let rotary: Rotary?
        let slidingWindow: Int?
    }

    /// A loaded decoder of the Llama shape, dense or VersatileFFN.
    public struct Model: LanguageModel {
        public let config: Config
        let embedding: Linear    // [vocab, hidden]
        let layers: [Layer]
        public let ffnSublayers: [FFNSublayer]
        public let versatileLayers: [VersatileFFNLayer?]?
        let finalNorm: Norm
        let lmHead: Linear       // [vocab, hidden]

        public var modelType: String { config.modelType }
        public var outputKind: OutputKind { .logits }
        public var vocabSize: Int { config.vocabSize }
        public var hiddenSize: Int { config.hiddenSize }
        public var maxTokens: Int? { config.maxPositions }
        public var trainedPositions: Int? { config.maxPositionEmbeddings }

        public func forward(_ tokens: [Int], mode: FFNMode, trace: Bool) throws(VFFNError) -> ForwardResult {
            try checkTokens(tokens)
            let d = config.hiddenSize
            var x = Matrix(zeros: tokens.count, d)
            for (t, id) in tokens.enumerated() {
                x.data.replaceSubrange(t * d..<(t + 1) * d, with: embedding.row(id))
            }
            x = x.scaled(by: config.embeddingMultiplier)
            var traced: [Matrix] = [], ffnInputs: [Matrix] = []
            var routing: [RoutingStats] = []
            for (i, layer) in layers.enumerated() {
                let a = attention(layer, layer.inputNorm.map { $0(x) } ?? x)
                if config.parallel {
                    // SPEC 5: y = A(N_1 h) + T(h), T(h) = h + F(N_2 h) the sub-layer the gates wrap.
                    if trace { ffnInputs.append(x) }
                    x = a + (try ffnStep(i, x, mode: mode, routing: &routing))
                } else {
                    x = x + (layer.attentionOutputNorm.map { $0(a) } ?? a).scaled(by: config.residualMultiplier)
                    if trace { ffnInputs.append(x) }
                    x = try ffnStep(i, x, mode: mode, routing: &routing)
                }
                if trace { traced.append(x) }
            }
            var logits = lmHead(finalNorm(x))
            if let cap = config.finalLogitSoftcap {
                for i in logits.data.indices { logits.data[i] = tanhf(logits.data[i] / cap) * cap }
            }
            logits = logits.divided(by: config.logitsScaling)
            if config.logitScale != 1 { logits = logits.scaled(by: config.logitScale) }
            return ForwardResult(output: logits, layerOutputs: traced, ffnInputs: ffnInputs, routing: routing)
        }

        /// Causal grouped-query attention over positions 0..<T with rotary embeddings.
        func attention(_ layer: Layer, _ h: Matrix) -> Matrix {
            var q, k, v: Matrix
            if let fused = layer.qkvPerHead {
                (q, k, v) = splitPerHead(fused(h))
            } else {
                (q, k, v) = (layer.q!(h), layer.k!(h), layer.v!(h))
            }
            if let clip = config.clipQKV {
                q = q.clamped(to: clip)
                k = k.clamped(to: clip)
                v = v.clamped(to: clip)
            }
            if !layer.qNorm.isEmpty { q = config.qkNormFullWidth ? layer.qNorm[0](q) : perHead(layer.qNorm, q) }
            if !layer.kNorm.isEmpty { k = config.qkNormFullWidth ? layer.kNorm[0](k) : perHead(layer.kNorm, k) }
            if let rotary = layer.rotary {
                applyRotary(&q, heads: config.numHeads, rotary)
                applyRotary(&k, heads: config.numKVHeads, rotary)
            }
            let a = VFFNModels.attention(q: q, k: k, v: v, heads: config.numHeads, kvHeads: config.numKVHeads,
                                         headDim: config.headDim, scale: config.attentionScale,
                                         mask: .causal(window: layer.slidingWindow), softcap: config.attentionSoftcap)
            return layer.o(a)
        }

        /// A norm over each head's `head_dim` values: `[T, H*hd]` is `[T*H, hd]` in memory. With
        /// one norm per head (Cohere), head j's values take norm j.
        func perHead(_ norms: [Norm], _ m: Matrix) -> Matrix {
            let hd = config.headDim, heads = m.cols / hd
            if norms.count == 1 {
                let out = norms[0](Matrix(rows: m.rows * heads, cols: hd, data: m.data))
                return Matrix(rows: m.rows, cols: m.cols, data: out.data)
            }
            precondition(norms.count == heads)
            var out = m
            for j in 0..<heads {
                let y = norms[j](m.gather(Array(0..<m.rows), columns: j * hd..<(j + 1) * hd))
                for t in 0..<m.rows { out.data.replaceSubrange(t * m.cols + j * hd..<t * m.cols + (j + 1) * hd, with: y.row(t)) }
            }
            return out
        }

        /// GPT-NeoX's fused product `[T, H * 3hd]`, head j's columns (q_j, k_j, v_j), as q, k and v.
        func splitPerHead(_ fused: Matrix) -> (Matrix, Matrix, Matrix) {
            let hd = config.headDim, heads = config.numHeads, width = heads * hd
            var parts = [Matrix](repeating: Matrix(zeros: fused.rows, width), count: 3)
            for t in 0..<fused.rows {
                for j in 0..<heads {
                    for p in 0..<3 {
                        let from = t * fused.cols + (3 * j + p) * hd
                        parts[p].data.replaceSubrange(t * width + j * hd..<t * width + (j + 1) * hd, with: fused.data[from..<from + hd])
                    }
                }
            }
            return (parts[0], parts[1], parts[2])
        }

        /// Rotate-half RoPE (transformers' layout): pairs (i, i + hd/2) rotate by pos * inv_freq[i].
        /// Only the first `rotaryDim` dims of each head rotate (partial rotary); longrope picks its
        /// long frequencies once the sequence outgrows the original context, as transformers does.
        func applyRotary(_ m: inout Matrix, heads: Int, _ rotary: Rotary) {
            let hd = config.headDim, half = config.rotaryDim / 2
            let frequencies = rotary.longropeOriginal.map { m.rows > $0 } == true ? rotary.longInverseFrequencies! : rotary.inverseFrequencies
            // Pair i is (i, i + rotary/2), or Cohere's interleaved (2i, 2i + 1).
            let (stride, offset) = config.interleavedRope ? (2, 1) : (1, half)
            for t in 0..<m.rows {
                for i in 0..<half {
                    let angle = Float(t) * frequencies[i]
                    let c = cosf(angle) * rotary.scale, s = sinf(angle) * rotary.scale
                    for h in 0..<heads {
                        let a = t * m.cols + h * hd + stride * i
                        let x1 = m.data[a], x2 = m.data[a + offset]
                        m.data[a] = x1 * c - x2 * s
                        m.data[a + offset] = x2 * c + x1 * s
                    }
                }
            }
        }
    }

    static func config(_ checkpoint: Checkpoint) throws(VFFNError) -> Config {
        var c = try Config(checkpoint.config, path: checkpoint.configPath)
        if c.textTower {
            guard let names = DecoderNames.textTowers.first(where: { checkpoint.contains($0.embedding) }) else {
                let probes = DecoderNames.textTowers.map { "\"\($0.embedding)\"" }.joined(separator: " or ")
                throw .badInput(checkpoint.path, "has no \(probes): not a \(c.modelType) checkpoint")
            }
            c.names = names
        }
        return c
    }

    /// SPEC 5: Gemma's scale is sqrt(hidden_size) in the checkpoint's stored dtype (bf16
    /// sqrt(1152) is 34.0), as transformers holds the buffer when it loads the checkpoint in its
    /// own dtype, although the forward here computes in f32. A converted checkpoint records it,
    /// and keeps it after a trainer saves the weights in another dtype.
    static func storedEmbeddingScale(_ c: Config, _ checkpoint: Checkpoint) -> Float? {
        if c.embeddingsScaledBySqrtHidden, let recorded = checkpoint.config[VersatileFFNSettings.key]?["embedding_scale"]?.doubleValue {
            return Float(recorded)
        }
        guard c.embeddingsScaledBySqrtHidden, let dtype = checkpoint.info(c.names.embedding)?.dtype, dtype.isComputeFloat else { return nil }
        return FloatCodec.encode([c.embeddingMultiplier], as: dtype).withUnsafeBytes { FloatCodec.decode($0, as: dtype)[0] }
    }

    public static func ffnLayout(_ checkpoint: Checkpoint) throws(VFFNError) -> FFNLayout {
        let c = try config(checkpoint)
        let d = c.hiddenSize, I = c.intermediateSize
        let sites = (0..<c.numLayers).map { i in
            let p = c.names.layer(i) + "." + DecoderTensor.ffnModule
            // Input projections hold neurons as rows ([I, d]), the output projection as columns.
            // A fused gate_up_proj stacks two I-row blocks; the neuron permutation moves both alike.
            var tensors = c.ffn.projections.map { proj in
                FFNTensor("\(c.names.at(proj.tensor, i)).weight", shape: proj.input ? [proj.blocks * I, d] : [d, I], neuronAxis: proj.input ? 0 : 1)
            }
            if c.mlpBias {
                tensors += c.ffn.projections.map { proj in
                    FFNTensor("\(c.names.at(proj.tensor, i)).bias", shape: [proj.input ? proj.blocks * I : d], neuronAxis: proj.input ? 0 : nil)
                }
            }
            return FFNSite(layer: i, prefix: p, tensors: tensors)
        }
        try checkSites(sites, in: checkpoint)
        return FFNLayout(hiddenSize: c.hiddenSize, intermediateSize: c.intermediateSize, sites: sites, topology: c.topology,
                         embeddingScale: storedEmbeddingScale(c, checkpoint))
    }

    public static func load(_ checkpoint: Checkpoint) throws(VFFNError) -> any LanguageModel {
        var c = try config(checkpoint)
        if let scale = storedEmbeddingScale(c, checkpoint) { c.embeddingMultiplier = scale }
        let store = WeightStore(checkpoint)
        let root = store.scope("")
        let d = c.hiddenSize, I = c.intermediateSize, hd = c.headDim, eps = Float(c.normEps)
        let embedding = try root.scope(String(c.names.embedding.dropLast(".weight".count))).linear(out: c.vocabSize, in: d, bias: false)
        /// The family's norm at `scope` over `count` values (the hidden size, or a q/k projection's
        /// width): RMSNorm with its weight (Gemma's by 1 + w), OLMo's LayerNorm without any, or
        /// StarCoder2's with weight and bias.
        func norm(_ scope: WeightScope, count: Int = d) throws(VFFNError) -> Norm {
            switch c.norm {
            case .layerWithoutParameters:
                return .layer(weight: [Float](repeating: 1, count: count), bias: [Float](repeating: 0, count: count), eps: eps)
            case .layerWithBias:
                return .layer(weight: try scope.vector("weight", count: count), bias: try scope.vector("bias", count: count), eps: eps)
            case .layerWithoutBias:
                return .layer(weight: try scope.vector("weight", count: count), bias: [Float](repeating: 0, count: count), eps: eps)
            case .rms:
                return .rms(weight: try scope.vector("weight", count: count), eps: eps)
            case .rmsOnePlusWeight:
                return .rms(weight: try scope.vector("weight", count: count).map { 1 + $0 }, eps: eps)
            }
        }
        /// The q/k norms of a layer over `heads` heads: one norm over each head, one per head
        /// (Cohere's `[heads, head_dim]` weights), or one over the whole projection.
        func qkNorms(_ scope: WeightScope, heads: Int) throws(VFFNError) -> [Norm] {
            if c.qkNormFullWidth { return [try norm(scope, count: heads * hd)] }
            guard c.qkNormPerHead else { return [] }
            guard c.qkNormWeightsPerHead else { return [try norm(scope, count: hd)] }
            // Cohere's: mean-centred LayerNorms without bias, the weights stored [heads, head_dim].
            let w = try store.floats(scope.name("weight"), shape: [heads, hd])
            return (0..<heads).map { j in .layer(weight: Array(w[j * hd..<(j + 1) * hd]), bias: [Float](repeating: 0, count: hd), eps: eps) }
        }
        let names = c.names
        var layers: [Layer] = []
        var sublayers: [FFNSublayer] = []
        for i in 0..<c.numLayers {
            let l = root.scope(names.layer(i))
            for buffer in c.ignoredLayerBuffers where l.contains(buffer) { store.ignore(l.name(buffer)) }
            let inputNorm = c.outputNorms ? nil : try norm(l.scope(names.leaf(.inputNorm)))
            let attentionOutputNorm = c.outputNorms || c.sandwich ? try norm(l.scope(names.leaf(.postAttentionNorm))) : nil
            let qDim = c.numHeads * hd, kvDim = c.numKVHeads * hd
            var q, k, v, qkvPerHead: Linear?
            if c.fusedQKVPerHead {
                qkvPerHead = try l.scope(names.leaf(.qkv)).linear(out: qDim + 2 * kvDim, in: d, bias: c.qkvBias)
            } else if c.fusedQKV {
                // Views of one [q | k | v] matrix: nothing is copied.
                let qkv = try l.scope(names.leaf(.qkv)).linear(out: qDim + 2 * kvDim, in: d, bias: c.qkvBias)
                (q, k, v) = (qkv.rows(0..<qDim), qkv.rows(qDim..<qDim + kvDim), qkv.rows(qDim + kvDim..<qDim + 2 * kvDim))
            } else {
                q = try l.scope(names.leaf(.q)).linear(out: qDim, in: d, bias: c.qkvBias)
                k = try l.scope(names.leaf(.k)).linear(out: kvDim, in: d, bias: c.qkvBias)
                v = try l.scope(names.leaf(.v)).linear(out: kvDim, in: d, bias: c.qkvBias)
            }
            layers.append(Layer(
                inputNorm: inputNorm, attentionOutputNorm: attentionOutputNorm,
                q: q, k: k, v: v, qkvPerHead: qkvPerHead,
                o: try l.scope(names.leaf(.o)).linear(out: d, in: c.numHeads * hd, bias: c.outputBias),
                qNorm: try qkNorms(l.scope(names.leaf(.qNorm)), heads: c.numHeads),
                kNorm: try qkNorms(l.scope(names.leaf(.kNorm)), heads: c.numKVHeads),
                rotary: c.ropeLayers[i] ? (c.slidingLayers[i] ? c.slidingRotary ?? c.rotary : c.rotary) : nil,
                slidingWindow: c.slidingWindows[i]))
            var projections: [Linear] = []
            for proj in c.ffn.projections {
                projections.append(try l.scope(names.leaf(proj.tensor)).linear(out: proj.input ? proj.blocks * I : d, in: proj.input ? d : I, bias: c.mlpBias))
            }
            let ffn: any FeedForward
            switch c.ffn {
            case .gated: ffn = GatedFeedForward(gate: projections[0], up: projections[1], down: projections[2], activation: c.gatedActivation)
            case .fusedGateUp: ffn = GatedFeedForward(gate: projections[0].rows(0..<I), up: projections[0].rows(I..<2 * I), down: projections[1])
            case .ungated(let activation): ffn = UngatedFeedForward(input: projections[0], output: projections[1], activation: activation)
            }
            // A parallel block's FFN reads its own norm (GPT-NeoX's post_attention_layernorm) or
            // the one it shares with attention (Phi, Cohere).
            let ffnNorm: DecoderTensor = c.outputNorms ? .postFeedforwardNorm : c.sandwich ? .preFeedforwardNorm
                : c.sharedNorm ? .inputNorm : .postAttentionNorm
            sublayers.append(FFNSublayer(
                placement: c.outputNorms ? .outputNorm : c.sandwich ? .sandwich : .preNorm,
                norm: try norm(l.scope(names.leaf(ffnNorm))),
                ffn: ffn, residualScale: c.residualMultiplier,
                postNorm: c.sandwich ? try norm(l.scope(names.leaf(.postFeedforwardNorm))) : nil))
        }
        let finalNorm = try norm(root.scope(String(c.names.finalNorm.dropLast(".weight".count))))
        let lmHead = try languageModelHead(store, tied: c.tieWordEmbeddings, embedding: embedding, name: c.names.head, bias: c.headBias)
        if c.textTower {
            // The vision tower and the projector: carried through by surgery, not run here.
            let base = c.names.base + "."
            store.ignore { !$0.hasPrefix(base) && $0 != c.names.head }
        }
        let versatile = try loadVersatileLayers(store, sublayers: sublayers, hiddenSize: d, intermediateSize: I, topology: c.topology,
                                                bases: c.textTower ? (DecoderNames.textTowers.map(\.base), c.names.base) : nil)
        try store.requireAllUsed()
        return Model(config: c, embedding: embedding, layers: layers, ffnSublayers: sublayers,
                     versatileLayers: versatile, finalNorm: finalNorm, lmHead: lmHead)
    }
}

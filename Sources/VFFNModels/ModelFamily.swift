import VFFNFormats

/// What the modules above the forward pass need to know about one model_type, said once, by the
/// architecture that implements it: surgery, the transformers remote code, the OLMo export and
/// `inspect` read it here instead of keeping model-type lists of their own.
public struct ModelFamily: Sendable {
    /// SPEC section 5's block topologies: where the FFN sub-layer's norm and residual sit.
    public enum Topology: String, Sendable {
        /// `S(x) = x + F(N x)`
        case preNorm = "pre-norm"
        /// `S(x) = x + r·F(N x)` (Granite's residual_multiplier r)
        case scaledPreNorm = "scaled pre-norm"
        /// `S(x) = N(x + F(x))` (BERT)
        case postNorm = "post-norm"
        /// `S(x) = x + N(F(x))`, and the attention branch normalized the same way (OLMo 2)
        case outputNorm = "output-norm"
        /// `S(x) = x + N_post(F(N_pre x))`, the attention branch likewise (Gemma 2)
        case sandwich
        /// `y = A(N_1 h) + T(h)`, `T(h) = h + F(N_2 h)`: attention and FFN read the block input
        /// (GPT-NeoX, Phi, Cohere), and so do the gates.
        case parallel
    }

    public let modelType: String
    /// The family's block; a checkpoint's own config can choose another (GPT-NeoX's
    /// use_parallel_residual false is pre-norm), which `FFNLayout.topology` gives.
    public let topology: Topology
    /// What `run` returns for it.
    public let output: OutputKind
    /// transformers' Auto class for the converted checkpoint, and the class of
    /// modeling_versatile_ffn.py built on its stock model.
    public let autoClass: String
    public let remoteCodeClass: String
    /// What of the family OLMo's sequential block (att_proj = [q; k; v], ff_proj = [up; gate],
    /// RMSNorm) cannot express, or nil when `--output-format olmo` can write it.
    public let notInOLMo: String?

    public var olmoLayout: Bool { notInOLMo == nil }

    public init(_ modelType: String, topology: Topology = .preNorm, output: OutputKind, autoClass: String, remoteCodeClass: String,
                notInOLMo: String?) {
        self.modelType = modelType
        self.topology = topology
        self.output = output
        self.autoClass = autoClass
        self.remoteCodeClass = remoteCodeClass
        self.notInOLMo = notInOLMo
    }
}

extension Architecture {
    public static var modelTypes: [String] { families.map(\.modelType) }
}

extension Architectures {
    /// Every family, in the order `supportedModelTypes` lists them.
    public static var families: [ModelFamily] { all.flatMap { $0.families } }

    public static func family(_ modelType: String) -> ModelFamily? {
        families.first { $0.modelType == modelType }
    }
}

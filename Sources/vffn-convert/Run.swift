import ArgumentParser
import VFFNFormats
import VFFNModels

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a forward pass over token ids and write the output as float32 .npy.",
        discussion: """
        One sequence, positions 0..T-1, no padding. Causal LMs (llama, mistral, qwen2, gpt2) write \
        [T, vocab] logits; encoders (bert, token type 0, bidirectional) write [T, hidden] last \
        hidden states. A converted checkpoint runs with VersatileFFN semantics unless --dense is given.
        """)

    @Argument(help: "Checkpoint directory (dense or converted).")
    var directory: String

    @Option(help: "Token ids, e.g. 5,17,42.")
    var tokens: TokenList

    @Option(help: "Output .npy path.")
    var out: String

    @Flag(help: "Ignore the VersatileFFN gates and run the dense model.")
    var dense = false

    func run() throws {
        removePartialOutputOnSignals()
        try reportingErrors {
            let model = try Architectures.load(Checkpoint(path: directory))
            let mode: FFNMode = dense || model.versatileLayers == nil ? .dense : .versatile()
            let result = try model.forward(tokens.ids, mode: mode, trace: false)
            try NPY.write(result.output.data, shape: [result.output.rows, result.output.cols], to: out)
            note("wrote \(out): [\(result.output.rows), \(result.output.cols)] \(model.outputKind.rawValue), \(mode == .dense ? "dense" : "VersatileFFN")")
        }
    }
}

import ArgumentParser
import VFFNFormats
import VFFNModels

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a forward pass over token ids or text and write the output as float32 .npy.",
        discussion: """
        One sequence, positions 0..T-1, no padding. Causal LMs \
        (\(Architectures.families.filter { $0.output == .logits }.map(\.modelType).joined(separator: ", "))) write \
        [T, vocab] logits; encoders (\(Architectures.families.filter { $0.output == .hiddenStates }.map(\.modelType).joined(separator: ", ")), \
        token type 0, bidirectional) write [T, hidden] last hidden states. A converted checkpoint runs with VersatileFFN semantics unless --dense is given.
        """)

    @Argument(help: ArgumentHelp("A checkpoint, dense or converted: a directory, a .gguf or a .vffn file.", valueName: "checkpoint"),
              completion: .file())
    var checkpoint: String

    @OptionGroup var tokens: TokenOptions

    @Option(help: ArgumentHelp("The .npy file to write; - for stdout.", valueName: "file"), completion: .file(extensions: ["npy"]))
    var out: String

    @Flag(help: "Ignore the VersatileFFN gates and run the dense model.")
    var dense = false

    @OptionGroup var write: WriteOptions
    @OptionGroup var compute: ComputeOptions
    @OptionGroup var common: CommonOptions

    func validate() throws {
        if !tokens.given { throw ValidationError("give what to run: --tokens 5,17,42, --tokens-file FILE, --text S or --text-file FILE") }
    }

    func run() throws {
        compute.apply()
        removePartialOutputOnSignals()
        try reportingErrors {
            let model = try Architectures.load(Checkpoint(path: checkpoint))
            let ids = try tokens.ids(checkpoint: checkpoint, positions: model.trainedPositions, quiet: common.quiet) ?? []
            let mode: FFNMode = dense || model.versatileLayers == nil ? .dense : .versatile()
            // Refused before the model runs: a run that cannot be written is not started.
            _ = try AtomicOutput(destination: out, kind: .file, force: write.force, inputs: [checkpoint], dryRun: true)
            let result = try model.forward(ids, mode: mode, trace: false)
            try NPY.write(result.output.data, shape: [result.output.rows, result.output.cols], to: out, force: write.force, inputs: [checkpoint])
            if !common.quiet {
                note("wrote \(out == "-" ? "stdout" : out): [\(result.output.rows), \(result.output.cols)] \(model.outputKind.rawValue), \(mode == .dense ? "dense" : "VersatileFFN")")
            }
        }
    }
}

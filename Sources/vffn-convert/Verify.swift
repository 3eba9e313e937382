import ArgumentParser
import VFFNFormats
import VFFNModels
import VFFNSurgery

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check a converted checkpoint: exit 0 only if every check passes.",
        discussion: """
        Checks: (1) with --source, every dense tensor is byte-identical to the source; \
        (2) the partition identity: on random probe inputs the N sub-experts sum to the dense FFN \
        (plus (N-1) times the output bias, if any); (3) dense equivalence: with max depth 1 the \
        model equals the dense model exactly; (4) the VersatileFFN forward pass on probe tokens \
        is finite; (5) how far it starts from the dense model on the probe tokens (KL of the \
        next-token distributions and top-1 agreement, or the cosine of an encoder's hidden states), \
        a failure only above --max-kl. Prints each layer's errors, depth histogram and sub-expert load.
        """)

    @Argument(help: ArgumentHelp("The converted checkpoint: a directory or a .vffn file.", valueName: "checkpoint"), completion: .file())
    var checkpoint: String

    @Option(help: ArgumentHelp("The dense checkpoint it was converted from (directory, .gguf or .vffn), to compare tensor bytes.",
                               valueName: "source"), completion: .file())
    var source: String?

    @OptionGroup var tokens: TokenOptions

    @Option(parsing: .unconditional, help: "Seed of the probe inputs (0...2^64-1).", transform: parseSeed)
    var seed: UInt64 = 0

    @Option(name: .customLong("max-kl"), help: ArgumentHelp("Fail when the mean KL(dense || VersatileFFN) of the next-token distributions on the probe tokens exceeds this (nats; causal LMs).", valueName: "nats"))
    var maxKL: Double?

    @Flag(help: "Print the report as JSON instead of the table.")
    var json = false

    @OptionGroup var compute: ComputeOptions
    @OptionGroup var common: CommonOptions

    func validate() throws {
        if let maxKL, !(maxKL >= 0) { throw ValidationError("--max-kl must be a number of nats, 0 or more (got \(maxKL))") }
    }

    func run() throws {
        compute.apply()
        var passed = false
        try reportingErrors {
            // Text is cut to the model's positions, which loading the model tells.
            let positions = tokens.text != nil || tokens.textFile != nil ? try Architectures.load(Checkpoint(path: checkpoint)).trainedPositions : nil
            let probes = try tokens.ids(checkpoint: checkpoint, positions: positions, quiet: common.quiet || json)
            let report = try Verifier.verify(destination: checkpoint, source: source, probeTokens: probes, seed: seed, maxKL: maxKL)
            if json { printJSON(report.json) } else if !common.quiet { print(report.table, terminator: "") }
            passed = report.passed
        }
        if !passed { throw ExitCode(1) }
    }
}

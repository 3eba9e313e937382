import ArgumentParser
import VFFNSurgery

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check a converted checkpoint: exit 0 only if every check passes.",
        discussion: """
        Checks: (1) with --source, every dense tensor is byte-identical to the source; \
        (2) the partition identity: on random probe inputs the N sub-experts sum to the dense FFN \
        (plus (N-1) times the output bias, if any); (3) dense equivalence: with max depth 1 the \
        model equals the dense model exactly; (4) the VersatileFFN forward pass on probe tokens \
        is finite. Prints each layer's errors, depth histogram and sub-expert load.
        """)

    @Argument(help: "Converted checkpoint directory.")
    var destination: String

    @Option(help: "The dense checkpoint it was converted from, to compare tensor bytes.")
    var source: String?

    @Option(help: "Probe token ids, e.g. 5,17,42 (default: 32 ids drawn from --seed).")
    var tokens: TokenList?

    @Option(help: "Seed of the probe inputs.")
    var seed: UInt64 = 0

    func run() throws {
        var passed = false
        try reportingErrors {
            let report = try Verifier.verify(destination: destination, source: source, probeTokens: tokens?.ids, seed: seed)
            print(report.table, terminator: "")
            passed = report.passed
        }
        if !passed { throw ExitCode(1) }
    }
}

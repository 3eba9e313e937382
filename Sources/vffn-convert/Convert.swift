import ArgumentParser
import Foundation
import VFFNFormats
import VFFNSurgery

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert a dense checkpoint directory into a VersatileFFN checkpoint.",
        discussion: """
        Writes DST next to it under a temporary name and renames it only when complete. \
        The FFN's intermediate neurons are cut into N contiguous sub-experts (N must divide the \
        intermediate size); the new gates are drawn from a truncated normal (std 0.02) seeded by \
        --seed, so the same command always writes the same bytes.
        """)

    @Argument(help: "Source checkpoint directory (dense, Hugging Face layout).")
    var source: String

    @Argument(help: "Destination directory to create.")
    var destination: String

    @Option(name: .customLong("experts"), help: "Number of sub-experts N (divides the intermediate size).")
    var experts: Int = 8

    @Option(name: .customLong("top-k"), help: "Sub-experts each token uses (1...N).")
    var topK: Int = 2

    @Option(name: .customLong("max-depth"), help: "Largest loop count D of the depth path (>= 1).")
    var maxDepth: Int = 4

    @Option(help: "Seed of the gate initialization.")
    var seed: UInt64 = 0

    @Flag(help: "Replace DST if it exists.")
    var force = false

    @Flag(help: "Print nothing but errors.")
    var quiet = false

    func run() throws {
        removePartialOutputOnSignals()
        try reportingErrors {
            let started = Date()
            let plan = try UpcyclePlan(source: Checkpoint(path: source), experts: experts, topK: topK, maxDepth: maxDepth, seed: seed)
            let summary = try plan.write(to: destination, force: force, progress: { if !quiet { note("  \($0)") } })
            guard !quiet else { return }
            let seconds = Date().timeIntervalSince(started)
            print("""
            converted \(source) -> \(destination) in \(String(format: "%.2f", seconds)) s
              model_type \(plan.source.config["model_type"]?.stringValue ?? "?"), \(summary.layers) layers, hidden \(plan.layout.hiddenSize), intermediate \(plan.layout.intermediateSize)
              \(experts) sub-experts of \(plan.layout.intermediateSize / experts) neurons, top-\(topK), max depth \(maxDepth), seed \(seed)
              \(summary.copiedTensors) dense tensors (\(summary.copiedBytes) bytes) copied unchanged, \(summary.gateTensors) gate tensors added as \(summary.gateDType?.rawValue ?? "?")
              \(summary.shards) shard(s), \(summary.auxiliaryFiles.count) other file(s) copied
            """)
        }
    }
}

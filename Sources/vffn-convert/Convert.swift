import ArgumentParser
import Foundation
import VFFNFormats
import VFFNSurgery

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert a dense checkpoint into a VersatileFFN checkpoint.",
        discussion: """
        SRC is a Hugging Face directory (safetensors or pytorch_model.bin, single or sharded), a \
        .vffn container, or a llama.cpp .gguf file (Llama; its Q8_0 tensors are written as F32). \
        Writes DST next to it under a temporary name and renames it only when complete. \
        The FFN's intermediate neurons are cut into N contiguous sub-experts (N must divide the \
        intermediate size); the new gates are drawn from a truncated normal (std 0.02) seeded by \
        --seed, so the same command always writes the same bytes.
        """)

    @Argument(help: "Source checkpoint: a directory, a .vffn or a .gguf file (told apart by content).")
    var source: String

    @Argument(help: "Destination to create: a directory, or one file with --output-format vffn.")
    var destination: String

    @Option(name: .customLong("experts"), help: "Number of sub-experts N (divides the intermediate size).")
    var experts: Int = 8

    @Option(name: .customLong("top-k"), help: "Sub-experts each token uses (1...N).")
    var topK: Int = 2

    @Option(name: .customLong("max-depth"), help: "Largest loop count D of the depth path (>= 1).")
    var maxDepth: Int = 4

    @Option(help: "Seed of the gate initialization.")
    var seed: UInt64 = 0

    @Option(name: .customLong("output-format"), help: "safetensors (a Hugging Face directory) or vffn (one container file).")
    var outputFormat: UpcyclePlan.OutputFormat = .safetensors

    @Flag(help: "With --output-format vffn: deflate each tensor and file (zlib).")
    var compress = false

    @Flag(help: "Replace DST if it exists.")
    var force = false

    @Flag(help: "Print nothing but errors (no summary, no progress line).")
    var quiet = false

    func validate() throws {
        if compress && outputFormat != .vffn { throw ValidationError("--compress applies only to --output-format vffn") }
    }

    func run() throws {
        removePartialOutputOnSignals()
        try reportingErrors {
            let started = Date()
            let plan = try UpcyclePlan(source: Checkpoint(path: source), experts: experts, topK: topK, maxDepth: maxDepth, seed: seed)
            let line = ProgressLine(quiet: quiet)
            let summary = try plan.write(to: destination, format: outputFormat, compress: compress, force: force, progress: line.update)
            line.finish()
            guard !quiet else { return }
            let seconds = Date().timeIntervalSince(started)
            print("""
            converted \(source) -> \(destination) in \(String(format: "%.2f", seconds)) s
              model_type \(plan.source.config["model_type"]?.stringValue ?? "?"), \(summary.layers) layers, hidden \(plan.layout.hiddenSize), intermediate \(plan.layout.intermediateSize)
              \(experts) sub-experts of \(plan.layout.intermediateSize / experts) neurons, top-\(topK), max depth \(maxDepth), seed \(seed)
              \(summary.copiedTensors) dense tensors (\(summary.copiedBytes) bytes) copied unchanged, \(summary.gateTensors) gate tensors added as \(summary.gateDType?.rawValue ?? "?")
              \(summary.shards) shard(s), \(summary.auxiliaryFiles.count) other file(s) copied, written as \(outputFormat.rawValue)\(compress ? " (deflated)" : "")
            """)
            for n in summary.sourceNotes { print("  note: \(n)") }
        }
    }
}

extension UpcyclePlan.OutputFormat: ExpressibleByArgument {}

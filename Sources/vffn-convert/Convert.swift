import ArgumentParser
import Foundation
import VFFNFormats
import VFFNSurgery

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert a dense checkpoint into a VersatileFFN checkpoint.",
        discussion: """
        SRC is a Hugging Face directory (safetensors or pytorch_model.bin, single or sharded), a \
        .vffn container, or a llama.cpp .gguf file (Llama or Qwen2; Q8_0 tensors are written as F32). \
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

    @Option(help: "How neurons form the sub-expert slices: contiguous (stored order) or cluster (balanced k-means; the FFN tensors are permuted, the dense function is not changed).")
    var split: NeuronSplit = .contiguous

    @Option(name: .customLong("router-init"), help: "expert_gate init: random (the paper's) or centroid (row e = slice e's normalized centroid).")
    var routerInit: RouterInit = .random

    @Option(name: .customLong("depth-init"), help: "depth_predictor init: random (the paper's), shallow (every token one loop) or calibrated (see --depth-target).")
    var depthInit: DepthInit = .random

    @Option(help: "With --depth-init calibrated: a file of token ids (separated by spaces, commas or newlines) to calibrate on; default: 256 built-in ids.")
    var calibration: String?

    @Option(name: .customLong("depth-target"), help: "With --depth-init calibrated: the fractions of calibration tokens at depths 1...D, e.g. 0.4,0.3,0.2,0.1 (default: uniform).")
    var depthTarget: String?

    @Option(name: .customLong("output-format"), help: "safetensors (a Hugging Face directory), vffn (one container file) or olmo (an unsharded OLMo checkpoint directory: model.pt in OLMo's fused layout + config.yaml; Llama, Mistral, Qwen2).")
    var outputFormat: UpcyclePlan.OutputFormat = .safetensors

    @Flag(name: .customLong("emit-modeling"), help: "Also write modeling_versatile_ffn.py and config.json \"auto_map\" entries, so that transformers loads DST with trust_remote_code=True (AutoModelForCausalLM; AutoModel for BERT).")
    var emitModeling = false

    @Flag(help: "With --output-format vffn: deflate each tensor and file (zlib).")
    var compress = false

    @Flag(help: "Replace DST if it exists.")
    var force = false

    @Flag(name: .customLong("no-fsync"), help: "Do not wait for DST to reach the disk before renaming it into place (faster; not crash-safe).")
    var noFsync = false

    @Flag(help: "Print nothing but errors (no summary, no progress line).")
    var quiet = false

    func validate() throws {
        if compress && outputFormat != .vffn { throw ValidationError("--compress applies only to --output-format vffn") }
        if emitModeling && outputFormat == .olmo { throw ValidationError("--emit-modeling writes transformers code, which an OLMo checkpoint (--output-format olmo) has no use for") }
        if (calibration != nil || depthTarget != nil) && depthInit != .calibrated {
            throw ValidationError("--calibration and --depth-target apply only to --depth-init calibrated")
        }
        if let depthTarget, depthTarget.split(separator: ",").contains(where: { Double($0.trimmingCharacters(in: .whitespaces)) == nil }) {
            throw ValidationError("--depth-target must be comma-separated numbers, e.g. 0.4,0.3,0.2,0.1")
        }
    }

    /// The gate options, reading the calibration file if one is given.
    func gateOptions() throws(VFFNError) -> GateOptions {
        var tokens: [Int]?
        if let calibration {
            guard let data = FileManager.default.contents(atPath: calibration) else { throw .badInput(calibration, "cannot read the calibration tokens") }
            let words = String(decoding: data, as: UTF8.self).split { $0 == "," || $0.isWhitespace }
            let ids = words.compactMap { Int($0) }
            guard ids.count == words.count, !ids.isEmpty, ids.allSatisfy({ $0 >= 0 }) else {
                throw .badInput(calibration, "must hold non-negative integer token ids separated by spaces, commas or newlines")
            }
            tokens = ids
        }
        return GateOptions(split: split, routerInit: routerInit, depthInit: depthInit, calibrationTokens: tokens,
                           depthTarget: depthTarget.map { $0.split(separator: ",").map { Double($0.trimmingCharacters(in: .whitespaces))! } })
    }

    func run() throws {
        removePartialOutputOnSignals()
        try reportingErrors {
            let started = Date()
            let plan = try UpcyclePlan(source: Checkpoint(path: source), experts: experts, topK: topK, maxDepth: maxDepth, seed: seed,
                                       options: gateOptions())
            OutputFile.durable = !noFsync
            let line = ProgressLine(quiet: quiet)
            let summary = try plan.write(to: destination, format: outputFormat, compress: compress, force: force,
                                         emitModeling: emitModeling, progress: line.update)
            line.finish()
            guard !quiet else { return }
            let seconds = Date().timeIntervalSince(started)
            print("""
            converted \(source) -> \(destination) in \(String(format: "%.2f", seconds)) s
              model_type \(plan.source.config["model_type"]?.stringValue ?? "?"), \(summary.layers) layers, hidden \(plan.layout.hiddenSize), intermediate \(plan.layout.intermediateSize)
              \(experts) sub-experts of \(plan.layout.intermediateSize / experts) neurons, top-\(topK), max depth \(maxDepth), seed \(seed)
            """)
            if outputFormat == .olmo {
                print("""
                  \(summary.copiedTensors) source tensors written to model.pt in OLMo's fused layout (att_proj = [q; k; v], ff_proj = [up; gate]), \(summary.gateTensors) gate tensors added as \(summary.gateDType?.rawValue ?? "?")
                  config.yaml holds OLMo's model section and load_path; \(summary.auxiliaryFiles.count) other file(s) copied
                """)
            } else {
                print("""
                  \(summary.copiedTensors) dense tensors (\(summary.copiedBytes) bytes) copied unchanged, \(summary.gateTensors) gate tensors added as \(summary.gateDType?.rawValue ?? "?")
                  \(summary.shards) shard(s), \(summary.auxiliaryFiles.count) other file(s) copied, written as \(outputFormat.rawValue)\(compress ? " (deflated)" : "")
                """)
            }
            print("  neurons \(split == .cluster ? "clustered (balanced k-means) and permuted" : "in stored order"), router \(routerInit.rawValue), depth \(depthInit.rawValue)")
            if let c = plan.calibration {
                print("  calibrated depth on \(c.tokens.count) tokens, target \(c.target.map { String(format: "%.2f", $0) }.joined(separator: " ")): "
                      + c.layers.map { $0.histogram.map(String.init).joined(separator: " ") }.joined(separator: " | "))
            }
            if emitModeling { print("  wrote \(RemoteCode.fileName): load with trust_remote_code=True") }
            for n in summary.sourceNotes { print("  note: \(n)") }
        }
    }
}

extension UpcyclePlan.OutputFormat: ExpressibleByArgument {}
extension NeuronSplit: ExpressibleByArgument {}
extension RouterInit: ExpressibleByArgument {}
extension DepthInit: ExpressibleByArgument {}

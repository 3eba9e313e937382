import ArgumentParser
import Foundation
import VFFNFormats
import VFFNModels
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
        --seed, so the same command always writes the same checkpoint bytes.
        """)

    @Argument(help: ArgumentHelp("The dense checkpoint: a Hugging Face directory (safetensors or pytorch_model.bin, single or sharded), a .gguf or a .vffn file.",
                                 valueName: "source"), completion: .file())
    var source: String

    @Argument(help: ArgumentHelp("The VersatileFFN checkpoint to create: a directory (safetensors, olmo) or one file (vffn; - for stdout). Missing parent directories are created.",
                                 valueName: "destination"), completion: .file())
    var destination: String

    @Option(name: .customLong("experts"), parsing: .unconditional, help: "Number of sub-experts N (divides the intermediate size).")
    var experts: Int = 8

    @Option(name: .customLong("top-k"), parsing: .unconditional, help: "Sub-experts each token uses (1...N).")
    var topK: Int = 2

    @Option(name: .customLong("max-depth"), parsing: .unconditional,
            help: "Largest loop count D of the depth path (1...\(VersatileFFNSettings.maxDepthLimit)).")
    var maxDepth: Int = 4

    @Option(parsing: .unconditional, help: "Seed of the gate initialization (0...2^64-1).", transform: parseSeed)
    var seed: UInt64 = 0

    @Option(help: ArgumentHelp("Upcycle only these layers, e.g. 0-11,20,22; the others stay dense (no gates).", valueName: "list"))
    var layers: String?

    @Option(help: ArgumentHelp("A plan file (JSON): per layer N, top-k, D, split and inits; layers it does not name stay dense. See the README.", valueName: "plan.json"),
            completion: .file(extensions: ["json"]))
    var plan: String?

    @Option(help: "How neurons form the sub-expert slices: contiguous (stored order) or cluster (balanced k-means; the FFN tensors are permuted, the dense function is not changed).")
    var split: NeuronSplit = .contiguous

    @Option(name: .customLong("router-init"), help: "expert_gate init: random (the paper's) or centroid (row e = slice e's normalized centroid).")
    var routerInit: RouterInit = .random

    @Option(name: .customLong("depth-init"), help: "depth_predictor init: random (the paper's), shallow (every token one loop) or calibrated (see --depth-target).")
    var depthInit: DepthInit = .random

    @Option(help: ArgumentHelp("With --depth-init calibrated: a file of token ids (separated by commas, spaces or newlines) to calibrate on; default: built-in ids.",
                               valueName: "file"), completion: .file())
    var calibration: String?

    @Option(name: .customLong("calibration-text"), help: ArgumentHelp("With --depth-init calibrated: a UTF-8 text file to calibrate on, tokenized as one text by the source's own tokenizer and cut to the model's positions.",
                               valueName: "file"), completion: .file())
    var calibrationText: String?

    @Option(name: .customLong("depth-target"), help: "With --depth-init calibrated: the fractions of calibration tokens at depths 1...D, e.g. 0.4,0.3,0.2,0.1 (default: uniform).")
    var depthTarget: String?

    @Option(name: .customLong("output-format"),
            help: "safetensors (a Hugging Face directory), vffn (one container file) or olmo (an unsharded OLMo checkpoint directory: model.pt in OLMo's fused layout + config.yaml; \(Architectures.families.filter(\.olmoLayout).map(\.modelType).joined(separator: ", "))).")
    var outputFormat: UpcyclePlan.OutputFormat = .safetensors

    @Flag(name: .customLong("emit-modeling"), help: "Also write modeling_versatile_ffn.py and config.json \"auto_map\" entries, so that transformers loads DST with trust_remote_code=True (AutoModelForCausalLM; AutoModel for BERT).")
    var emitModeling = false

    @Flag(help: "With --output-format vffn: deflate each tensor and file (zlib).")
    var compress = false

    @Flag(name: .customLong("dry-run"), help: "Check everything and print the summary, but write nothing.")
    var dryRun = false

    @OptionGroup var write: WriteOptions

    @Flag(name: .customLong("no-fsync"), help: "Do not wait for DST to reach the disk before renaming it into place (faster; not crash-safe).")
    var noFsync = false

    @OptionGroup var compute: ComputeOptions
    @OptionGroup var common: CommonOptions

    func validate() throws {
        if compress && outputFormat != .vffn { throw ValidationError("--compress applies only to --output-format vffn") }
        if emitModeling && outputFormat == .olmo { throw ValidationError("--emit-modeling writes transformers code, which an OLMo checkpoint (--output-format olmo) has no use for") }
        if (calibration != nil || calibrationText != nil || depthTarget != nil) && depthInit != .calibrated && plan == nil {
            throw ValidationError("--calibration, --calibration-text and --depth-target apply only to --depth-init calibrated")
        }
        if calibration != nil && calibrationText != nil { throw ValidationError("give --calibration or --calibration-text, not both") }
        if layers != nil && plan != nil { throw ValidationError("give --layers or --plan, not both (a plan's \"layers\" chooses the layers)") }
        if outputFormat != .vffn && destination == "-" {
            throw ValidationError("- (stdout) takes one file: add --output-format vffn, or name a directory")
        }
        if let depthTarget, depthTarget.split(separator: ",").contains(where: { Double($0.trimmingCharacters(in: .whitespaces)) == nil }) {
            throw ValidationError("--depth-target must be comma-separated numbers, e.g. 0.4,0.3,0.2,0.1")
        }
    }

    /// The gate options, reading the calibration file if one is given.
    func gateOptions() throws(VFFNError) -> GateOptions {
        var tokens: [Int]?
        if let calibration { tokens = try TokenIDs.read(calibration) }
        if let calibrationText {
            let positions = try Architectures.load(Checkpoint(path: source)).trainedPositions
            tokens = try TextInput.tokenize(TextInput.read(calibrationText), what: calibrationText, checkpoint: source, positions: positions, quiet: common.quiet)
        }
        return GateOptions(split: split, routerInit: routerInit, depthInit: depthInit, calibrationTokens: tokens,
                    depthTarget: depthTarget.map { $0.split(separator: ",").map { Double($0.trimmingCharacters(in: .whitespaces))! } })
    }

    func run() throws {
        compute.apply()
        removePartialOutputOnSignals()
        try reportingErrors {
            let started = Date()
            let plan = try upcyclePlan(Checkpoint(path: source))
            if !common.quiet {
                for w in VersatileFFNSettings.warnings(experts: experts, topK: topK, maxDepth: maxDepth) { note("vffn-convert: warning: \(w)") }
            }
            OutputFile.durable = !noFsync
            let line = ProgressLine(quiet: common.quiet || dryRun)
            let summary = try plan.write(to: destination, format: outputFormat, compress: compress, force: write.force,
                                         emitModeling: emitModeling, dryRun: dryRun, progress: line.update)
            line.finish()
            guard !common.quiet else { return }
            report(plan, summary, seconds: Date().timeIntervalSince(started))
        }
    }

    /// The plan: every layer alike, or the layers of --layers, or those of --plan.
    func upcyclePlan(_ checkpoint: Checkpoint) throws(VFFNError) -> UpcyclePlan {
        guard layers != nil || plan != nil else {
            return try UpcyclePlan(source: checkpoint, experts: experts, topK: topK, maxDepth: maxDepth, seed: seed, options: gateOptions())
        }
        let count = try Architectures.lookup(checkpoint).ffnLayout(checkpoint).sites.count
        let base = LayerPlan(numExperts: experts, topK: topK, maxDepth: maxDepth, split: split, routerInit: routerInit, depthInit: depthInit)
        var plans: [LayerPlan?]
        if let layers {
            let chosen = Set(try PlanFile.layers(layers, count: count))
            plans = (0..<count).map { chosen.contains($0) ? base : nil }
        } else {
            plans = try PlanFile.read(Checkpoint.readJSON(plan!, what: "plan file"), path: plan!, layers: count, defaults: base)
        }
        return try UpcyclePlan(source: checkpoint, layers: plans, seed: seed, options: gateOptions())
    }

    /// The summary, on stderr when the checkpoint itself went to stdout.
    func report(_ plan: UpcyclePlan, _ summary: ConversionSummary, seconds: Double) {
        var lines: [String] = []
        lines.append(dryRun ? "dry run: would convert \(source) -> \(destination); nothing written"
                            : "converted \(source) -> \(destination) in \(String(format: "%.2f", seconds)) s")
        lines.append("  model_type \(plan.source.config["model_type"]?.stringValue ?? "?"), \(plan.layerPlans.count) layers, hidden \(plan.layout.hiddenSize), intermediate \(plan.layout.intermediateSize)")
        if plan.isUniform {
            lines.append("  \(plan.numExperts) sub-experts of \(plan.layout.intermediateSize / plan.numExperts) neurons, top-\(plan.topK), max depth \(plan.maxDepth), seed \(seed)")
        } else {
            let dense = plan.layerPlans.enumerated().filter { $0.element == nil }.map { String($0.offset) }
            lines.append("  \(plan.layers.count) of \(plan.layerPlans.count) layers upcycled"
                         + (dense.isEmpty ? "" : " (dense: \(dense.joined(separator: ",")))") + ", seed \(seed); per layer (N k D split router depth):")
            for (l, p) in plan.layerPlans.enumerated() {
                guard let p else { continue }
                lines.append("    layer \(l): \(p.numExperts) \(p.topK) \(p.maxDepth) \(p.split.rawValue) \(p.routerInit.rawValue) \(p.depthInit.rawValue)")
            }
        }
        let changed = summary.changedTensors.map { "\($0.count) \($0.change)" }
        let gates = "\(summary.gateTensors) gate tensors \(dryRun ? "to add" : "added") as \(summary.gateDType?.rawValue ?? "?")"
        if outputFormat == .olmo {
            lines.append("  \(summary.copiedTensors) source tensors \(dryRun ? "to write" : "written") to model.pt in OLMo's fused layout (att_proj = [q; k; v], ff_proj = [up; gate])"
                         + (changed.isEmpty ? "" : " (" + changed.joined(separator: ", ") + ")") + ", \(gates)")
            lines.append("  config.yaml holds OLMo's model section and load_path; \(summary.auxiliaryFiles.count) other file(s) copied")
        } else {
            lines.append("  \(summary.copiedTensors) dense tensors (\(summary.copiedBytes) bytes) copied unchanged, "
                         + changed.map { $0 + ", " }.joined() + gates)
            lines.append("  \(summary.shards) shard(s), \(summary.auxiliaryFiles.count) other file(s) copied, written as \(outputFormat.rawValue)\(compress ? " (deflated)" : "")")
        }
        if plan.isUniform {
            lines.append("  neurons \(split == .cluster ? "clustered (balanced k-means) and permuted" : "in stored order"), router \(routerInit.rawValue), depth \(depthInit.rawValue)")
        }
        if let c = plan.calibration {
            lines.append("  calibrated depth on \(c.tokens.count) tokens, target \(c.target.map { String(format: "%.2f", $0) }.joined(separator: " ")): "
                         + c.layers.map { $0.histogram.map(String.init).joined(separator: " ") }.joined(separator: " | "))
        }
        if emitModeling { lines.append("  \(dryRun ? "would write" : "wrote") \(RemoteCode.fileName): load with trust_remote_code=True") }
        for n in summary.sourceNotes { lines.append("  note: \(n)") }
        let text = lines.joined(separator: "\n")
        printSummary(text, besides: destination)
    }
}

/// A seed as a domain value: a negative or fractional one is named as such.
func parseSeed(_ text: String) throws -> UInt64 {
    guard let v = UInt64(text) else { throw ValidationError("a seed is a whole number from 0 to 18446744073709551615, not \(text)") }
    return v
}

extension UpcyclePlan.OutputFormat: ExpressibleByArgument {}
extension NeuronSplit: ExpressibleByArgument {}
extension RouterInit: ExpressibleByArgument {}
extension DepthInit: ExpressibleByArgument {}

import ArgumentParser
import Foundation
import VFFNFormats
import VFFNModels
import VFFNSurgery
import VFFNText

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure how far converted checkpoints start from the dense model, and what their gates do.",
        discussion: """
        Runs the dense model and the VersatileFFN model on the same tokens (best: real text, \
        --text-file) and reports how far apart they are: for causal LMs the next-token \
        cross-entropy of each, KL(dense || VersatileFFN) per token (mean, median, p99) and top-1 \
        agreement; for encoders the cosine similarity of the last hidden states and of the \
        mean-pooled embeddings. Per layer: the relative change of the residual stream, the depth \
        histogram, the sub-expert load, and the share of the dense FFN output's energy the chosen \
        top-k slices reproduce (1 - |f - f_chosen|^2 / |f|^2, about k/N for random routing). \
        Several checkpoints (conversions of one source with different N, k, D or inits) are \
        compared in one table, their settings read from config.json. Without tokens or text, \
        32 random probe ids are used.
        """)

    @Argument(help: ArgumentHelp("Converted checkpoints: directories or .vffn files. Several are compared on the same tokens.", valueName: "checkpoint"),
              completion: .file())
    var checkpoints: [String]

    @OptionGroup var tokens: TokenOptions

    @Flag(help: "Print JSON instead of the tables.")
    var json = false

    @Flag(name: .customLong("tokens-by-depth"), help: "List the text's tokens at each chosen depth, summed over layers (or in --depth-layer).")
    var tokensByDepth = false

    @Option(name: .customLong("depth-layer"), help: ArgumentHelp("With --tokens-by-depth: one layer's depths instead of the sum.", valueName: "layer"))
    var depthLayer: Int?

    @Option(help: ArgumentHelp("Also write one self-contained HTML page of the measurements (inline SVG; no scripts or network).", valueName: "file.html"),
            completion: .file(extensions: ["html"]))
    var report: String?

    @OptionGroup var write: WriteOptions
    @OptionGroup var compute: ComputeOptions
    @OptionGroup var common: CommonOptions

    func validate() throws {
        if checkpoints.isEmpty { throw ValidationError("give at least one converted checkpoint") }
        if depthLayer != nil && !tokensByDepth { throw ValidationError("--depth-layer applies only to --tokens-by-depth") }
        if let depthLayer, depthLayer < 0 { throw ValidationError("--depth-layer must be a layer index, 0 or more (got \(depthLayer))") }
    }

    func run() throws {
        compute.apply()
        if report != nil { removePartialOutputOnSignals() }
        try reportingErrors {
            // Refused before anything runs: a report that cannot be written is not measured.
            if let report { _ = try AtomicOutput(destination: report, kind: .file, force: write.force, inputs: checkpoints, dryRun: true) }
            let first = try Checkpoint(path: checkpoints[0])
            let firstModel = try Architectures.load(first)
            let ids = try tokens.ids(checkpoint: checkpoints[0], positions: firstModel.trainedPositions, quiet: common.quiet || json)
                ?? Verifier.defaultProbeTokens(vocabSize: firstModel.vocabSize, seed: 0, count: min(32, firstModel.maxTokens ?? 32))
            var measured: [MeasuredConversion] = []
            var firstDense: Matrix?
            for (i, path) in checkpoints.enumerated() {
                let ckpt = i == 0 ? first : try Checkpoint(path: path)
                let model = i == 0 ? firstModel : try Architectures.load(ckpt)
                if i > 0, model.modelType != firstModel.modelType || model.vocabSize != firstModel.vocabSize || model.hiddenSize != firstModel.hiddenSize {
                    throw VFFNError.usage("\(path) is a \(model.modelType) of vocabulary \(model.vocabSize) and hidden size \(model.hiddenSize), \(checkpoints[0]) a \(firstModel.modelType) of \(firstModel.vocabSize) and \(firstModel.hiddenSize): compare conversions of one source")
                }
                let q = try StartQuality.measure(model, tokens: ids, configPath: ckpt.configPath)
                // Conversions of one source run the same dense function (a neuron permutation
                // reorders its sums only).
                let dense = q.denseOutputHead
                if let firstDense {
                    let diff = dense.maxAbsDifference(firstDense), scale = max(firstDense.maxAbs, .leastNormalMagnitude)
                    if diff / scale > 1e-4 {
                        throw VFFNError.usage("\(path) and \(checkpoints[0]) are not conversions of one source: their dense outputs differ (\(String(format: "%.2e", Double(diff / scale))) relative)")
                    }
                } else { firstDense = dense }
                measured.append(MeasuredConversion(path: path, config: ckpt.config, quality: q))
            }
            if let depthLayer, depthLayer >= measured[0].quality.layers.count {
                throw VFFNError.usage("--depth-layer \(depthLayer): the model has \(measured[0].quality.layers.count) layers (0...\(measured[0].quality.layers.count - 1))")
            }
            let tokenizer = try? Tokenizer.load(path: checkpoints[0])
            let pieces = tokenizer.map { t in ids.map { t.decode([$0]) } } ?? ids.map { "[\($0)]" }

            if json {
                var out = measured.count == 1 ? measured[0].quality.json.setting("checkpoint", to: .string(checkpoints[0])) : measured.json
                if tokensByDepth { out = out.setting("tokens_by_depth", to: TokensByDepth.json(measured[0].quality, layer: depthLayer, pieces: pieces)) }
                printJSON(out)
            } else if !common.quiet {
                let source = tokens.text != nil || tokens.textFile != nil ? "text" : tokens.given ? "given ids" : "random probe ids"
                if measured.count == 1 {
                    print("\(checkpoints[0]): \(measured[0].settingsDescription); \(ids.count) tokens (\(source))")
                    print(measured[0].quality.table, terminator: "")
                } else {
                    print("\(measured.count) conversions on the same \(ids.count) tokens (\(source)):")
                    print(measured.comparisonTable, terminator: "")
                }
                if tokensByDepth {
                    for m in measured {
                        if measured.count > 1 { print("\n\(m.path):") } else { print() }
                        print(TokensByDepth.table(m.quality, layer: depthLayer, pieces: pieces), terminator: "")
                    }
                }
            }
            if let report {
                let out = try AtomicOutput(destination: report, kind: .file, force: write.force, inputs: checkpoints)
                let file = try OutputFile(path: out.temporary)
                try file.write(QualityReportPage.html(measured, pieces: pieces))
                try file.finish()
                try out.commit()
                if !common.quiet && !json { note("wrote \(report)") }
            }
        }
    }
}

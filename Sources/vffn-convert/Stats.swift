import ArgumentParser
import Foundation
import VFFNFormats
import VFFNModels
import VFFNSurgery

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show what a converted checkpoint's gates do: depths, sub-expert load, energy captured.",
        discussion: """
        Runs the VersatileFFN forward pass over the tokens and reports, per layer, the depth \
        histogram, how often each sub-expert is in a token's top-k, and the share of the dense \
        FFN output's energy that the chosen top-k slices reproduce (1 - |f - f_chosen|^2 / |f|^2, \
        averaged over tokens; about k/N for random routing).
        """)

    @Argument(help: ArgumentHelp("The converted checkpoint: a directory or a .vffn file.", valueName: "checkpoint"), completion: .file())
    var checkpoint: String

    @OptionGroup var tokens: TokenOptions

    @Flag(help: "Print JSON instead of the table.")
    var json = false

    @OptionGroup var compute: ComputeOptions
    @OptionGroup var common: CommonOptions

    func run() throws {
        compute.apply()
        try reportingErrors {
            let ckpt = try Checkpoint(path: checkpoint)
            let model = try Architectures.load(ckpt)
            let ids = try tokens.ids(checkpoint: checkpoint, positions: model.trainedPositions, quiet: common.quiet) ?? Verifier.defaultProbeTokens(vocabSize: model.vocabSize, seed: 0, count: min(32, model.maxTokens ?? 32))
            let stats = try Statistics.compute(model, tokens: ids, configPath: ckpt.configPath)
            if json {
                let mean = stats.isEmpty ? 0 : stats.map(\.energyCaptured).reduce(0, +) / Double(stats.count)
                printJSON(stats.json.setting("tokens", to: .int(ids.count)).setting("mean_energy_captured", to: .number(String(format: "%.6f", mean))))
            } else if !common.quiet {
                print("\(checkpoint): \(ids.count) tokens")
                print(stats.table, terminator: "")
            }
        }
    }
}

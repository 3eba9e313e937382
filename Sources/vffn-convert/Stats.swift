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

    @Argument(help: "A converted checkpoint (directory, .vffn or GGUF-converted directory).")
    var path: String

    @Option(help: "Token ids, e.g. 5,17,42 (default: verify's 32 deterministic probe tokens).")
    var tokens: TokenList?

    @Flag(help: "Print JSON instead of the table.")
    var json = false

    func run() throws {
        try reportingErrors {
            let checkpoint = try Checkpoint(path: path)
            let model = try Architectures.load(checkpoint)
            let ids = tokens?.ids ?? Verifier.defaultProbeTokens(vocabSize: model.vocabSize, seed: 0, count: min(32, model.maxTokens ?? 32))
            let stats = try Statistics.compute(model, tokens: ids, configPath: checkpoint.configPath)
            if json {
                print(stats.json.setting("tokens", to: .int(ids.count)).pretty, terminator: "")
            } else {
                print("\(path): \(ids.count) tokens")
                print(stats.table, terminator: "")
            }
        }
    }
}

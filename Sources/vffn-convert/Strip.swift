import ArgumentParser
import Foundation
import VFFNFormats
import VFFNSurgery

struct Strip: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Remove the VersatileFFN gates: the dense checkpoint back, byte for byte.",
        discussion: """
        Writes CONVERTED without its expert_gate and depth_predictor tensors and without the \
        versatile_ffn section of config.json, with a cluster split's neuron order undone (from the \
        order convert recorded) and the auto_map that --emit-modeling replaced put back. On a \
        checkpoint as convert wrote it, every tensor of the result is the source's, byte for byte \
        (verify --source checks this in memory). On a trained checkpoint the result is the dense \
        model with the trained weights, and strip says so.
        """)

    @Argument(help: ArgumentHelp("A converted checkpoint: a directory or a .vffn file.", valueName: "converted"), completion: .file())
    var converted: String

    @Argument(help: ArgumentHelp("Where to write the dense checkpoint.", valueName: "destination"), completion: .file())
    var destination: String

    @Option(name: .customLong("output-format"), help: "safetensors (a Hugging Face directory) or vffn (one container file).")
    var outputFormat: UpcyclePlan.OutputFormat = .safetensors

    @OptionGroup var write: WriteOptions
    @OptionGroup var common: CommonOptions

    func validate() throws {
        if outputFormat == .olmo { throw ValidationError("strip writes safetensors or vffn; an OLMo export of the dense model is convert's job") }
    }

    func run() throws {
        removePartialOutputOnSignals()
        try reportingErrors {
            let plan = try StripPlan(converted: Checkpoint(path: converted))
            let line = ProgressLine(quiet: common.quiet)
            try plan.write(to: destination, format: outputFormat, force: write.force, progress: line.update)
            line.finish()
            guard !common.quiet else { return }
            print("stripped \(converted) -> \(destination): \(plan.gateTensors.count) gate tensors and the versatile_ffn section removed, \(plan.tensorCount) tensors written"
                  + (plan.restoredOrder.isEmpty ? "" : ", \(plan.restoredOrder.count) with their neuron order undone"))
            if let note = plan.trainedNote { print("  note: \(note)") }
        }
    }
}

import ArgumentParser
import Foundation
import VFFNFormats

struct Pack: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Pack a checkpoint directory into one .vffn container file.",
        discussion: """
        Tensors, config.json, the index and every other file (tokenizer, module folders) go into \
        one file with a CRC32 per entry; safetensors shards keep their exact headers, so `unpack` \
        gives back the directory bit for bit. Layout: docs/FORMATS.md.
        """)

    @Argument(help: ArgumentHelp("The checkpoint directory (safetensors or pytorch_model.bin).", valueName: "source"),
              completion: .directory)
    var source: String

    @Argument(help: ArgumentHelp("The .vffn file to create; - for stdout.", valueName: "destination"), completion: .file(extensions: ["vffn"]))
    var destination: String

    @Flag(help: "Deflate each tensor and file (zlib).")
    var compress = false

    @OptionGroup var write: WriteOptions
    @OptionGroup var common: CommonOptions

    func run() throws {
        removePartialOutputOnSignals()
        try reportingErrors {
            let started = Date()
            let s = try VFFNContainer.pack(Checkpoint(path: source), to: destination, compress: compress, force: write.force)
            guard !common.quiet else { return }
            let text = "packed \(source) -> \(destination) in \(String(format: "%.2f", Date().timeIntervalSince(started))) s: "
                + "\(s.tensors) tensors (\(s.tensorBytes) bytes) from \(s.shards) shard(s), \(s.files) file(s); container \(s.containerBytes) bytes"
            printSummary(text, besides: destination)
        }
    }
}

struct Unpack: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Unpack a .vffn container into a Hugging Face checkpoint directory.",
        discussion: "Every entry's CRC32 is checked; a corrupt entry stops the unpack and names the entry.")

    @Argument(help: ArgumentHelp("The .vffn file.", valueName: "source"), completion: .file(extensions: ["vffn"]))
    var source: String

    @Argument(help: ArgumentHelp("The directory to create (missing parents are created).", valueName: "destination"), completion: .directory)
    var destination: String

    @OptionGroup var write: WriteOptions
    @OptionGroup var common: CommonOptions

    func run() throws {
        removePartialOutputOnSignals()
        try reportingErrors {
            try requireFile(source, what: "a .vffn file")
            let format = try TensorFileFormat.detect(path: source)
            guard format == .vffn else { throw VFFNError.badInput(source, "is a \(format.rawValue) file, not a .vffn container") }
            let container = try VFFNContainer(path: source)
            try container.unpack(to: destination, force: write.force)
            if !common.quiet {
                print("unpacked \(source) -> \(destination): \(container.tensors.count) tensors in \(container.shards.count) shard(s), \(container.files.count) file(s)")
            }
        }
    }
}

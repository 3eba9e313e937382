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

    @Argument(help: "Checkpoint directory (safetensors or pytorch_model.bin).")
    var directory: String

    @Argument(help: "The .vffn file to create.")
    var output: String

    @Flag(help: "Deflate each tensor and file (zlib).")
    var compress = false

    @Flag(help: "Replace OUTPUT if it exists.")
    var force = false

    func run() throws {
        removePartialOutputOnSignals()
        try reportingErrors {
            let started = Date()
            let s = try VFFNContainer.pack(Checkpoint(path: directory), to: output, compress: compress, force: force)
            print("packed \(directory) -> \(output) in \(String(format: "%.2f", Date().timeIntervalSince(started))) s: "
                  + "\(s.tensors) tensors (\(s.tensorBytes) bytes) from \(s.shards) shard(s), \(s.files) file(s); container \(s.containerBytes) bytes")
        }
    }
}

struct Unpack: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Unpack a .vffn container into a Hugging Face checkpoint directory.",
        discussion: "Every entry's CRC32 is checked; a corrupt entry stops the unpack and names the entry.")

    @Argument(help: "The .vffn file.")
    var input: String

    @Argument(help: "The directory to create.")
    var directory: String

    @Flag(help: "Replace DIRECTORY if it exists.")
    var force = false

    func run() throws {
        removePartialOutputOnSignals()
        try reportingErrors {
            let format = try TensorFileFormat.detect(path: input)
            guard format == .vffn else { throw VFFNError.badInput(input, "is a \(format.rawValue) file, not a .vffn container") }
            let container = try VFFNContainer(path: input)
            try container.unpack(to: directory, force: force)
            print("unpacked \(input) -> \(directory): \(container.tensors.count) tensors in \(container.shards.count) shard(s), \(container.files.count) file(s)")
        }
    }
}

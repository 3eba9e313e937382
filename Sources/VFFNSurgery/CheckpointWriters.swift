import Foundation
import VFFNFormats

/// What a conversion to a Hugging Face layout holds, built once from the plan before any tensor
/// byte is read (`UpcyclePlan.convertedCheckpoint`): every tensor shard by shard, each read from
/// the source only as it is written, config.json, the index, and the files carried through.
/// One `CheckpointWriter` per output format writes it.
struct ConvertedCheckpoint {
    struct Shard {
        let name: String
        let metadata: [(String, String)]
        let records: [TensorRecord]
    }
    let shards: [Shard]
    let config: JSON
    let indexText: String?
    /// The source's files carried through (our remote code replaces a source file of its name).
    let auxiliary: [String]
    let emitModeling: Bool

    var tensorCount: Int { shards.reduce(0) { $0 + $1.records.count } }
    var totalSize: Int { shards.reduce(0) { $0 + $1.records.reduce(0) { $0 + $1.bytes.count } } }
}

/// Writes one output format into the temporary path `AtomicOutput` prepared.
protocol CheckpointWriter {
    var kind: AtomicOutput.Kind { get }
    func write(_ checkpoint: ConvertedCheckpoint, from source: Checkpoint, to path: String, meter: ProgressMeter) throws(VFFNError)
}

/// A Hugging Face directory: safetensors shards (written side by side), the index, config.json,
/// the carried files and the remote code.
struct SafeTensorsDirectoryWriter: CheckpointWriter {
    var kind: AtomicOutput.Kind { .directory }

    func write(_ checkpoint: ConvertedCheckpoint, from source: Checkpoint, to dir: String, meter: ProgressMeter) throws(VFFNError) {
        // Shards are independent files: as many at once as there are cores, so a checkpoint
        // converts at the disk's speed rather than one core's.
        let shards = checkpoint.shards
        let failure = FirstError()
        DispatchQueue.concurrentPerform(iterations: shards.count) { i in
            guard !failure.isSet else { return }
            do {
                try SafeTensorsWriter.write(shards[i].records, metadata: shards[i].metadata, to: dir + "/" + shards[i].name) { meter.add(tensors: 1, bytes: $0) }
            } catch {
                failure.record(error)
            }
        }
        if let error = failure.error { throw error }
        if let index = checkpoint.indexText { try OutputFile.write(index, to: dir + "/" + Checkpoint.indexName) }
        try OutputFile.write(checkpoint.config.pretty, to: dir + "/config.json")
        for name in checkpoint.auxiliary { try source.copyAuxiliaryFile(name, to: dir + "/" + name) }
        if checkpoint.emitModeling { try OutputFile.write(RemoteCode.source, to: dir + "/" + RemoteCode.fileName) }
    }
}

/// One .vffn container: the tensors, config.json, the index and the carried files as entries,
/// deflated one by one with `compress`.
struct VFFNFileWriter: CheckpointWriter {
    let compress: Bool
    var kind: AtomicOutput.Kind { .file }

    func write(_ checkpoint: ConvertedCheckpoint, from source: Checkpoint, to path: String, meter: ProgressMeter) throws(VFFNError) {
        var files = [VFFNContainer.Blob(name: "config.json", bytes: .owned(Array(checkpoint.config.pretty.utf8)))]
        if let index = checkpoint.indexText { files.append(.init(name: Checkpoint.indexName, bytes: .owned(Array(index.utf8)))) }
        for name in checkpoint.auxiliary { files.append(.init(name: name, bytes: try source.auxiliaryFileBytes(name))) }
        if checkpoint.emitModeling { files.append(.init(name: RemoteCode.fileName, bytes: .owned(RemoteCode.source))) }
        let tensors = checkpoint.shards.flatMap { s in s.records.map { VFFNContainer.TensorToWrite($0, shard: s.name) } }
        let shards = checkpoint.shards.map { VFFNContainer.ShardToWrite(name: $0.name, metadata: $0.metadata, header: nil) }
        var last = 0
        try VFFNContainer.write(config: checkpoint.config, tensors: tensors, files: files, shards: shards, compress: compress, to: path) { done, _ in
            meter.add(tensors: done - last, bytes: tensors[last..<done].reduce(0) { $0 + $1.record.bytes.count })
            last = done
        }
    }
}

/// OLMo's unsharded checkpoint: model.pt (torch.save, our writer) in OLMo's fused layout,
/// config.yaml, and the carried files. Its records come from `UpcyclePlan.olmoLayout`.
struct OLMoDirectoryWriter {
    func write(tensors: [TorchCheckpointWriter.Tensor], yaml: String, auxiliary: [String], from source: Checkpoint, to dir: String,
               meter: ProgressMeter) throws(VFFNError) {
        try TorchCheckpointWriter.write(tensors, top: "model", to: dir + "/model.pt") { meter.add(tensors: 1, bytes: $0) }
        try OutputFile.write(yaml, to: dir + "/config.yaml")
        for name in auxiliary { try source.copyAuxiliaryFile(name, to: dir + "/" + name) }
    }
}

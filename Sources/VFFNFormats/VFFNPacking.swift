import Foundation

/// `pack` and `unpack`: a Hugging Face checkpoint directory into one .vffn file and back, bit
/// for bit. Safetensors shards keep their exact header bytes in the container, so unpacking
/// rebuilds each file identically; every other file (config.json, the index, tokenizer files,
/// module folders) travels as an embedded blob.
extension VFFNContainer {
    /// What `pack` or `unpack` wrote, for its summary.
    public struct PackSummary: Sendable {
        public let tensors: Int
        public let tensorBytes: Int
        public let files: Int
        public let shards: Int
        /// Size of the written file.
        public let containerBytes: Int
    }

    /// Packs the checkpoint directory `source` into `destination`, atomically.
    @discardableResult
    public static func pack(_ source: Checkpoint, to destination: String, compress: Bool = false, force: Bool = false,
                            progress: (Int, Int) -> Void = { _, _ in }) throws(VFFNError) -> PackSummary {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: source.path, isDirectory: &isDir), isDir.boolValue else {
            throw .usage("pack takes a checkpoint directory; \(source.path) is a single \(source.format.rawValue) file")
        }
        var tensors: [TensorToWrite] = []
        var shards: [ShardToWrite] = []
        var tensorBytes = 0
        for shard in source.shards {
            let name = source.safetensorsName(of: shard)
            for t in shard.tensors {
                tensors.append(TensorToWrite(TensorRecord(name: t.name, dtype: t.dtype, shape: t.shape, bytes: .source(shard, t)), shard: name))
                tensorBytes += t.byteCount
            }
            let header = (shard as? SafeTensorsFile).map { Array($0.rawHeader) }
            shards.append(ShardToWrite(name: name, metadata: shard.metadata, header: header))
        }
        let present = [Checkpoint.indexName, Checkpoint.torchIndexName].filter { FileManager.default.fileExists(atPath: source.path + "/" + $0) }
        var files: [Blob] = []
        // Everything in the directory goes in, weights in other formats included: unpack must
        // give back exactly what was packed.
        for name in (["config.json"] + present + source.auxiliaryFiles() + source.otherWeightFiles()).sorted() {
            files.append(Blob(name: name, bytes: try source.auxiliaryFileBytes(name)))
        }
        let output = try AtomicOutput(destination: destination, kind: .file, force: force, inputs: [source.path])
        try write(config: source.config, tensors: tensors, files: files, shards: shards, compress: compress,
                  to: output.temporary, progress: progress)
        let size = (try? FileManager.default.attributesOfItem(atPath: output.temporary)[.size] as? Int) ?? 0
        try output.commit()
        return PackSummary(tensors: tensors.count, tensorBytes: tensorBytes, files: files.count, shards: shards.count, containerBytes: size)
    }

    /// Writes this container's checkpoint as a Hugging Face directory at `destination`,
    /// atomically: safetensors shards (rebuilt exactly when their headers were packed), the
    /// index when there are several shards, config.json and every embedded file.
    public func unpack(to destination: String, force: Bool = false, progress: (Int, Int) -> Void = { _, _ in }) throws(VFFNError) {
        let output = try AtomicOutput(destination: destination, kind: .directory, force: force, inputs: [path])
        let dir = output.temporary
        var weightMap: [(String, String)] = []
        var totalSize = 0
        for (i, shard) in shards.enumerated() {
            let members = tensors.indices.filter { tensorShards[$0] == shard.name }
            let target = dir + "/" + shard.name
            if let header = shard.header {
                let out = try OutputFile(path: target)
                try read(header, what: "shard header", chunkBytes: tensorPieceBytes) { (piece) throws(VFFNError) in try out.write(piece) }
                for m in members { try read(tensors[m], chunkBytes: tensorPieceBytes) { (piece) throws(VFFNError) in try out.write(piece) } }
                try out.finish()
                // The packed header must describe exactly these tensors, or the rebuilt file
                // would be valid safetensors holding the wrong data.
                let rebuilt = try SafeTensorsFile(path: target)
                guard rebuilt.tensors.map(\.name) == members.map({ tensors[$0].name }),
                      zip(rebuilt.tensors, members).allSatisfy({ $0.dtype == tensors[$1].dtype && $0.shape == tensors[$1].shape })
                else { throw .badInput(path, "shard \"\(shard.name)\": the packed header does not describe the packed tensors") }
            } else {
                var records: [TensorRecord] = []
                for m in members {
                    let t = tensors[m]
                    records.append(TensorRecord(name: t.name, dtype: t.dtype, shape: t.shape, bytes: .tensor(self, t)))
                }
                try SafeTensorsWriter.write(records, metadata: shard.metadata ?? [("format", "pt")], to: target)
            }
            for m in members {
                weightMap.append((tensors[m].name, shard.name))
                totalSize += tensors[m].byteCount
            }
            progress(i + 1, shards.count)
        }
        for f in files {
            let target = dir + "/" + f.name
            do { try FileManager.default.createDirectory(atPath: (target as NSString).deletingLastPathComponent, withIntermediateDirectories: true) } catch {
                throw .io(target, "cannot create its folder: \(error.localizedDescription)")
            }
            let out = try OutputFile(path: target)
            try read(f, what: "file", chunkBytes: tensorPieceBytes) { (piece) throws(VFFNError) in try out.write(piece) }
            try out.finish()
        }
        if !files.contains(where: { $0.name == "config.json" }) {
            try OutputFile.write(config.pretty, to: dir + "/config.json")
        }
        if shards.count > 1, !files.contains(where: { $0.name == Checkpoint.indexName }) {
            let index = JSON.object([
                ("metadata", .object([("total_size", .int(totalSize))])),
                ("weight_map", .object(weightMap.sorted { $0.0 < $1.0 }.map { ($0.0, .string($0.1)) })),
            ])
            try OutputFile.write(index.pretty, to: dir + "/" + Checkpoint.indexName)
        }
        try output.commit()
    }
}

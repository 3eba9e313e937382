import Foundation
import VFFNFormats
import VFFNModels

/// The inverse of a conversion (`vffn-convert strip`): a converted checkpoint without its gates
/// and its `versatile_ffn` section, with a cluster split's neuron order undone and the
/// `auto_map` that `--emit-modeling` replaced put back. On a checkpoint as convert wrote it the
/// result is the source, byte for byte in every tensor; on a trained one it is the dense model
/// with the trained weights.
public struct StripPlan {
    public let converted: Checkpoint
    /// The config.json the stripped checkpoint gets: the source's, as far as convert changed it.
    public let config: JSON
    /// FFN tensors whose neurons are put back in source order.
    public let restoredOrder: [String: (axis: Int, order: [Int])]
    public let gateTensors: [String]
    /// Why the result is not the source (a trainer saved the checkpoint), or nil.
    public let trainedNote: String?
    let checkpoint: ConvertedCheckpoint

    public init(converted: Checkpoint) throws(VFFNError) {
        let configPath = converted.configPath
        guard let section = converted.config[VersatileFFNSettings.key] else {
            throw .badInput(configPath, "has no \"versatile_ffn\" section; not a converted checkpoint, nothing to strip")
        }
        let layout = try Architectures.lookup(converted).ffnLayout(converted)
        // Each layer's sub-expert count, which its recorded order is written in.
        let settings = try VersatileFFNSettings.read(from: converted.config, path: configPath)
        var experts = [Int](repeating: settings?.numExperts ?? 1, count: layout.sites.count)
        for g in settings?.gateTensors ?? [] where g.layer < experts.count { experts[g.layer] = settings!.shape(of: g).numExperts }
        var gates: [String] = []
        for site in layout.sites {
            for name in [site.prefix + ".expert_gate.weight", site.prefix + ".depth_predictor.weight"] where converted.contains(name) { gates.append(name) }
        }
        var restored: [String: (axis: Int, order: [Int])] = [:]
        if section["neuron_permutation"]?.boolValue == true {
            guard let orders = section["neuron_order"]?.arrayValue else {
                throw .badInput(configPath, "records a neuron permutation but not the order (converted before vffn-convert recorded it), so it cannot be undone")
            }
            guard orders.count == layout.sites.count else {
                throw .badInput(configPath, "versatile_ffn.neuron_order has \(orders.count) layers, the model \(layout.sites.count)")
            }
            for (l, site) in layout.sites.enumerated() where !orders[l].isNull {
                let order: [Int]
                do { order = try NeuronOrder.read(orders[l], neurons: layout.intermediateSize, experts: experts[l], what: "versatile_ffn.neuron_order[\(l)]") } catch {
                    throw .badInput(configPath, error.message)
                }
                let inverse = NeuronOrder.inverse(order)
                for t in site.tensors where t.neuronAxis != nil {
                    let blocks = t.shape[t.neuronAxis!] / inverse.count
                    restored[t.name] = (t.neuronAxis!, (0..<blocks).flatMap { b in inverse.map { $0 + b * inverse.count } })
                }
            }
        }
        var config = converted.config.removing(VersatileFFNSettings.key)
        let emitted = section["source_auto_map"] != nil
        if let before = section["source_auto_map"] {
            config = before.isNull ? config.removing("auto_map") : config.setting("auto_map", to: before)
        }
        if let step = section["depth_temperature_step"]?.intValue, step > 0 {
            trainedNote = "its config records training (depth temperature step \(step)): the result is the dense model with the trained weights, not the source"
        } else if converted.isDirectory, !FileManager.default.fileExists(atPath: converted.path + "/" + AtomicOutput.markerName) {
            trainedNote = "it carries no \(AtomicOutput.markerName) (another tool, such as a trainer, saved it): the result holds its weights, which are the source's only if nothing changed them"
        } else {
            trainedNote = nil
        }

        let gateSet = Set(gates)
        var shards: [ConvertedCheckpoint.Shard] = []
        var weightMap: [(String, String)] = []
        var totalSize = 0, totalParameters = 0
        for shard in converted.shards {
            let fileName = converted.safetensorsName(of: shard)
            var records: [TensorRecord] = []
            for t in shard.tensors where !gateSet.contains(t.name) {
                let bytes: TensorBytes
                if let (axis, order) = restored[t.name] {
                    bytes = .pieces(count: t.byteCount, source: PermutedTensor(file: shard, info: t, axis: axis, order: order))
                } else {
                    bytes = .source(shard, t)
                }
                records.append(TensorRecord(name: t.name, dtype: t.dtype, shape: t.shape, bytes: bytes))
                weightMap.append((t.name, fileName))
                totalSize += t.byteCount
                totalParameters += t.shape.reduce(1, *)
            }
            shards.append(.init(name: fileName, metadata: shard.metadata ?? [("format", "pt")], records: records))
        }
        let indexText = converted.index.map { UpcyclePlan.indexText($0, weightMap: weightMap, totalSize: totalSize, totalParameters: totalParameters) }
        let auxiliary = converted.auxiliaryFiles().filter { !(emitted && $0 == RemoteCode.fileName) }
        self.converted = converted
        self.config = config
        self.restoredOrder = restored
        self.gateTensors = gates
        checkpoint = ConvertedCheckpoint(shards: shards, config: config, indexText: indexText, auxiliary: auxiliary, emitModeling: false)
    }

    public var tensorCount: Int { checkpoint.tensorCount }

    /// Writes the stripped checkpoint, atomically.
    public func write(to destination: String, format: UpcyclePlan.OutputFormat = .safetensors, force: Bool = false,
                      progress: @escaping @Sendable (ConversionProgress) -> Void = { _ in }) throws(VFFNError) {
        let writer: any CheckpointWriter
        switch format {
        case .safetensors: writer = SafeTensorsDirectoryWriter()
        case .vffn: writer = VFFNFileWriter(compress: false)
        case .olmo: throw .usage("strip writes a Hugging Face checkpoint (safetensors or vffn), not OLMo's layout")
        }
        let output = try AtomicOutput(destination: destination, kind: writer.kind, force: force, inputs: [converted.path])
        let meter = ProgressMeter(ConversionProgress(tensorsTotal: checkpoint.tensorCount, bytesTotal: checkpoint.totalSize), report: progress)
        try writer.write(checkpoint, from: converted, to: output.temporary, meter: meter)
        try output.commit()
    }

    /// Whether the stripped checkpoint, made in memory, is `source`: the same tensor names, every
    /// tensor's dtype, shape and bytes (a permuted one compared after its order is undone), and
    /// the same config. Returns the differences, at most `limit`.
    /// `restoredOnly` compares the bytes of the restored tensors only (verify has compared the
    /// others already), names, dtypes and shapes of all.
    public func differences(from source: Checkpoint, restoredOnly: Bool = false, limit: Int = 5) throws(VFFNError) -> (tensors: Int, bytes: Int, differences: [String]) {
        var out: [String] = []
        let stripped = Dictionary(checkpoint.shards.flatMap(\.records).map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for name in Set(stripped.keys).subtracting(source.tensorNames).sorted().prefix(limit) { out.append("\(name): not in the source") }
        var bytes = 0
        for name in source.tensorNames where out.count < limit {
            guard let r = stripped[name] else { out.append("\(name): missing"); continue }
            let a = source.info(name)!
            guard a.dtype == r.dtype, a.shape == r.shape else { out.append("\(name): \(a.dtype)\(a.shape) became \(r.dtype)\(r.shape)"); continue }
            if restoredOnly && restoredOrder[name] == nil { continue }
            let reference = try source.bytes(name)!
            var at = 0, same = reference.count == r.bytes.count
            try withExtendedLifetime(reference) { () throws(VFFNError) in
                try r.bytes.forEachCheckedPiece(what: name) { piece in
                    if same, piece.count > 0 {
                        same = at + piece.count <= reference.count && memcmp(piece.baseAddress!, reference.raw.baseAddress! + at, piece.count) == 0
                    }
                    at += piece.count
                }
            }
            if !same || at != reference.count { out.append("\(name): bytes differ" + (restoredOrder[name] != nil ? " after the neuron order is undone" : "")) }
            bytes += at
        }
        if out.count < limit, config != source.config { out.append("config.json differs from the source's beyond the versatile_ffn section") }
        return (source.tensorNames.count, bytes, out)
    }
}

extension JSON {
    /// This object without `key`.
    func removing(_ key: String) -> JSON {
        guard case let .object(members) = self else { return self }
        return .object(members.filter { $0.0 != key })
    }
}

import ArgumentParser
import Foundation
import VFFNFormats
import VFFNModels

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List a checkpoint's tensors, dtypes, shapes and sizes, its architecture and VersatileFFN settings.")

    @Argument(help: "A checkpoint directory, a .vffn or .gguf checkpoint, or one safetensors or torch file.")
    var path: String

    func run() throws {
        try reportingErrors {
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), !isDir.boolValue,
               case let format = try TensorFileFormat.detect(path: path), format == .safetensors || format == .pytorch {
                // One weight file without its directory: list it, there is no model to detect.
                let file = try TensorFileFormat.open(path: path)
                let header = (file as? SafeTensorsFile).map { ", header \($0.headerSize) bytes" } ?? ""
                print("\(path): \(format.rawValue), \(file.tensors.count) tensors\(header)")
                if let m = file.metadata { print("metadata: " + m.map { "\($0)=\($1)" }.joined(separator: ", ")) }
                printTable(file.tensors.map { ($0, nil) })
                return
            }
            let ckpt = try Checkpoint(path: path)
            let type = ckpt.config["model_type"]?.stringValue ?? "?"
            let storage = ckpt.isSharded ? "\(ckpt.shards.count) \(ckpt.format.rawValue) shards" : ckpt.format.rawValue
            print("\(path): \(storage), \(ckpt.tensorNames.count) tensors")
            for n in ckpt.notes { print("note: \(n)") }
            do {
                let arch = try Architectures.lookup(ckpt)
                let layout = try arch.ffnLayout(ckpt)
                print("architecture: \(type) (\(arch)), \(layout.sites.count) layers, hidden \(layout.hiddenSize), FFN intermediate \(layout.intermediateSize)")
                if let first = layout.sites.first, let last = layout.sites.last {
                    print("FFN sub-layers: \(first.prefix)\(layout.sites.count > 1 ? " ... " + last.prefix : ""), gates named <prefix>.expert_gate.weight, <prefix>.depth_predictor.weight")
                }
            } catch {
                print("architecture: \(type) (not convertible: \(error))")
            }
            if let s = try VersatileFFNSettings.read(from: ckpt.config, path: path + "/config.json") {
                print("VersatileFFN: \(s.numExperts) sub-experts, top-\(s.topK), max depth \(s.maxDepth), \(s.expertSlicing) slicing, gates in \(s.gateTensors.count) layers")
            } else {
                print("VersatileFFN: none (dense checkpoint)")
            }
            printTable(ckpt.tensorNames.map { (ckpt.info($0)!, ckpt.isSharded ? (ckpt.shard(of: $0)!.path as NSString).lastPathComponent : nil) })
        }
    }

    func printTable(_ rows: [(TensorInfo, String?)]) {
        let nameWidth = rows.map { $0.0.name.count }.max() ?? 4
        var total = 0
        for (t, shard) in rows {
            total += t.byteCount
            let shape = "[" + t.shape.map(String.init).joined(separator: ", ") + "]"
            print(t.name.padding(toLength: nameWidth, withPad: " ", startingAt: 0) + "  " + t.dtype.rawValue.padding(toLength: 5, withPad: " ", startingAt: 0)
                  + "  " + shape.padding(toLength: 14, withPad: " ", startingAt: 0) + "  " + String(t.byteCount).leftPadded(10) + (shard.map { "  " + $0 } ?? ""))
        }
        print("total: \(rows.count) tensors, \(total) bytes")
    }
}

extension String {
    func leftPadded(_ n: Int) -> String { String(repeating: " ", count: max(0, n - count)) + self }
}

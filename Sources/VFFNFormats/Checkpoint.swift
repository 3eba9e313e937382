import Foundation

/// A Hugging Face checkpoint directory: `config.json` plus weights in one `model.safetensors`
/// or several shards routed by `model.safetensors.index.json`.
public final class Checkpoint: @unchecked Sendable {
    public static let indexName = "model.safetensors.index.json"
    public static let singleName = "model.safetensors"

    public let directory: String
    public let config: JSON
    /// The shard files sorted by name (one entry when unsharded).
    public let shards: [SafeTensorsFile]
    /// The parsed index file, or nil for a single-file checkpoint.
    public let index: JSON?
    /// Every tensor name, shard by shard, each shard in data order.
    public let tensorNames: [String]
    private let route: [String: Int]

    public init(directory: String) throws(VFFNError) {
        self.directory = directory
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDir) else {
            throw .badInput(directory, "no such file or directory")
        }
        guard isDir.boolValue else {
            throw .badInput(directory, "is a file; give the checkpoint directory that holds config.json")
        }
        config = try Self.readJSON(directory + "/config.json", what: "config.json")
        guard config.objectMembers != nil else { throw .badInput(directory + "/config.json", "is not a JSON object") }

        let indexPath = directory + "/" + Self.indexName
        let files: [String]
        if FileManager.default.fileExists(atPath: indexPath) {
            let idx = try Self.readJSON(indexPath, what: "index")
            index = idx
            guard let weightMap = idx["weight_map"]?.objectMembers else {
                throw .badInput(indexPath, "has no \"weight_map\" object")
            }
            var order: [String] = []
            var seen = Set<String>()
            for (tensor, file) in weightMap {
                guard let f = file.stringValue else { throw .badInput(indexPath, "weight_map entry \"\(tensor)\" is not a file name") }
                guard !f.isEmpty, !f.contains("/"), f != "..", f != "." else {
                    throw .badInput(indexPath, "weight_map entry \"\(tensor)\" names \"\(f)\", outside the checkpoint directory")
                }
                if seen.insert(f).inserted { order.append(f) }
            }
            for f in order where !FileManager.default.fileExists(atPath: directory + "/" + f) {
                throw .badInput(indexPath, "names shard \"\(f)\", which does not exist")
            }
            // transformers opens `sorted(set(weight_map.values()))`; so do we, for a stable order.
            files = order.sorted()
        } else if FileManager.default.fileExists(atPath: directory + "/" + Self.singleName) {
            index = nil
            files = [Self.singleName]
        } else {
            let found = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasSuffix(".safetensors") }.sorted()
            guard found.count == 1 else {
                throw .badInput(directory, found.isEmpty
                    ? "no model.safetensors or \(Self.indexName) in the directory"
                    : "several .safetensors files but no \(Self.indexName) to say which holds what")
            }
            index = nil
            files = found
        }

        var shards: [SafeTensorsFile] = []
        var names: [String] = []
        var route: [String: Int] = [:]
        for (i, f) in files.enumerated() {
            let shard = try SafeTensorsFile(path: directory + "/" + f)
            for t in shard.tensors {
                if let other = route[t.name] {
                    throw .badInput(shard.path, "tensor \"\(t.name)\" is also in \(files[other]); ambiguous checkpoint")
                }
                route[t.name] = i
                names.append(t.name)
            }
            shards.append(shard)
        }
        // The index must describe the shards exactly: a stale index is how half-copied
        // checkpoints look, and loaders disagree on how to resolve it.
        if let weightMap = index?["weight_map"]?.objectMembers {
            for (tensor, file) in weightMap {
                guard let s = route[tensor] else {
                    throw .badInput(indexPath, "lists tensor \"\(tensor)\" but no shard holds it")
                }
                if files[s] != file.stringValue {
                    throw .badInput(indexPath, "routes \"\(tensor)\" to \(file.stringValue ?? "?") but it is in \(files[s])")
                }
            }
            if weightMap.count != names.count {
                let listed = Set(weightMap.map(\.0))
                let missing = names.first { !listed.contains($0) }!
                throw .badInput(indexPath, "does not list tensor \"\(missing)\" of \(files[route[missing]!])")
            }
        }
        self.shards = shards
        self.tensorNames = names
        self.route = route
    }

    public var isSharded: Bool { index != nil }

    public func contains(_ name: String) -> Bool { route[name] != nil }

    public func info(_ name: String) -> TensorInfo? {
        route[name].flatMap { shards[$0].info(name) }
    }

    /// The shard file holding `name`.
    public func shard(of name: String) -> SafeTensorsFile? {
        route[name].map { shards[$0] }
    }

    public func bytes(_ name: String) -> UnsafeRawBufferPointer? {
        guard let s = route[name], let info = shards[s].info(name) else { return nil }
        return shards[s].bytes(info)
    }

    /// Files of the directory that are neither weights nor config.json: tokenizer, generation
    /// config, README and the like, which a conversion copies through.
    public func auxiliaryFiles() -> [String] {
        let weights = Set(shards.map { ($0.path as NSString).lastPathComponent } + [Self.indexName, "config.json"])
        let all = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return all.filter { !weights.contains($0) }.sorted()
    }

    public static func readJSON(_ path: String, what: String) throws(VFFNError) -> JSON {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .badInput(path, FileManager.default.fileExists(atPath: path) ? "cannot read \(what)" : "missing \(what)")
        }
        do { return try JSON.parse(data) } catch {
            throw .badInput(path, "is not valid JSON: \(error.reason) at byte \(error.offset)")
        }
    }
}

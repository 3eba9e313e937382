import Foundation

/// A dense or converted checkpoint, whatever it is stored as:
/// - a Hugging Face directory: `config.json` plus `model.safetensors`, or shards routed by
///   `model.safetensors.index.json`, or the same with `pytorch_model.bin` (torch zip archives);
/// - a `.vffn` container (config, tensors and the other files in one file);
/// - a llama.cpp `.gguf` file, presented as the Hugging Face Llama it was converted from.
/// Files are told apart by their magic bytes, not their names.
public final class Checkpoint: @unchecked Sendable {
    public static let indexName = "model.safetensors.index.json"
    public static let singleName = "model.safetensors"
    public static let torchIndexName = "pytorch_model.bin.index.json"
    public static let torchSingleName = "pytorch_model.bin"

    /// The directory or single file this checkpoint was opened from.
    public let path: String
    /// How it is stored: the format of its tensor files.
    public let format: TensorFileFormat
    public let config: JSON
    /// Where errors about the config point: `DIR/config.json`, or the single file holding it.
    public let configPath: String
    /// The tensor files sorted by name (one entry when unsharded).
    public let shards: [any TensorFile]
    /// The parsed index file, or nil for a single-file checkpoint.
    public let index: JSON?
    /// Every tensor name, shard by shard, each shard in data order.
    public let tensorNames: [String]
    /// What a reader had to change to present the tensors (e.g. Q8_0 dequantized to F32), for
    /// reports; empty when every tensor is exactly as stored.
    public let notes: [String]
    private let route: [String: Int]
    /// A Hugging Face directory, rather than one self-contained file (.vffn, GGUF).
    public let isDirectory: Bool

    public init(path: String) throws(VFFNError) {
        self.path = path
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw .badInput(path, "no such file or directory")
        }
        isDirectory = isDir.boolValue
        let files: [any TensorFile]
        if isDirectory {
            configPath = path + "/config.json"
            if !FileManager.default.fileExists(atPath: configPath) { throw Self.notACheckpointDirectory(path) }
            config = try Self.readJSON(configPath, what: "config.json")
            guard config.objectMembers != nil else { throw .badInput(configPath, "is not a JSON object") }
            (files, index) = try Self.openDirectoryWeights(path)
        } else {
            let file = try TensorFileFormat.open(path: path)
            guard let single = file as? SingleFileCheckpoint else {
                throw .badInput(path, "is a single \(file.format.rawValue) file; give the checkpoint directory that holds it and config.json")
            }
            configPath = path
            config = try single.checkpointConfig()
            guard config.objectMembers != nil else { throw .badInput(configPath, "config is not a JSON object") }
            files = [file]
            index = nil
        }
        format = files[0].format

        var names: [String] = []
        var route: [String: Int] = [:]
        for (i, shard) in files.enumerated() {
            for t in shard.tensors {
                if let other = route[t.name] {
                    throw .badInput(shard.path, "tensor \"\(t.name)\" is also in \((files[other].path as NSString).lastPathComponent); ambiguous checkpoint")
                }
                route[t.name] = i
                names.append(t.name)
            }
        }
        // The index must describe the shards exactly: a stale index is how half-copied
        // checkpoints look, and loaders disagree on how to resolve it.
        if let index, let weightMap = index["weight_map"]?.objectMembers {
            let indexPath = path + "/" + (format == .pytorch ? Self.torchIndexName : Self.indexName)
            let fileNames = files.map { ($0.path as NSString).lastPathComponent }
            for (tensor, file) in weightMap {
                guard let s = route[tensor] else {
                    throw .badInput(indexPath, "lists tensor \"\(tensor)\" but no shard holds it")
                }
                if fileNames[s] != file.stringValue {
                    throw .badInput(indexPath, "routes \"\(tensor)\" to \(file.stringValue ?? "?") but it is in \(fileNames[s])")
                }
            }
            if weightMap.count != names.count {
                let listed = Set(weightMap.map(\.0))
                let missing = names.first { !listed.contains($0) }!
                throw .badInput(indexPath, "does not list tensor \"\(missing)\" of \(fileNames[route[missing]!])")
            }
        }
        shards = files
        tensorNames = names
        self.route = route
        notes = files.flatMap { ($0 as? SingleFileCheckpoint)?.readerNotes ?? [] }
    }

    /// The weight files of a directory: through an index if there is one, else the single file
    /// by its usual name, else the only candidate. Each is opened by its magic bytes.
    private static func openDirectoryWeights(_ directory: String) throws(VFFNError) -> ([any TensorFile], JSON?) {
        let fm = FileManager.default
        for indexName in [indexName, torchIndexName] where fm.fileExists(atPath: directory + "/" + indexName) {
            let indexPath = directory + "/" + indexName
            let idx = try readJSON(indexPath, what: "index")
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
            for f in order where !fm.fileExists(atPath: directory + "/" + f) {
                throw .badInput(indexPath, "names shard \"\(f)\", which does not exist")
            }
            // transformers opens `sorted(set(weight_map.values()))`; so do we, for a stable order.
            var files: [any TensorFile] = []
            for f in order.sorted() { files.append(try TensorFileFormat.open(path: directory + "/" + f)) }
            guard !files.isEmpty else { throw .badInput(indexPath, "weight_map is empty") }
            return (files, idx)
        }
        for single in [singleName, torchSingleName] where fm.fileExists(atPath: directory + "/" + single) {
            return ([try TensorFileFormat.open(path: directory + "/" + single)], nil)
        }
        let entries = ((try? fm.contentsOfDirectory(atPath: directory)) ?? []).sorted()
        for ext in [".safetensors", ".bin"] {
            let found = entries.filter { $0.hasSuffix(ext) }
            if found.count == 1 { return ([try TensorFileFormat.open(path: directory + "/" + found[0])], nil) }
            if found.count > 1 {
                throw .badInput(directory, "several \(ext) files but no index to say which holds what")
            }
        }
        throw .badInput(directory, "no \(singleName), \(torchSingleName) or index in the directory")
    }

    public var isSharded: Bool { index != nil }

    public func contains(_ name: String) -> Bool { route[name] != nil }

    public func info(_ name: String) -> TensorInfo? {
        route[name].flatMap { shards[$0].info(name) }
    }

    /// The file holding `name`.
    public func shard(of name: String) -> (any TensorFile)? {
        route[name].map { shards[$0] }
    }

    public func bytes(_ name: String) throws(VFFNError) -> TensorData? {
        guard let s = route[name], let info = shards[s].info(name) else { return nil }
        return try shards[s].bytes(info)
    }

    /// The safetensors file name a converted copy of `shard` gets: the same name for
    /// safetensors shards, the Hugging Face equivalent otherwise
    /// (`pytorch_model-00001-of-00002.bin` becomes `model-00001-of-00002.safetensors`).
    public func safetensorsName(of shard: any TensorFile) -> String {
        let name = (shard.path as NSString).lastPathComponent
        if shard.format == .safetensors { return name }
        if shard.format == .pytorch, name.hasPrefix("pytorch_model"), name.hasSuffix(".bin") {
            return "model" + name.dropFirst("pytorch_model".count).dropLast(".bin".count) + ".safetensors"
        }
        return shards.count == 1 ? Self.singleName : (name as NSString).deletingPathExtension + ".safetensors"
    }

    /// The checkpoint's other files (tokenizer, generation config, README, sentence-transformers
    /// module folders and the like, which a conversion copies through), as relative paths:
    /// the directory's files that are neither weights, index nor config.json, or the files a
    /// .vffn container embeds.
    public func auxiliaryFiles() -> [String] {
        if !isDirectory { return (shards[0] as? SingleFileCheckpoint)?.embeddedFileNames ?? [] }
        let weights = Set(shards.map { ($0.path as NSString).lastPathComponent } + [Self.indexName, Self.torchIndexName, "config.json"])
        return Self.filesBelow(path).filter { !weights.contains($0) && !Self.isWeightFile($0) }
    }

    /// Weight files of the directory that this checkpoint does not read: the same model in other
    /// formats (Hugging Face repositories often ship pytorch_model.bin beside model.safetensors,
    /// Mistral's consolidated.safetensors, TensorFlow and Flax weights, ONNX exports). A
    /// conversion does not copy them: they would be stale dense copies without the gates.
    public func otherWeightFiles() -> [String] {
        guard isDirectory else { return [] }
        let read = Set(shards.map { ($0.path as NSString).lastPathComponent } + [Self.indexName, Self.torchIndexName])
        return Self.filesBelow(path).filter { !read.contains($0) && Self.isWeightFile($0) }
    }

    static let weightSuffixes = [".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".ot", ".onnx", ".onnx_data", ".vffn",
                                 ".safetensors.index.json", ".bin.index.json", ".h5.index.json", ".msgpack.index.json"]

    static func isWeightFile(_ name: String) -> Bool {
        weightSuffixes.contains { name.hasSuffix($0) }
    }

    /// Every regular file under `root` (following symlinks, as Hugging Face cache snapshots
    /// need), as sorted relative paths. A directory reached twice (a link to `.` or `/`) is
    /// walked once, so a loop of links cannot make this run forever.
    static func filesBelow(_ root: String) -> [String] {
        var seen = Set<[UInt64]>()
        return filesBelow(root, prefix: "", seen: &seen)
    }

    private static func filesBelow(_ root: String, prefix: String, seen: inout Set<[UInt64]>) -> [String] {
        var st = stat()
        guard stat(root, &st) == 0, seen.insert([UInt64(st.st_dev), UInt64(st.st_ino)]).inserted else { return [] }
        var out: [String] = []
        for name in ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).sorted() {
            // The marker describes the directory this tool wrote; it is not part of the model.
            if prefix.isEmpty && name == AtomicOutput.markerName { continue }
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: root + "/" + name, isDirectory: &isDir) else { continue }
            if isDir.boolValue {
                out += filesBelow(root + "/" + name, prefix: prefix + name + "/", seen: &seen)
            } else {
                out.append(prefix + name)
            }
        }
        return out
    }

    /// Copies one of `auxiliaryFiles()` to `destination`, creating the folders it sits in.
    /// Symlinks are followed: Hugging Face cache snapshots hold relative links into a blob
    /// store, which would dangle in a copy.
    public func copyAuxiliaryFile(_ name: String, to destination: String) throws(VFFNError) {
        if !isDirectory {
            guard let single = shards[0] as? SingleFileCheckpoint else { throw .badInput(path, "has no file \"\(name)\"") }
            try single.extractEmbeddedFile(name, to: destination)
            return
        }
        let source = URL(fileURLWithPath: path + "/" + name).resolvingSymlinksInPath().path
        do {
            try FileManager.default.createDirectory(atPath: (destination as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: source, toPath: destination)
        } catch {
            throw .io(path + "/" + name, "cannot copy: \(error.localizedDescription)")
        }
    }

    /// The bytes of one of `auxiliaryFiles()` (or of config.json and the index in a directory).
    public func auxiliaryFileContents(_ name: String) throws(VFFNError) -> [UInt8] {
        if !isDirectory {
            guard let container = shards[0] as? VFFNContainer, let e = container.files.first(where: { $0.name == name }) else {
                throw .badInput(path, "has no file \"\(name)\"")
            }
            return try container.contents(of: e, what: "file").withUnsafeBytes { Array($0) }
        }
        guard let data = FileManager.default.contents(atPath: path + "/" + name) else { throw .io(path + "/" + name, "cannot read") }
        return Array(data)
    }

    /// One of `auxiliaryFiles()` as a writer takes it: a directory's file read from disk a piece
    /// at a time when written (a packed checkpoint may carry multi-GB weights in other formats),
    /// a container's embedded file decoded.
    public func auxiliaryFileBytes(_ name: String) throws(VFFNError) -> TensorBytes {
        guard isDirectory else {
            guard let container = shards[0] as? VFFNContainer, let e = container.files.first(where: { $0.name == name }) else {
                throw .badInput(path, "has no file \"\(name)\"")
            }
            return .pieces(count: e.length, source: EmbeddedFile(container: container, entry: e))
        }
        let file = path + "/" + name
        var st = stat()
        guard stat(file, &st) == 0 else { throw .io(file, "cannot read: \(String(cString: strerror(errno)))") }   // follows symlinks
        return .region(FileRegion(path: file, offset: 0, count: Int(st.st_size)))
    }

    /// What a directory without config.json is, as far as we can tell.
    static func notACheckpointDirectory(_ path: String) -> VFFNError {
        let entries = ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
        if entries.contains("config.yaml") && entries.contains("model.pt") {
            return .badInput(path, "is an OLMo checkpoint (config.yaml + model.pt); inspect reads it, conversion needs a Hugging Face directory with config.json")
        }
        if entries.isEmpty { return .badInput(path, "is an empty directory, not a checkpoint (no config.json)") }
        let below = entries.filter { FileManager.default.fileExists(atPath: path + "/" + $0 + "/config.json") }
        if let sub = below.first {
            return .badInput(path, "has no config.json, but \(sub)/ has one; pass \(path.hasSuffix("/") ? path : path + "/")\(sub)")
        }
        return .badInput(path, "has no config.json, so it is not a Hugging Face checkpoint directory")
    }

    public static func readJSON(_ path: String, what: String) throws(VFFNError) -> JSON {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .badInput(path, FileManager.default.fileExists(atPath: path) ? "cannot read \(what)" : "missing \(what)")
        }
        return try parseJSON(data, path: path)
    }

    /// JSON bytes read from `path` (a file, or an entry of a container), or one line saying why not.
    public static func parseJSON<C: Collection>(_ bytes: C, path: String) throws(VFFNError) -> JSON where C.Element == UInt8 {
        do { return try JSON.parse(bytes) } catch {
            throw .badInput(path, "is not valid JSON: \(error.reason) at byte \(error.offset)")
        }
    }
}

/// A tensor file that is a whole checkpoint by itself (.vffn, GGUF): it carries or implies the
/// config and may embed the checkpoint's other files.
public protocol SingleFileCheckpoint: TensorFile {
    /// config.json's content: stored in the file, or derived from its metadata.
    func checkpointConfig() throws(VFFNError) -> JSON
    var embeddedFileNames: [String] { get }
    func extractEmbeddedFile(_ name: String, to destination: String) throws(VFFNError)
    /// What the reader changed to present the tensors, for reports.
    var readerNotes: [String] { get }
}

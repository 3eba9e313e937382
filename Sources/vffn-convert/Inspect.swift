import ArgumentParser
import Foundation
import VFFNFormats
import VFFNModels
import VFFNSurgery

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Describe a checkpoint as a model card: a summary, then its tensors.",
        discussion: """
        The summary: family, layers, hidden and FFN sizes, heads and KV heads, vocabulary, \
        context, tied head, parameter count (and what VersatileFFN gates add), dtype mix and \
        size. Then every tensor in natural order (layer 10 after layer 9) with dtype, shape, \
        bytes and shard. Opens everything convert writes: Hugging Face directories, .vffn and \
        .gguf files, single safetensors or torch files, and OLMo exports (config.yaml + model.pt).
        """)

    @Argument(help: ArgumentHelp("A checkpoint directory (Hugging Face or OLMo export), a .vffn or .gguf file, or one safetensors or torch file.",
                                 valueName: "checkpoint"), completion: .file())
    var checkpoint: String

    @Option(help: ArgumentHelp("List only tensors whose name contains this text, or matches it as a glob (*, ?).", valueName: "pattern"))
    var filter: String?

    @Flag(help: "Print the summary and tensors as JSON.")
    var json = false

    @OptionGroup var common: CommonOptions

    func run() throws {
        try reportingErrors {
            let card = try ModelCard(path: checkpoint)
            let keep = filter.map(matches)
            let rows = card.tensors.filter { keep?($0) ?? true }
            if json {
                printJSON(card.json(tensors: rows))
            } else if !common.quiet {
                print(card.summary, terminator: "")
                print("")
                print(ModelCard.table(rows), terminator: "")
            }
        }
    }

    func matches(_ pattern: String) -> (ModelCard.Tensor) -> Bool {
        if pattern.contains("*") || pattern.contains("?") || pattern.contains("[") {
            return { fnmatch(pattern, $0.info.name, 0) == 0 }
        }
        return { $0.info.name.contains(pattern) }
    }
}

/// What `inspect` shows, read from whatever kind of checkpoint the path holds.
struct ModelCard {
    struct Tensor {
        let info: TensorInfo
        let shard: String?
    }

    let path: String
    /// "Hugging Face directory, 4 safetensors shards", "OLMo export", ...
    let storage: String
    /// (label, value) lines of the summary, in order.
    var facts: [(String, String)] = []
    let tensors: [Tensor]
    var notes: [String] = []
    var versatile: [(String, JSON)]?
    /// The gate tensors the config names; tensors with a gate's name are counted as gates too.
    var gateNames: Set<String> = []

    private init(bare path: String, storage: String, tensors: [Tensor]) {
        self.path = path
        self.storage = storage
        self.tensors = Self.naturalOrder(tensors)
    }

    init(path: String) throws(VFFNError) {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { throw .badInput(path, "no such file or directory") }
        if isDir.boolValue, !FileManager.default.fileExists(atPath: path + "/config.json"),
           FileManager.default.fileExists(atPath: path + "/model.pt"), FileManager.default.fileExists(atPath: path + "/config.yaml") {
            self = try Self.olmo(path)
            return
        }
        if !isDir.boolValue, case let format = try TensorFileFormat.detect(path: path), format == .safetensors || format == .pytorch {
            // One weight file without its directory: there is no config to describe the model.
            let file = try TensorFileFormat.open(path: path)
            self.init(bare: path, storage: "one \(format.rawValue) file" + ((file as? SafeTensorsFile).map { ", header \($0.headerSize) bytes" } ?? ""),
                      tensors: file.tensors.map { Tensor(info: $0, shard: nil) })
            if let m = file.metadata { notes.append("metadata: " + m.map { "\($0)=\($1)" }.joined(separator: ", ")) }
            facts = sizeFacts
            return
        }
        let ckpt = try Checkpoint(path: path)
        let storage = ckpt.isDirectory
            ? "Hugging Face directory, " + (ckpt.isSharded ? "\(ckpt.shards.count) \(ckpt.format.rawValue) shards" : "one \(ckpt.format.rawValue) file")
            : "one \(ckpt.format.rawValue) file"
        let shardNames = ckpt.isSharded
        self.init(bare: path, storage: storage, tensors: ckpt.tensorNames.map { name in
            Tensor(info: ckpt.info(name)!, shard: shardNames ? ckpt.shard(of: name).map { Self.lastComponent($0.path) } : nil)
        })
        notes = ckpt.notes
        let c = ckpt.config
        let type = c["model_type"]?.stringValue ?? "?"
        let arch = c["architectures"]?.arrayValue?.first?.stringValue
        var family = type + (arch.map { " (\($0))" } ?? "")
        var ffn: String?
        do {
            let layout = try Architectures.lookup(ckpt).ffnLayout(ckpt)
            family += ", \(layout.topology.rawValue) blocks"
            ffn = "hidden \(layout.hiddenSize), FFN intermediate \(layout.intermediateSize), \(layout.sites.count) layers"
        } catch {
            family += (Architectures.family(type).map { ", \($0.topology.rawValue) blocks" } ?? "") + " — not convertible: \(error.message)"
        }
        let settings = try VersatileFFNSettings.read(from: c, path: ckpt.configPath)
        gateNames = Set(settings?.gateTensors.flatMap { [$0.expertGate, $0.depthPredictor] } ?? [])
        facts.append(("family", family))
        facts.append(("shape", ffn ?? Self.configShape(c)))
        facts.append(("attention", Self.attention(c)))
        facts.append(("vocabulary", Self.int(c, "vocab_size").map { "\($0) tokens" } ?? "?"))
        facts.append(("context", Self.int(c, "max_position_embeddings", "n_positions", "n_ctx").map { "\($0) positions" } ?? "?"))
        if Architectures.family(type)?.output != .hiddenStates {
            let heads = DecoderNames.heads
            let head = ckpt.tensorNames.contains { heads.contains($0) || $0.hasSuffix(".lm_head.weight") }
            facts.append(("output head", head ? "own lm_head" : "tied to the token embedding"))
        }
        facts += sizeFacts
        if let s = settings {
            versatile = [("num_experts", .int(s.numExperts)), ("top_k", .int(s.topK)), ("max_depth", .int(s.maxDepth)),
                         ("expert_slicing", .string(s.expertSlicing)), ("layers_with_gates", .int(s.gateTensors.count))]
            facts.append(("VersatileFFN", "\(s.numExperts) sub-experts, top-\(s.topK), max depth \(s.maxDepth), \(s.expertSlicing) slicing, gates in \(s.gateTensors.count) layers"))
        } else {
            facts.append(("VersatileFFN", "none (dense checkpoint)"))
        }
    }

    /// An OLMo export: model.pt (a torch zip) and the `model` section of config.yaml.
    private static func olmo(_ path: String) throws(VFFNError) -> ModelCard {
        let file = try TorchCheckpointFile(path: path + "/model.pt")
        var card = ModelCard(bare: path, storage: "OLMo export (config.yaml + unsharded model.pt)", tensors: file.tensors.map { Tensor(info: $0, shard: nil) })
        try card.readOLMoConfig(path + "/config.yaml")
        return card
    }

    private mutating func readOLMoConfig(_ yamlPath: String) throws(VFFNError) {
        guard let data = FileManager.default.contents(atPath: yamlPath) else { throw .io(yamlPath, "cannot read") }
        let yaml = Self.yamlScalars(String(decoding: data, as: UTF8.self))
        func v(_ key: String) -> String { yaml[key] ?? "?" }
        facts.append(("family", "OLMo \(v("model.block_type")) block, \(v("model.activation_type")), \(v("model.layer_norm_type")) norm"))
        facts.append(("shape", "hidden \(v("model.d_model")), \(v("model.n_layers")) layers, ff_proj \(v("model.mlp_hidden_size")) rows"))
        facts.append(("attention", "\(v("model.n_heads")) heads, \(yaml["model.n_kv_heads"] ?? v("model.n_heads")) KV heads, rope theta \(v("model.rope_theta"))"))
        facts.append(("vocabulary", "\(v("model.vocab_size")) tokens"))
        facts.append(("context", "\(v("model.max_sequence_length")) positions"))
        facts.append(("output head", yaml["model.weight_tying"] == "true" ? "tied to the token embedding" : "own ff_out"))
        facts += sizeFacts
        if let n = yaml["model.versatile_ffn.num_experts"].flatMap(Int.init), let k = yaml["model.versatile_ffn.top_k"].flatMap(Int.init),
           let d = yaml["model.versatile_ffn.max_depth"].flatMap(Int.init) {
            versatile = [("num_experts", .int(n)), ("top_k", .int(k)), ("max_depth", .int(d))]
            facts.append(("VersatileFFN", "\(n) sub-experts, top-\(k), max depth \(d)"))
        }
        if let load = yaml["load_path"] { notes.append("load_path: \(load)") }
    }

    var summary: String {
        var out = "\(path): \(storage)\n"
        let width = facts.map(\.0.count).max() ?? 0
        for (label, value) in facts { out += "  " + label.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + value + "\n" }
        for n in notes { out += "  note: \(n)\n" }
        return out
    }

    static func table(_ rows: [Tensor]) -> String {
        let total = rows.reduce(0) { $0 + $1.info.byteCount }
        let hasShards = rows.contains { $0.shard != nil }
        let header = ["tensor", "dtype", "shape", "bytes"] + (hasShards ? ["shard"] : [])
        let body = rows.map { t in
            [t.info.name, t.info.dtype.rawValue, "[" + t.info.shape.map(String.init).joined(separator: ", ") + "]", String(t.info.byteCount)]
                + (hasShards ? [t.shard ?? ""] : [])
        }
        return textTable(header, body) + "  \(rows.count) tensors, \(total) bytes (\(humanBytes(total)))\n"
    }

    func json(tensors rows: [Tensor]) -> JSON {
        var members: [(String, JSON)] = [("path", .string(path)), ("storage", .string(storage))]
        // The summary's words, but for the numbers that follow in their own fields.
        members += facts.filter { !["parameters", "dtypes", "size"].contains($0.0) }.map { ($0.0.replacingOccurrences(of: " ", with: "_"), .string($0.1)) }
        members.append(("parameters", .int(parameters)))
        members.append(("gate_parameters", .int(gateParameters)))
        members.append(("bytes", .int(bytes)))
        members.append(("dtypes", .object(Self.dtypeCounts(tensors).map { ($0.0, .int($0.1)) })))
        if let versatile { members.append(("versatile_ffn", .object(versatile))) }
        members.append(("notes", .array(notes.map { .string($0) })))
        members.append(("tensors", .array(rows.map { t in
            .object([("name", .string(t.info.name)), ("dtype", .string(t.info.dtype.rawValue)),
                     ("shape", .array(t.info.shape.map { .int($0) })), ("bytes", .int(t.info.byteCount))]
                    + (t.shard.map { [("shard", JSON.string($0))] } ?? []))
        })))
        return .object(members)
    }

    /// Float tensors only: BOOL masks and integer buffers (GPT-NeoX's attention.bias, BERT's
    /// position_ids) are not parameters.
    var parameters: Int { tensors.filter { $0.info.dtype.isFloatingPoint }.reduce(0) { $0 + $1.info.elementCount } }
    var bytes: Int { tensors.reduce(0) { $0 + $1.info.byteCount } }

    var gateParameters: Int {
        tensors.filter { gateNames.contains($0.info.name) || Self.isGate($0.info.name) }.reduce(0) { $0 + $1.info.elementCount }
    }

    /// A gate by its name, with or without `.weight` (the OLMo export keeps it, so do HF saves).
    static func isGate(_ name: String) -> Bool {
        ["expert_gate", "depth_predictor"].contains { name.hasSuffix($0) || name.hasSuffix($0 + ".weight") }
    }

    /// Parameters (and the gates' share), dtype mix and size.
    var sizeFacts: [(String, String)] {
        let parameters = parameters, gates = gateParameters, bytes = bytes
        var p = "\(grouped(parameters)) (\(humanCount(parameters)))"
        if gates > 0 {
            p += String(format: "; VersatileFFN gates add %@ (%.2f%% of the dense %@)", grouped(gates), 100 * Double(gates) / Double(max(parameters - gates, 1)),
                        humanCount(parameters - gates))
        }
        let mix = Self.dtypeCounts(tensors).map { "\($0.0) \($0.1)" }.joined(separator: ", ")
        return [("parameters", p), ("dtypes", mix + " tensors"), ("size", "\(humanBytes(bytes)) (\(bytes) bytes) in \(tensors.count) tensors")]
    }

    static func dtypeCounts(_ tensors: [Tensor]) -> [(String, Int)] {
        Dictionary(grouping: tensors, by: { $0.info.dtype.rawValue }).map { ($0.key, $0.value.count) }.sorted { ($1.1, $0.0) < ($0.1, $1.0) }
    }

    static func attention(_ c: JSON) -> String {
        guard let heads = int(c, "num_attention_heads", "n_head") else { return "?" }
        let kv = int(c, "num_key_value_heads") ?? heads
        let hidden = int(c, "hidden_size", "n_embd")
        let headDim = int(c, "head_dim") ?? hidden.map { $0 / max(heads, 1) }
        return "\(heads) heads, \(kv) KV heads" + (kv < heads ? " (grouped-query)" : "") + (headDim.map { ", head dim \($0)" } ?? "")
    }

    static func configShape(_ c: JSON) -> String {
        "hidden \(int(c, "hidden_size", "n_embd").map(String.init) ?? "?"), \(int(c, "num_hidden_layers", "n_layer").map(String.init) ?? "?") layers"
    }

    /// The first of several spellings of an integer config key (transformers 4.x and 5.x, GPT-2's).
    static func int(_ c: JSON, _ keys: String...) -> Int? {
        for k in keys { if let v = c[k]?.intValue { return v } }
        if let text = c["text_config"] { for k in keys { if let v = text[k]?.intValue { return v } } }
        return nil
    }

    /// Layers in numeric order: `layers.10` after `layers.9`, as the model runs them.
    static func naturalOrder(_ tensors: [Tensor]) -> [Tensor] {
        let keys = tensors.map { naturalKey($0.info.name) }
        return tensors.indices.sorted { a, b in
            let (x, y) = (keys[a], keys[b])
            for (p, q) in zip(x, y) where p != q {
                switch (p, q) {
                case let (.number(m), .number(n)): return m < n
                case let (.text(s), .text(t)): return s < t
                case (.number, .text): return true
                case (.text, .number): return false
                }
            }
            return x.count != y.count ? x.count < y.count : a < b
        }.map { tensors[$0] }
    }

    enum KeyPart: Equatable {
        case text(String)
        case number(Int)
    }

    static func naturalKey(_ name: String) -> [KeyPart] {
        var parts: [KeyPart] = [], run = "", digits = false
        func flush() {
            guard !run.isEmpty else { return }
            parts.append(digits ? (Int(run).map(KeyPart.number) ?? .text(run)) : .text(run))
            run = ""
        }
        for ch in name {
            if ch.isASCII && ch.isNumber != digits { flush(); digits = ch.isNumber }
            run.append(ch)
        }
        flush()
        return parts
    }

    /// `section.key: value` for the scalars of a block-style YAML file (what our export writes).
    static func yamlScalars(_ text: String) -> [String: String] {
        var out: [String: String] = [:]
        var stack: [(indent: Int, key: String)] = []
        for raw in text.split(separator: "\n", omittingEmptySubsequences: true) {
            let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
            guard let colon = line.firstIndex(of: ":"), !line.trimmingCharacters(in: .whitespaces).isEmpty else { continue }
            let indent = line.prefix { $0 == " " }.count
            let key = line[..<colon].trimmingCharacters(in: .whitespaces)
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            while let last = stack.last, last.indent >= indent { stack.removeLast() }
            let full = (stack.map(\.key) + [key]).joined(separator: ".")
            if value.isEmpty { stack.append((indent, key)) } else { out[full] = value.trimmingCharacters(in: CharacterSet(charactersIn: "\"'")) }
        }
        return out
    }

    static func lastComponent(_ path: String) -> String {
        path.split(separator: "/").last.map(String.init) ?? path
    }
}

func grouped(_ n: Int) -> String {
    let digits = String(n)
    var out = ""
    for (i, ch) in digits.reversed().enumerated() {
        if i > 0 && i % 3 == 0 { out.append(",") }
        out.append(ch)
    }
    return String(out.reversed())
}

/// `n` in decimal thousands, millions or billions, each unit spelled by the caller.
func decimalUnits(_ n: Int, one: String, thousand: String, million: String, billion: String) -> String {
    let v = Double(n)
    if v >= 1e9 { return String(format: "%.2f ", v / 1e9) + billion }
    if v >= 1e6 { return String(format: "%.1f ", v / 1e6) + million }
    if v >= 1e3 { return String(format: "%.1f ", v / 1e3) + thousand }
    return one.isEmpty ? "\(n)" : "\(n) " + one
}

func humanCount(_ n: Int) -> String { decimalUnits(n, one: "", thousand: "K", million: "M", billion: "B") }

func humanBytes(_ n: Int) -> String { decimalUnits(n, one: "B", thousand: "kB", million: "MB", billion: "GB") }

/// A path that must be a file: a directory or nothing there is named as such.
func requireFile(_ path: String, what: String) throws(VFFNError) {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { throw .badInput(path, "no such file") }
    guard !isDir.boolValue else { throw .badInput(path, "is a directory; give \(what)") }
}

import Foundation
import VFFNFormats

/// A checkpoint's own tokenizer, reproducing Hugging Face `tokenizers` id for id: added tokens
/// are found in the text first (those with `normalized: false` in the text as written, the others
/// after normalization), then each remaining piece is normalized, pre-tokenized and given to the
/// model (BPE or WordPiece), and the post-processor adds BOS/EOS/CLS/SEP when asked.
///
/// Reads tokenizer.json (with tokenizer_config.json beside it for added tokens it declares), or
/// the tokenizer a GGUF carries in its `tokenizer.ggml.*` metadata. Types it does not implement
/// (Unigram, WordLevel, ...) are refused by name. Not thread-safe: its BPE cache is unguarded.
public final class Tokenizer {
    let normalizer: Normalizer?
    let preTokenizer: PreTokenizer?
    let model: TokenizerModel
    let postProcessor: PostProcessor
    let decoder: TokenDecoder?
    public let addedTokens: [AddedToken]
    private let rawMatcher: AddedTokenMatcher
    private let normalizedMatcher: AddedTokenMatcher
    private let idToToken: [String?]
    private let specialIds: Set<Int>
    /// Where it was read from, for messages.
    public let source: String

    init(source: String, normalizer: Normalizer?, preTokenizer: PreTokenizer?, model: TokenizerModel,
         postProcessor: PostProcessor, decoder: TokenDecoder?, addedTokens: [AddedToken]) {
        self.source = source
        self.normalizer = normalizer
        self.preTokenizer = preTokenizer
        self.model = model
        self.postProcessor = postProcessor
        self.decoder = decoder
        self.addedTokens = addedTokens
        let raw = addedTokens.filter { !$0.normalized }
        rawMatcher = AddedTokenMatcher(raw, patterns: raw.map { Array($0.content.unicodeScalars) })
        let normalized = addedTokens.filter(\.normalized)
        normalizedMatcher = AddedTokenMatcher(normalized, patterns: normalized.map { t in
            let s = Array(t.content.unicodeScalars)
            return normalizer?.apply(s) ?? s
        })
        var table = [String?]()
        for (token, id) in model.vocabulary where id >= 0 {
            if id >= table.count { table += Array(repeating: nil, count: id + 1 - table.count) }
            table[id] = token.string
        }
        // A normalized added token decodes to its normalized form, and is skipped as special only
        // if that text is a special token's content (`tokenizers`' simple_id_to_token).
        for t in addedTokens where t.id >= 0 {
            if t.id >= table.count { table += Array(repeating: nil, count: t.id + 1 - table.count) }
            table[t.id] = t.normalized && normalizer != nil ? String(scalars: normalizer!.apply(Array(t.content.unicodeScalars))) : t.content
        }
        idToToken = table
        let specialContents = Set(addedTokens.filter(\.special).map { ExactString($0.content) })
        specialIds = Set(addedTokens.compactMap { t in table[t.id].map { specialContents.contains(ExactString($0)) } == true ? t.id : nil })
    }

    /// The number of ids: the largest id plus one.
    public var vocabularySize: Int { idToToken.count }

    public func token(_ id: Int) -> String? { id >= 0 && id < idToToken.count ? idToToken[id] : nil }

    public func isSpecial(_ id: Int) -> Bool { specialIds.contains(id) }

    /// The ids of `text`, as `tokenizers`' `encode(text, add_special_tokens=...)`.
    public func encode(_ text: String, addSpecialTokens: Bool = true) -> [Int] {
        let input = Array(text.unicodeScalars)
        var pieces: [Piece] = []
        for (range, token) in rawMatcher.split(input) {
            if let token { pieces.append(Piece(text: [], atOrigin: false, token: rawMatcher.tokens[token].id)); continue }
            if range.isEmpty { continue }
            var text = Array(input[range])
            if let normalizer { text = normalizer.apply(text) }
            for (r, t) in normalizedMatcher.split(text) {
                if let t { pieces.append(Piece(text: [], atOrigin: false, token: normalizedMatcher.tokens[t].id)); continue }
                if r.isEmpty { continue }
                pieces.append(Piece(text: Array(text[r]), atOrigin: range.lowerBound == 0 && r.lowerBound == 0))
            }
        }
        if let preTokenizer { pieces = preTokenizer.apply(pieces) }
        var ids: [Int] = []
        ids.reserveCapacity(input.count / 2 + 4)
        if addSpecialTokens { ids += postProcessor.prefix }
        for piece in pieces {
            if let token = piece.token { ids.append(token) } else { model.tokenize(piece.text, into: &ids) }
        }
        if addSpecialTokens { ids += postProcessor.suffix }
        return ids
    }

    /// The text of `ids`, as `tokenizers`' `decode(ids, skip_special_tokens=...)`; ids it does not
    /// know are left out, as there.
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = false) -> String {
        let tokens = ids.compactMap { id -> String? in
            if skipSpecialTokens && specialIds.contains(id) { return nil }
            return token(id)
        }
        guard let decoder else { return tokens.joined(separator: " ") }
        return decoder.decodeChain(tokens).joined()
    }

    // MARK: - Reading

    /// Reads tokenizer.json's JSON (and tokenizer_config.json's, when there is one).
    public convenience init(tokenizerJSON json: JSON, config: JSON? = nil, source: String) throws(VFFNError) {
        do {
            try self.init(parsing: json, config: config, source: source)
        } catch {
            throw error.path == nil ? .badInput(source, error.message) : error
        }
    }

    private convenience init(parsing json: JSON, config: JSON?, source: String) throws(VFFNError) {
        guard json["model"] != nil else { throw .badInput(nil, "is not a tokenizer.json (no \"model\")") }
        let m = json["model"]!
        var vocabulary: [ExactString: Int] = [:]
        if let members = m["vocab"]?.objectMembers {
            vocabulary.reserveCapacity(members.count)
            for (token, id) in members {
                guard let i = id.intValue, i >= 0 else { throw .badInput(nil, "vocabulary entry \"\(token)\" has no valid id") }
                vocabulary[ExactString(token)] = i
            }
        } else if m["vocab"]?.arrayValue != nil {
            throw .badInput(nil, "tokenizer model \(m["type"]?.stringValue ?? "") with a list vocabulary (Unigram) is not supported (BPE and WordPiece are)")
        }
        // Without a type, `tokenizers` tries BPE, then WordPiece (all four of its fields), then WordLevel.
        let wordPieceFields = ["unk_token", "continuing_subword_prefix", "max_input_chars_per_word", "vocab"].allSatisfy { m[$0] != nil }
        let type = m["type"]?.stringValue ?? (m["merges"] != nil ? "BPE" : wordPieceFields ? "WordPiece" : "WordLevel")
        let model: TokenizerModel
        switch type {
        case "BPE": model = .bpe(try BPE.parse(m, vocabulary: vocabulary))
        case "WordPiece": model = .wordPiece(WordPiece.parse(m, vocabulary: vocabulary))
        default: throw .badInput(nil, "tokenizer model \(type) is not supported (BPE and WordPiece are)")
        }
        // The ids `tokenizers` gives added tokens, whatever their "id" says: a repeated content
        // keeps its id (with the last entry's flags), a vocabulary entry's is its id there, and the
        // others are numbered on from the vocabulary's size, in order. Empty contents are skipped.
        var added: [AddedToken] = []
        var byContent: [ExactString: Int] = [:]
        var next = vocabulary.count
        func add(_ t: JSON) {
            guard let content = t["content"]?.stringValue, !content.isEmpty else { return }
            let key = ExactString(content)
            if let i = byContent[key] { added[i] = AddedToken(t, id: added[i].id); return }
            let id: Int
            if let v = vocabulary[key] { id = v } else { id = next; next += 1 }
            byContent[key] = added.count
            added.append(AddedToken(t, id: id))
        }
        for t in json["added_tokens"]?.arrayValue ?? [] { add(t) }
        // transformers adds the tokens tokenizer_config.json declares and tokenizer.json lacks.
        let declared = Set(added.map(\.id))
        for (key, t) in config?["added_tokens_decoder"]?.objectMembers ?? [] {
            guard let id = Int(key), !declared.contains(id), let content = t["content"]?.stringValue, !content.isEmpty,
                  byContent[ExactString(content)] == nil else { continue }
            byContent[ExactString(content)] = added.count
            added.append(AddedToken(t, id: id))
        }
        try self.init(source: source, normalizer: json["normalizer"].map(Normalizer.parse) ?? nil,
                      preTokenizer: json["pre_tokenizer"].map(PreTokenizer.parse) ?? nil, model: model,
                      postProcessor: json["post_processor"].map(PostProcessor.parse) ?? PostProcessor(),
                      decoder: json["decoder"].map(TokenDecoder.parse) ?? nil, addedTokens: added)
    }

    /// The tokenizer of a checkpoint: a directory with tokenizer.json, a .vffn container that
    /// embeds one, a GGUF file's metadata, or a tokenizer.json itself.
    public static func load(path: String) throws(VFFNError) -> Tokenizer {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { throw .badInput(path, "does not exist") }
        if isDirectory.boolValue {
            let file = (path as NSString).appendingPathComponent("tokenizer.json")
            guard FileManager.default.fileExists(atPath: file) else {
                let others = ["tokenizer.model", "vocab.txt", "vocab.json", "spiece.model"].filter {
                    FileManager.default.fileExists(atPath: (path as NSString).appendingPathComponent($0))
                }
                let has = others.isEmpty ? "" : " (it has \(others.joined(separator: ", ")), which this tool does not read)"
                throw .badInput(path, "has no tokenizer.json, so text cannot be tokenized\(has); pass --tokens, or copy the model's tokenizer.json here")
            }
            let configFile = (path as NSString).appendingPathComponent("tokenizer_config.json")
            return try Tokenizer(tokenizerJSON: try readJSON(file), config: FileManager.default.fileExists(atPath: configFile) ? try readJSON(configFile) : nil, source: file)
        }
        if path.hasSuffix(".gguf") { return try GGUFTokenizer.load(GGUFFile(path: path)) }
        if path.hasSuffix(".vffn") {
            let container = try VFFNContainer(path: path)
            guard let bytes = try container.embeddedFile("tokenizer.json") else {
                throw .badInput(path, "embeds no tokenizer.json, so text cannot be tokenized; pass --tokens, or pack the checkpoint with its tokenizer.json")
            }
            let config = try container.embeddedFile("tokenizer_config.json").map { (b) throws(VFFNError) in try Checkpoint.parseJSON(b, path: path + ":tokenizer_config.json") }
            return try Tokenizer(tokenizerJSON: try Checkpoint.parseJSON(bytes, path: path + ":tokenizer.json"), config: config, source: path + ":tokenizer.json")
        }
        let configFile = ((path as NSString).deletingLastPathComponent as NSString).appendingPathComponent("tokenizer_config.json")
        let config = (path as NSString).lastPathComponent == "tokenizer.json" && FileManager.default.fileExists(atPath: configFile) ? try readJSON(configFile) : nil
        return try Tokenizer(tokenizerJSON: try readJSON(path), config: config, source: path)
    }

    static func readJSON(_ path: String) throws(VFFNError) -> JSON { try Checkpoint.readJSON(path, what: "tokenizer file") }
}

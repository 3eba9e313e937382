import VFFNFormats

/// The tokenizer a GGUF carries in `tokenizer.ggml.*`, rebuilt as the Hugging Face tokenizer
/// llama.cpp's converter read it from, so that a GGUF source tokenizes as its original did:
/// - `gpt2` (byte-level BPE): the merges list, the pre-tokenizer named by `tokenizer.ggml.pre`
///   (the Split regex of its family), control tokens as special added tokens;
/// - `llama` (SentencePiece BPE): the merges that transformers' converter derives from the
///   scores (every split of a piece into two pieces, ordered by the piece's score, highest
///   first), byte fallback through the `<0xNN>` tokens, and `▁` for spaces.
enum GGUFTokenizer {
    static let tokenTypeUnknown = 2, tokenTypeControl = 3, tokenTypeUserDefined = 4

    static func load(_ gguf: GGUFFile) throws(VFFNError) -> Tokenizer {
        let path = gguf.path
        guard case let .string(kind)? = gguf.values["tokenizer.ggml.model"] else {
            throw .badInput(path, "carries no tokenizer (no tokenizer.ggml.model), so text cannot be tokenized; pass --tokens")
        }
        guard let tokenValues = try gguf.array("tokenizer.ggml.tokens") else { throw .badInput(path, "has no tokenizer.ggml.tokens array") }
        var tokens: [String] = []
        tokens.reserveCapacity(tokenValues.count)
        for v in tokenValues {
            guard case let .string(s) = v else { throw .badInput(path, "tokenizer.ggml.tokens holds a value that is not a string") }
            tokens.append(s)
        }
        let types: [Int] = try gguf.array("tokenizer.ggml.token_type")?.map { v throws(VFFNError) in
            guard let t = v.asInt else { throw .badInput(path, "tokenizer.ggml.token_type holds a value that is not an integer") }
            return t
        } ?? Array(repeating: 1, count: tokens.count)
        guard types.count == tokens.count else {
            throw .badInput(path, "tokenizer.ggml.token_type has \(types.count) entries for \(tokens.count) tokens")
        }
        var vocabulary: [ExactString: Int] = [:]
        vocabulary.reserveCapacity(tokens.count)
        for (i, t) in tokens.enumerated() where vocabulary[ExactString(t)] == nil { vocabulary[ExactString(t)] = i }
        func flag(_ key: String, _ d: Bool) -> Bool {
            if case let .bool(b)? = gguf.values["tokenizer.ggml." + key] { return b }
            return d
        }
        func id(_ key: String) -> Int? {
            guard let i = gguf.values["tokenizer.ggml." + key]?.asInt, i >= 0, i < tokens.count else { return nil }
            return i
        }
        var added: [AddedToken] = []
        for (i, t) in types.enumerated() where t == tokenTypeControl || t == tokenTypeUserDefined || t == tokenTypeUnknown {
            added.append(AddedToken(id: i, content: tokens[i], special: t != tokenTypeUserDefined, normalized: false))
        }

        switch kind {
        case "gpt2":
            // Without the key (GGUFs written before llama.cpp recorded it) or with "default", the
            // split rule of the original tokenizer is unknown: refused, not guessed.
            guard case let .string(pre)? = gguf.values["tokenizer.ggml.pre"], pre != "default" else {
                throw .badInput(path, "its gpt2 tokenizer names no pre-tokenizer (tokenizer.ggml.pre is missing or \"default\"), so how it splits text is unknown; tokenize with the model's tokenizer.json instead")
            }
            let preTokenizer: PreTokenizer, ignoreMerges: Bool
            var normalizer: Normalizer? = nil
            switch pre {
            case "gpt-2", "gpt2", "olmo":
                preTokenizer = .byteLevel(addPrefixSpace: false, useRegex: true); ignoreMerges = false
            case "llama-bpe", "llama3", "dbrx", "smaug-bpe":
                preTokenizer = .sequence([.split(.scanner(RegexScanner(.cl100k(maxDigits: 3))), .isolated, invert: false),
                                          .byteLevel(addPrefixSpace: false, useRegex: false)])
                ignoreMerges = pre == "llama-bpe" || pre == "llama3"
            case "qwen2", "deepseek-r1-qwen":
                preTokenizer = .sequence([.split(.scanner(RegexScanner(.cl100k(maxDigits: 1))), .isolated, invert: false),
                                          .byteLevel(addPrefixSpace: false, useRegex: false)])
                ignoreMerges = false
                normalizer = .nfc   // Qwen2's tokenizer.json normalizes to NFC; the GGUF keeps no normalizer
            case "starcoder", "smollm", "refact":
                preTokenizer = .sequence([.digits(individual: true), .byteLevel(addPrefixSpace: false, useRegex: true)])
                ignoreMerges = false
            default:
                throw .badInput(path, "tokenizer.ggml.pre \"\(pre)\" is not supported (supported: gpt-2, llama-bpe, dbrx, smaug-bpe, qwen2, starcoder, smollm, refact, olmo)")
            }
            guard let mergeValues = try gguf.array("tokenizer.ggml.merges") else { throw .badInput(path, "a gpt2 tokenizer without tokenizer.ggml.merges") }
            var merges: [UInt64: (rank: Int32, id: Int32)] = [:]
            merges.reserveCapacity(mergeValues.count)
            for (rank, v) in mergeValues.enumerated() {
                guard case let .string(s) = v else { throw .badInput(path, "tokenizer.ggml.merges holds a value that is not a string") }
                let parts = s.split(separator: " ", omittingEmptySubsequences: false)
                guard parts.count == 2, let a = vocabulary[ExactString(String(parts[0]))], let b = vocabulary[ExactString(String(parts[1]))],
                      let m = vocabulary[ExactString(String(parts[0]) + String(parts[1]))] else {
                    throw .badInput(path, "tokenizer.ggml.merges entry \(rank) \"\(s)\" does not join two tokens into a third")
                }
                merges[UInt64(a) << 32 | UInt64(b)] = (Int32(rank), Int32(m))
            }
            let bpe = try BPE(vocabulary: vocabulary, merges: merges, unknown: nil, fuseUnknown: false, byteFallback: false,
                              ignoreMerges: ignoreMerges, continuingPrefix: nil, endOfWordSuffix: nil)
            return Tokenizer(source: path, normalizer: normalizer, preTokenizer: preTokenizer, model: .bpe(bpe),
                             postProcessor: post(flag("add_bos_token", false), id("bos_token_id"), flag("add_eos_token", false), id("eos_token_id")),
                             decoder: .byteLevel, addedTokens: added)
        case "llama":
            guard let scoreValues = try gguf.array("tokenizer.ggml.scores"), scoreValues.count == tokens.count else {
                throw .badInput(path, "a llama (SentencePiece) tokenizer needs tokenizer.ggml.scores, one per token")
            }
            let scores = scoreValues.map { $0.asDouble ?? 0 }
            var candidates: [(a: Int, b: Int, merged: Int, score: Double)] = []
            for (i, piece) in tokens.enumerated() {
                let s = Array(piece.unicodeScalars)
                guard s.count > 1 else { continue }
                var local: [(Int, Int)] = []
                for cut in 1..<s.count {
                    if let a = vocabulary[ExactString(String(scalars: s[..<cut]))], let b = vocabulary[ExactString(String(scalars: s[cut...]))] { local.append((a, b)) }
                }
                local.sort { $0 < $1 }
                for (a, b) in local { candidates.append((a, b, i, scores[i])) }
            }
            // A stable sort by score, highest first, as the converter's `sorted(..., reverse=True)`.
            let order = candidates.indices.sorted { x, y in
                candidates[x].score != candidates[y].score ? candidates[x].score > candidates[y].score : x < y
            }
            var merges: [UInt64: (rank: Int32, id: Int32)] = [:]
            for (rank, k) in order.enumerated() {
                let c = candidates[k]
                let key = UInt64(c.a) << 32 | UInt64(c.b)
                if merges[key] == nil { merges[key] = (Int32(rank), Int32(c.merged)) }
            }
            let unknown = id("unknown_token_id") ?? types.firstIndex(of: tokenTypeUnknown)
            let bpe = try BPE(vocabulary: vocabulary, merges: merges, unknown: unknown.map { tokens[$0] }, fuseUnknown: true,
                              byteFallback: true, ignoreMerges: false, continuingPrefix: nil, endOfWordSuffix: nil)
            let space = Array("\u{2581}".unicodeScalars)
            let prefix = flag("add_space_prefix", true)
            let replace = Normalizer.replace(.literal([" "]), space)
            var decoders: [TokenDecoder] = [.replace(.literal(space), [" "]), .byteFallback, .fuse]
            if prefix { decoders.append(.strip(content: " ", start: 1, stop: 0)) }
            return Tokenizer(source: path, normalizer: prefix ? .sequence([.prepend(space), replace]) : replace, preTokenizer: nil,
                             model: .bpe(bpe),
                             postProcessor: post(flag("add_bos_token", true), id("bos_token_id"), flag("add_eos_token", false), id("eos_token_id")),
                             decoder: .sequence(decoders), addedTokens: added)
        default:
            throw .badInput(path, "GGUF tokenizer model \"\(kind)\" is not supported (gpt2 and llama are)")
        }
    }

    private static func post(_ addBOS: Bool, _ bos: Int?, _ addEOS: Bool, _ eos: Int?) -> PostProcessor {
        PostProcessor(prefix: addBOS ? bos.map { [$0] } ?? [] : [], suffix: addEOS ? eos.map { [$0] } ?? [] : [])
    }
}

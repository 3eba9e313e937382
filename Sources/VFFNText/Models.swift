import VFFNFormats

/// The tokenizer's model: turns one pre-tokenized word into ids.
enum TokenizerModel {
    case bpe(BPE)
    case wordPiece(WordPiece)

    var vocabulary: [ExactString: Int] {
        switch self {
        case let .bpe(m): return m.vocabulary
        case let .wordPiece(m): return m.vocabulary
        }
    }

    func tokenize(_ word: Scalars, into ids: inout [Int]) {
        switch self {
        case let .bpe(m): m.tokenize(word, into: &ids)
        case let .wordPiece(m): m.tokenize(word, into: &ids)
        }
    }
}

extension String {
    init(scalars: some Sequence<Unicode.Scalar>) {
        var view = String.UnicodeScalarView()
        view.append(contentsOf: scalars)
        self = String(view)
    }
}

/// Byte-pair encoding as `tokenizers` runs it: each scalar of the word (with the continuing
/// prefix and end-of-word suffix where set) is a symbol, or its UTF-8 bytes as `<0xNN>` tokens
/// under `byte_fallback`, or the unknown token; then the adjacent pair of lowest merge rank is
/// merged, leftmost first, until no pair has a rank. A merge list works on ranks; a GGUF
/// SentencePiece vocabulary gives ranks from its scores (`GGUFTokenizer`).
final class BPE {
    let vocabulary: [ExactString: Int]
    /// Per pair of ids, packed as `a << 32 | b`: the merge's rank and the merged id.
    let merges: [UInt64: (rank: Int32, id: Int32)]
    let unknown: Int?
    let fuseUnknown: Bool
    let byteFallback: Bool
    let ignoreMerges: Bool
    let continuingPrefix: String?
    let endOfWordSuffix: String?
    private let byteTokens: [Int?]
    private var cache: [ExactString: [Int32]] = [:]
    static let cacheCapacity = 10_000

    init(vocabulary: [ExactString: Int], merges: [UInt64: (rank: Int32, id: Int32)], unknown: String?, fuseUnknown: Bool,
         byteFallback: Bool, ignoreMerges: Bool, continuingPrefix: String?, endOfWordSuffix: String?) throws(VFFNError) {
        self.vocabulary = vocabulary
        self.merges = merges
        // An unk_token missing from the vocabulary is an error in `tokenizers` only when a word
        // needs it; such a word's unknown scalars are left out here.
        self.unknown = unknown.flatMap { vocabulary[ExactString($0)] }
        self.fuseUnknown = fuseUnknown
        self.byteFallback = byteFallback
        self.ignoreMerges = ignoreMerges
        self.continuingPrefix = continuingPrefix
        self.endOfWordSuffix = endOfWordSuffix
        byteTokens = (0..<256).map { vocabulary[ExactString(Self.byteToken(UInt8($0)))] }
    }

    static func byteToken(_ b: UInt8) -> String {
        let hex = String(b, radix: 16, uppercase: true)
        return "<0x" + (hex.count == 1 ? "0" + hex : hex) + ">"
    }

    /// Reads tokenizer.json's `model` object.
    static func optionalString(_ json: JSON, _ key: String) -> String? { json[key].flatMap { $0.isNull ? nil : $0.stringValue } }

    static func parse(_ json: JSON, vocabulary: [ExactString: Int]) throws(VFFNError) -> BPE {
        var merges: [UInt64: (rank: Int32, id: Int32)] = [:]
        let list = json["merges"]?.arrayValue ?? []
        merges.reserveCapacity(list.count)
        let prefixBytes = Self.optionalString(json, "continuing_subword_prefix")?.utf8.count ?? 0
        var rank = 0
        for m in list {
            let a: String, b: String
            // Merges files of old tokenizers begin with a "#version" line, which `tokenizers` skips.
            if let s = m.stringValue, s.hasPrefix("#version") { continue }
            if let s = m.stringValue {
                let parts = s.split(separator: " ", omittingEmptySubsequences: false)
                guard parts.count == 2 else { throw .badInput(nil, "BPE merge \(rank) \"\(s)\" is not two tokens separated by one space") }
                a = String(parts[0]); b = String(parts[1])
            } else if let pair = m.arrayValue, pair.count == 2, let x = pair[0].stringValue, let y = pair[1].stringValue {
                a = x; b = y
            } else {
                throw .badInput(nil, "BPE merge \(rank) is neither \"a b\" nor [\"a\", \"b\"]")
            }
            guard let ia = vocabulary[ExactString(a)], let ib = vocabulary[ExactString(b)] else { throw .badInput(nil, "BPE merge \(rank) (\(a) \(b)) names a token missing from the vocabulary") }
            // The merged token drops the continuing prefix's bytes from the second half, as there.
            let joined = a + String(decoding: b.utf8.dropFirst(prefixBytes), as: UTF8.self)
            guard let merged = vocabulary[ExactString(joined)] else { throw .badInput(nil, "BPE merge \(rank) makes \(joined), which is missing from the vocabulary") }
            // A repeated merge takes its last rank, as `tokenizers`' map does.
            merges[UInt64(ia) << 32 | UInt64(ib)] = (Int32(rank), Int32(merged))
            rank += 1
        }
        func optionalString(_ key: String) -> String? { Self.optionalString(json, key) }
        if let dropout = json["dropout"]?.doubleValue, dropout > 0 {
            throw .badInput(nil, "BPE dropout \(dropout) makes tokenization random; set it to null to tokenize reproducibly")
        }
        return try BPE(vocabulary: vocabulary, merges: merges, unknown: optionalString("unk_token"),
                       fuseUnknown: json["fuse_unk"]?.boolValue ?? false, byteFallback: json["byte_fallback"]?.boolValue ?? false,
                       ignoreMerges: json["ignore_merges"]?.boolValue ?? false,
                       continuingPrefix: optionalString("continuing_subword_prefix"), endOfWordSuffix: optionalString("end_of_word_suffix"))
    }

    func tokenize(_ word: Scalars, into ids: inout [Int]) {
        if word.isEmpty { return }
        let key = ExactString(String(scalars: word))
        if ignoreMerges, let id = vocabulary[key] { ids.append(id); return }
        if let hit = cache[key] { for id in hit { ids.append(Int(id)) }; return }
        let symbols = merge(word)
        if cache.count < Self.cacheCapacity { cache[key] = symbols }
        for id in symbols { ids.append(Int(id)) }
    }

    private func merge(_ word: Scalars) -> [Int32] {
        var symbols: [Int32] = []
        symbols.reserveCapacity(word.count)
        var pendingUnknown = false
        for (i, c) in word.enumerated() {
            var s = String(Character(c))
            if i > 0, let p = continuingPrefix { s = p + s }
            if i == word.count - 1, let x = endOfWordSuffix { s += x }
            if let id = vocabulary[ExactString(s)] {
                if pendingUnknown { symbols.append(Int32(unknown!)); pendingUnknown = false }
                symbols.append(Int32(id))
                continue
            }
            if byteFallback, s.utf8.allSatisfy({ byteTokens[Int($0)] != nil }) {
                // A pending unknown is not flushed before the bytes, as in `tokenizers`.
                for b in s.utf8 { symbols.append(Int32(byteTokens[Int(b)]!)) }
                continue
            }
            guard let unknown else { continue }
            if pendingUnknown && !fuseUnknown { symbols.append(Int32(unknown)) }
            pendingUnknown = true
        }
        if pendingUnknown { symbols.append(Int32(unknown!)) }

        // The rank of each adjacent pair, kept up to date as pairs merge.
        let none = Int32.max
        func rank(_ i: Int) -> (Int32, Int32) {
            merges[UInt64(UInt32(bitPattern: symbols[i])) << 32 | UInt64(UInt32(bitPattern: symbols[i + 1]))] ?? (none, 0)
        }
        var ranks: [(Int32, Int32)] = symbols.count > 1 ? (0..<symbols.count - 1).map(rank) : []
        while true {
            var best = -1, bestRank = none
            for i in 0..<ranks.count where ranks[i].0 < bestRank { best = i; bestRank = ranks[i].0 }
            if best < 0 { break }
            symbols[best] = ranks[best].1
            symbols.remove(at: best + 1)
            ranks.remove(at: best)
            if best < ranks.count { ranks[best] = rank(best) }
            if best > 0 { ranks[best - 1] = rank(best - 1) }
        }
        return symbols
    }
}

/// WordPiece as BERT runs it: greedy longest match from the left, continuations prefixed with
/// `##`; a word with any unmatchable rest, or longer than `max_input_chars_per_word`, is one
/// unknown token.
final class WordPiece {
    let vocabulary: [ExactString: Int]
    /// Nil when unk_token is missing from the vocabulary: `tokenizers` fails only on a word that
    /// needs it, which is left out here.
    let unknown: Int?
    let prefix: String
    let maxCharacters: Int

    init(vocabulary: [ExactString: Int], unknown: String, prefix: String, maxCharacters: Int) {
        self.vocabulary = vocabulary
        self.unknown = vocabulary[ExactString(unknown)]
        self.prefix = prefix
        self.maxCharacters = maxCharacters
    }

    static func parse(_ json: JSON, vocabulary: [ExactString: Int]) -> WordPiece {
        WordPiece(vocabulary: vocabulary, unknown: json["unk_token"]?.stringValue ?? "[UNK]",
                      prefix: json["continuing_subword_prefix"]?.stringValue ?? "##",
                      maxCharacters: json["max_input_chars_per_word"]?.intValue ?? 100)
    }

    func tokenize(_ word: Scalars, into ids: inout [Int]) {
        if word.count > maxCharacters { if let unknown { ids.append(unknown) }; return }
        var pieces: [Int] = [], start = 0
        while start < word.count {
            var end = word.count, found: Int? = nil
            while start < end {
                var s = String(scalars: word[start..<end])
                if start > 0 { s = prefix + s }
                if let id = vocabulary[ExactString(s)] { found = id; break }
                end -= 1
            }
            guard let id = found else { if let unknown { ids.append(unknown) }; return }
            pieces.append(id)
            start = end
        }
        ids.append(contentsOf: pieces)
    }
}

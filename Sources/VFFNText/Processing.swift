import VFFNFormats

/// A token the tokenizer recognizes in the text before the model splits it, with the flags of
/// tokenizer.json's `added_tokens`.
public struct AddedToken: Sendable, Equatable {
    public let id: Int
    public let content: String
    public let special: Bool
    /// Matched in the normalized text rather than the input as written.
    public let normalized: Bool
    public let lstrip: Bool
    public let rstrip: Bool
    public let singleWord: Bool

    public init(id: Int, content: String, special: Bool, normalized: Bool, lstrip: Bool = false, rstrip: Bool = false, singleWord: Bool = false) {
        self.id = id
        self.content = content
        self.special = special
        self.normalized = normalized
        self.lstrip = lstrip
        self.rstrip = rstrip
        self.singleWord = singleWord
    }

    init(_ json: JSON, id: Int) {
        self.init(id: id, content: json["content"]?.stringValue ?? "", special: json["special"]?.boolValue ?? false,
                  normalized: json["normalized"]?.boolValue ?? !(json["special"]?.boolValue ?? false),
                  lstrip: json["lstrip"]?.boolValue ?? false, rstrip: json["rstrip"]?.boolValue ?? false,
                  singleWord: json["single_word"]?.boolValue ?? false)
    }
}

/// Finds added tokens as `tokenizers` does: leftmost-longest, non-overlapping matches (its
/// Aho-Corasick automaton), then `single_word` discards a match inside a word and `lstrip`/`rstrip`
/// widen it over the whitespace beside it.
struct AddedTokenMatcher {
    private var children: [[UInt32: Int32]] = [[:]]
    private var terminal: [Int32] = [-1]
    private var first: Set<UInt32> = []
    let tokens: [AddedToken]

    init(_ tokens: [AddedToken], patterns: [Scalars]) {
        self.tokens = tokens
        for (t, pattern) in patterns.enumerated() where !pattern.isEmpty {
            var node = 0
            for c in pattern {
                if let next = children[node][c.value] { node = Int(next); continue }
                children.append([:]); terminal.append(-1)
                children[node][c.value] = Int32(children.count - 1)
                node = children.count - 1
            }
            if terminal[node] < 0 { terminal[node] = Int32(t) }
            first.insert(pattern[0].value)
        }
    }

    var isEmpty: Bool { first.isEmpty }

    /// Splits `s` into pieces: text (nil) and added tokens (their index), covering all of it.
    func split(_ s: Scalars) -> [(Range<Int>, Int?)] {
        if s.isEmpty || first.isEmpty { return [(0..<s.count, nil)] }
        var found: [(Range<Int>, Int)] = []
        var i = 0
        while i < s.count {
            guard first.contains(s[i].value) else { i += 1; continue }
            var node = 0, j = i, best: (Int, Int)? = nil
            while j < s.count, let next = children[node][s[j].value] {
                node = Int(next); j += 1
                if terminal[node] >= 0 { best = (j, Int(terminal[node])) }
            }
            if let (end, t) = best { found.append((i..<end, t)); i = end } else { i += 1 }
        }
        var out: [(Range<Int>, Int?)] = [], startOffset = 0
        for (r, t) in found {
            var start = r.lowerBound, stop = r.upperBound
            let token = tokens[t]
            if token.singleWord {
                let startSpace = start == 0 || !CharacterClass.isWordCharacter(s[start - 1])
                let stopSpace = stop == s.count || !CharacterClass.isWordCharacter(s[stop])
                if !startSpace || !stopSpace { continue }
            }
            if token.lstrip {
                var newStart = start
                while newStart > 0, CharacterClass.isWhitespace(s[newStart - 1]) { newStart -= 1 }
                start = max(newStart, startOffset)
            }
            if token.rstrip {
                while stop < s.count, CharacterClass.isWhitespace(s[stop]) { stop += 1 }
            }
            if startOffset < start { out.append((startOffset..<start, nil)) }
            out.append((start..<stop, t))
            startOffset = stop
        }
        if startOffset != s.count { out.append((startOffset..<s.count, nil)) }
        return out
    }
}

/// What tokenizer.json's post-processor adds around one sequence when special tokens are asked
/// for (TemplateProcessing's `single`, BertProcessing, RobertaProcessing; ByteLevel adds nothing).
struct PostProcessor {
    var prefix: [Int] = []
    var suffix: [Int] = []

    static func parse(_ json: JSON) throws(VFFNError) -> PostProcessor {
        if json.isNull { return PostProcessor() }
        guard let type = json["type"]?.stringValue else { throw .badInput(nil, "post_processor without a type") }
        func pair(_ key: String) throws(VFFNError) -> Int {
            guard let p = json[key]?.arrayValue, p.count == 2, let id = p[1].intValue else {
                throw .badInput(nil, "\(type) post-processor has no [token, id] \(key)")
            }
            return id
        }
        switch type {
        case "ByteLevel": return PostProcessor()
        case "BertProcessing", "RobertaProcessing":
            return PostProcessor(prefix: [try pair("cls")], suffix: [try pair("sep")])
        case "TemplateProcessing":
            var p = PostProcessor(), seenSequence = false
            for item in json["single"]?.arrayValue ?? [] {
                if item["Sequence"] != nil { seenSequence = true; continue }
                guard let name = item["SpecialToken"]?["id"]?.stringValue else {
                    throw .badInput(nil, "TemplateProcessing item is neither Sequence nor SpecialToken")
                }
                guard let ids = json["special_tokens"]?[name]?["ids"]?.arrayValue?.compactMap(\.intValue) else {
                    throw .badInput(nil, "TemplateProcessing names special token \"\(name)\" without ids")
                }
                if seenSequence { p.suffix += ids } else { p.prefix += ids }
            }
            return p
        case "Sequence":
            var p = PostProcessor()
            for part in json["processors"]?.arrayValue ?? [] {
                let q = try parse(part)
                p.prefix = q.prefix + p.prefix
                p.suffix += q.suffix
            }
            return p
        default:
            throw .badInput(nil, "post-processor \(type) is not supported (supported: TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel, Sequence)")
        }
    }
}

/// A Hugging Face decoder: turns tokens back into text.
indirect enum TokenDecoder {
    case byteLevel
    case metaspace(replacement: Unicode.Scalar, prepend: PrependScheme)
    case wordPiece(prefix: String, cleanup: Bool)
    case replace(TextPattern, Scalars)
    case byteFallback
    case fuse
    case strip(content: Unicode.Scalar, start: Int, stop: Int)
    case bpe(suffix: String)
    case sequence([TokenDecoder])

    static func parse(_ json: JSON) throws(VFFNError) -> TokenDecoder? {
        if json.isNull { return nil }
        guard let type = json["type"]?.stringValue else { throw .badInput(nil, "decoder without a type") }
        switch type {
        case "ByteLevel": return .byteLevel
        case "Metaspace":
            let (replacement, scheme) = try PrependScheme.metaspace(json)
            return .metaspace(replacement: replacement, prepend: scheme)
        case "WordPiece": return .wordPiece(prefix: json["prefix"]?.stringValue ?? "##", cleanup: json["cleanup"]?.boolValue ?? true)
        case "Replace":
            return .replace(try TextPattern.parse(json["pattern"], what: "the Replace decoder"), Array((json["content"]?.stringValue ?? "").unicodeScalars))
        case "ByteFallback": return .byteFallback
        case "Fuse": return .fuse
        case "Strip":
            return .strip(content: json["content"]?.stringValue?.unicodeScalars.first ?? " ",
                          start: json["start"]?.intValue ?? 0, stop: json["stop"]?.intValue ?? 0)
        case "BPEDecoder": return .bpe(suffix: json["suffix"]?.stringValue ?? "</w>")
        case "Sequence":
            var parts: [TokenDecoder] = []
            for d in json["decoders"]?.arrayValue ?? [] { if let x = try parse(d) { parts.append(x) } }
            return .sequence(parts)
        default:
            throw .badInput(nil, "decoder \(type) is not supported (supported: ByteLevel, Metaspace, WordPiece, Replace, ByteFallback, Fuse, Strip, BPEDecoder, Sequence)")
        }
    }

    func decodeChain(_ tokens: [String]) -> [String] {
        switch self {
        case .byteLevel:
            var bytes: [UInt8] = []
            for t in tokens {
                let mapped = t.unicodeScalars.map { ByteLevel.scalarToByte[$0.value] }
                if mapped.allSatisfy({ $0 != nil }) { bytes += mapped.map { $0! } } else { bytes += Array(t.utf8) }
            }
            return [String(decoding: bytes, as: UTF8.self)]
        case let .metaspace(replacement, prepend):
            return tokens.enumerated().map { i, t in
                String(scalars: t.unicodeScalars.compactMap { c -> Unicode.Scalar? in
                    c != replacement ? c : (i == 0 && prepend != .never ? nil : " ")
                })
            }
        case let .wordPiece(prefix, cleanup):
            return tokens.enumerated().map { i, t in
                var s = t
                if i != 0 { s = s.utf8.starts(with: prefix.utf8) ? String(decoding: s.utf8.dropFirst(prefix.utf8.count), as: UTF8.self) : " " + s }
                return cleanup ? Self.cleanup(s) : s
            }
        case let .replace(pattern, content):
            return tokens.map { t in String(scalars: Normalizer.replace(pattern, content).apply(Array(t.unicodeScalars))) }
        case .byteFallback:
            var out: [String] = [], pending: [UInt8] = []
            func flush() {
                if pending.isEmpty { return }
                if let s = String(validating: pending, as: UTF8.self) { out.append(s) } else { out += Array(repeating: "\u{FFFD}", count: pending.count) }
                pending.removeAll()
            }
            for t in tokens {
                let u = Array(t.utf8)
                if u.count == 6, u.starts(with: Array("<0x".utf8)), u[5] == UInt8(ascii: ">"), let b = UInt8(String(decoding: u[3..<5], as: UTF8.self), radix: 16) {
                    pending.append(b)
                } else {
                    flush()
                    out.append(t)
                }
            }
            flush()
            return out
        case .fuse:
            return [tokens.joined()]
        case let .strip(content, start, stop):
            return tokens.map { t in
                let c = Array(t.unicodeScalars)
                var lo = 0, hi = c.count
                for i in 0..<min(start, c.count) { if c[i] == content { lo = i + 1 } else { break } }
                for i in 0..<min(stop, c.count) {
                    let index = c.count - i - 1
                    if c[index] == content { hi = index } else { break }
                }
                return lo < hi ? String(scalars: c[lo..<hi]) : ""
            }
        case let .bpe(suffix):
            return tokens.enumerated().map { i, t in
                Self.replacing(t, suffix, i == tokens.count - 1 ? "" : " ")
            }
        case let .sequence(parts):
            return parts.reduce(tokens) { $1.decodeChain($0) }
        }
    }

    private static func cleanup(_ s: String) -> String {
        var s = s
        for (a, b) in [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                       (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")] {
            s = replacing(s, a, b)
        }
        return s
    }

    /// Literal, scalar by scalar, as Rust's `str::replace` (Foundation's would compare graphemes).
    private static func replacing(_ s: String, _ a: String, _ b: String) -> String {
        String(scalars: Normalizer.replace(.literal(Array(a.unicodeScalars)), Array(b.unicodeScalars)).apply(Array(s.unicodeScalars)))
    }
}

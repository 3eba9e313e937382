import VFFNFormats

/// A stretch of the input on its way to the model: text not yet tokenized, or an added token
/// already recognized. `atOrigin` says it begins at the very start of the input, which
/// Metaspace's `prepend_scheme: first` asks.
struct Piece {
    var text: Scalars
    var atOrigin: Bool
    var token: Int? = nil
}

/// How a split treats what the pattern matched (`SplitDelimiterBehavior` in `tokenizers`).
enum SplitBehavior: String {
    case removed = "Removed", isolated = "Isolated", mergedWithPrevious = "MergedWithPrevious"
    case mergedWithNext = "MergedWithNext", contiguous = "Contiguous"

    static func parse(_ json: JSON?, default d: SplitBehavior) throws(VFFNError) -> SplitBehavior {
        guard let s = json?.stringValue else { return d }
        guard let b = SplitBehavior(rawValue: s) else { throw .badInput(nil, "split behavior \"\(s)\" is unknown") }
        return b
    }

    /// The pieces to keep, from the (range, is-match) cover of a string.
    func apply(_ cover: [(Range<Int>, Bool)]) -> [Range<Int>] {
        var out: [Range<Int>] = []
        switch self {
        case .isolated: out = cover.map(\.0)
        case .removed: out = cover.filter { !$0.1 }.map(\.0)
        case .contiguous:
            var previous = false
            for (r, m) in cover {
                if m == previous, let last = out.last { out[out.count - 1] = last.lowerBound..<r.upperBound } else { out.append(r) }
                previous = m
            }
        case .mergedWithPrevious:
            var previous = false
            for (r, m) in cover {
                if m && !previous, let last = out.last { out[out.count - 1] = last.lowerBound..<r.upperBound } else { out.append(r) }
                previous = m
            }
        case .mergedWithNext:
            var previous = false
            for (r, m) in cover.reversed() {
                if m && !previous, let last = out.last { out[out.count - 1] = r.lowerBound..<last.upperBound } else { out.append(r) }
                previous = m
            }
            out.reverse()
        }
        return out.filter { !$0.isEmpty }
    }
}

enum PrependScheme: String {
    case always, first, never

    /// Metaspace's replacement character and scheme, as its pre-tokenizer and decoder both spell
    /// them (`add_prefix_space: false` is the format before `prepend_scheme`).
    static func metaspace(_ json: JSON) throws(VFFNError) -> (Unicode.Scalar, PrependScheme) {
        let r = json["replacement"]?.stringValue ?? "\u{2581}"
        guard r.unicodeScalars.count == 1, let replacement = r.unicodeScalars.first else {
            throw .badInput(nil, "Metaspace replacement \"\(r)\" is not one character")
        }
        if let s = json["prepend_scheme"]?.stringValue {
            guard let p = PrependScheme(rawValue: s) else { throw .badInput(nil, "Metaspace prepend_scheme \"\(s)\" is unknown") }
            return (replacement, p)
        }
        return (replacement, json["add_prefix_space"]?.boolValue == false ? .never : .always)
    }
}

/// A Hugging Face pre-tokenizer: splits each piece into the words the model sees.
indirect enum PreTokenizer {
    case byteLevel(addPrefixSpace: Bool, useRegex: Bool)
    case split(TextPattern, SplitBehavior, invert: Bool)
    case metaspace(replacement: Unicode.Scalar, prepend: PrependScheme, split: Bool)
    case digits(individual: Bool)
    case bert
    case whitespace
    case whitespaceSplit
    case punctuation(SplitBehavior)
    case characterDelimiter(Unicode.Scalar)
    case sequence([PreTokenizer])

    static func parse(_ json: JSON) throws(VFFNError) -> PreTokenizer? {
        if json.isNull { return nil }
        guard let type = json["type"]?.stringValue else { throw .badInput(nil, "pre_tokenizer without a type") }
        switch type {
        case "ByteLevel":
            return .byteLevel(addPrefixSpace: json["add_prefix_space"]?.boolValue ?? true, useRegex: json["use_regex"]?.boolValue ?? true)
        case "Split":
            return .split(try TextPattern.parse(json["pattern"], what: "the Split pre-tokenizer"),
                          try SplitBehavior.parse(json["behavior"], default: .isolated), invert: json["invert"]?.boolValue ?? false)
        case "Metaspace":
            let (replacement, scheme) = try PrependScheme.metaspace(json)
            return .metaspace(replacement: replacement, prepend: scheme, split: json["split"]?.boolValue ?? true)
        case "Digits": return .digits(individual: json["individual_digits"]?.boolValue ?? false)
        case "BertPreTokenizer": return .bert
        case "Whitespace": return .whitespace
        case "WhitespaceSplit": return .whitespaceSplit
        case "Punctuation": return .punctuation(try SplitBehavior.parse(json["behavior"], default: .isolated))
        case "CharDelimiterSplit":
            guard let d = json["delimiter"]?.stringValue, d.unicodeScalars.count == 1 else { throw .badInput(nil, "CharDelimiterSplit needs a one-character delimiter") }
            return .characterDelimiter(d.unicodeScalars.first!)
        case "Sequence":
            var parts: [PreTokenizer] = []
            for p in json["pretokenizers"]?.arrayValue ?? [] { if let x = try parse(p) { parts.append(x) } }
            return .sequence(parts)
        default:
            throw .badInput(nil, "pre-tokenizer \(type) is not supported (supported: ByteLevel, Split, Metaspace, Digits, BertPreTokenizer, Whitespace, WhitespaceSplit, Punctuation, CharDelimiterSplit, Sequence)")
        }
    }

    func apply(_ pieces: [Piece]) -> [Piece] {
        if case let .sequence(parts) = self { return parts.reduce(pieces) { $1.apply($0) } }
        var out: [Piece] = []
        out.reserveCapacity(pieces.count * 4)
        for piece in pieces {
            if piece.token != nil { out.append(piece); continue }
            split(piece, into: &out)
        }
        return out
    }

    private static func emit(_ piece: Piece, _ ranges: [Range<Int>], into out: inout [Piece]) {
        for r in ranges where !r.isEmpty {
            out.append(Piece(text: Array(piece.text[r]), atOrigin: piece.atOrigin && r.lowerBound == 0))
        }
    }

    /// Every scalar the predicate accepts is a match of its own, as a `Fn(char) -> bool` pattern.
    private static func cover(_ s: Scalars, _ predicate: (Unicode.Scalar) -> Bool) -> [(Range<Int>, Bool)] {
        if s.isEmpty { return [(0..<0, false)] }
        var out: [(Range<Int>, Bool)] = [], last = 0
        for (i, c) in s.enumerated() where predicate(c) {
            if last < i { out.append((last..<i, false)) }
            out.append((i..<i + 1, true))
            last = i + 1
        }
        if last < s.count { out.append((last..<s.count, false)) }
        return out
    }

    private func split(_ piece: Piece, into out: inout [Piece]) {
        switch self {
        case let .byteLevel(addPrefixSpace, useRegex):
            var p = piece
            if addPrefixSpace, p.text.first != " " { p.text.insert(" ", at: 0) }
            if p.text.isEmpty { return }
            let ranges = useRegex ? RegexScanner(.gpt2).split(p.text[...]) : [0..<p.text.count]
            for r in ranges where !r.isEmpty {
                out.append(Piece(text: ByteLevel.encode(p.text[r]), atOrigin: p.atOrigin && r.lowerBound == 0))
            }
        case let .split(pattern, behavior, invert):
            var c = pattern.cover(piece.text[...])
            if invert { c = c.map { ($0.0, !$0.1) } }
            Self.emit(piece, behavior.apply(c), into: &out)
        case let .metaspace(replacement, prepend, split):
            var p = piece
            p.text = p.text.map { $0 == " " ? replacement : $0 }
            if p.text.first != replacement, prepend == .always || (prepend == .first && p.atOrigin) {
                p.text.insert(replacement, at: 0)
            }
            if split {
                Self.emit(p, SplitBehavior.mergedWithNext.apply(Self.cover(p.text) { $0 == replacement }), into: &out)
            } else if !p.text.isEmpty {
                out.append(p)
            }
        case let .digits(individual):
            let c = Self.cover(piece.text, CharacterClass.isNumber)
            Self.emit(piece, (individual ? SplitBehavior.isolated : .contiguous).apply(c), into: &out)
        case .bert:
            var words: [Piece] = []
            Self.emit(piece, SplitBehavior.removed.apply(Self.cover(piece.text, CharacterClass.isWhitespace)), into: &words)
            for w in words {
                Self.emit(w, SplitBehavior.isolated.apply(Self.cover(w.text, CharacterClass.isBertPunctuation)), into: &out)
            }
        case .whitespace:
            // \w+|[^\w\s]+, keeping the matches and dropping the rest.
            var ranges: [Range<Int>] = [], i = 0
            let s = piece.text
            while i < s.count {
                let c = s[i]
                if CharacterClass.isWordCharacter(c) {
                    var j = i + 1
                    while j < s.count, CharacterClass.isWordCharacter(s[j]) { j += 1 }
                    ranges.append(i..<j); i = j
                } else if !CharacterClass.isWhitespace(c) {
                    var j = i + 1
                    while j < s.count, !CharacterClass.isWordCharacter(s[j]), !CharacterClass.isWhitespace(s[j]) { j += 1 }
                    ranges.append(i..<j); i = j
                } else { i += 1 }
            }
            Self.emit(piece, ranges, into: &out)
        case .whitespaceSplit:
            Self.emit(piece, SplitBehavior.removed.apply(Self.cover(piece.text, CharacterClass.isWhitespace)), into: &out)
        case let .punctuation(behavior):
            Self.emit(piece, behavior.apply(Self.cover(piece.text, CharacterClass.isBertPunctuation)), into: &out)
        case let .characterDelimiter(d):
            Self.emit(piece, SplitBehavior.removed.apply(Self.cover(piece.text) { $0 == d }), into: &out)
        case .sequence:
            out.append(contentsOf: apply([piece]))
        }
    }
}

/// GPT-2's reversible map from bytes to printable characters: the printable Latin-1 bytes stand
/// for themselves, the other 68 for U+0100 onwards, in byte order.
enum ByteLevel {
    static let byteToScalar: [Unicode.Scalar] = {
        var table = [Unicode.Scalar](repeating: " ", count: 256)
        var next: UInt32 = 256
        for b in 0..<256 {
            if (33...126).contains(b) || (161...172).contains(b) || (174...255).contains(b) {
                table[b] = Unicode.Scalar(UInt32(b))!
            } else {
                table[b] = Unicode.Scalar(next)!
                next += 1
            }
        }
        return table
    }()

    static let scalarToByte: [UInt32: UInt8] = {
        var map: [UInt32: UInt8] = [:]
        for (b, s) in byteToScalar.enumerated() { map[s.value] = UInt8(b) }
        return map
    }()

    static func encode(_ s: ArraySlice<Unicode.Scalar>) -> Scalars {
        var out = Scalars()
        out.reserveCapacity(s.count)
        for c in s {
            if c.value < 0x80 {
                out.append(byteToScalar[Int(c.value)])
            } else {
                UTF8.encode(c) { out.append(byteToScalar[Int($0)]) }
            }
        }
        return out
    }
}

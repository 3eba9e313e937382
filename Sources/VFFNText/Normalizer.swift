import Foundation
import VFFNFormats

typealias Scalars = [Unicode.Scalar]

/// What a Split pre-tokenizer or a Replace normalizer looks for: `{"String": s}` is literal,
/// `{"Regex": r}` is an Oniguruma regex in `tokenizers`. The Split regexes of the GPT-2 and
/// cl100k families are scanned by hand (`RegexScanner`), which the tests prove equal to the regex
/// on the corpus; any other regex runs on Swift's engine with code-point semantics, as Oniguruma's.
enum TextPattern {
    case literal(Scalars)
    case scanner(RegexScanner)
    case regex(Regex<AnyRegexOutput>, source: String)

    static func parse(_ json: JSON?, what: String) throws(VFFNError) -> TextPattern {
        if let s = json?["String"]?.stringValue { return .literal(Array(s.unicodeScalars)) }
        guard let r = json?["Regex"]?.stringValue else { throw .badInput(nil, "\(what) has a pattern that is neither String nor Regex") }
        return try regex(r, what: what)
    }

    static func regex(_ source: String, what: String) throws(VFFNError) -> TextPattern {
        if let scanner = RegexScanner(pattern: source) { return .scanner(scanner) }
        do {
            return .regex(try Regex(source).matchingSemantics(.unicodeScalar), source: source)
        } catch {
            throw .badInput(nil, "\(what) has a regex this tokenizer cannot compile: \(source)")
        }
    }

    /// The non-overlapping matches, left to right, as scalar ranges (empty ones included, as
    /// Oniguruma reports them; the callers drop empty pieces as `tokenizers` does).
    func matches(in s: ArraySlice<Unicode.Scalar>) -> [Range<Int>] {
        let base = s.startIndex
        switch self {
        case let .literal(p):
            guard !p.isEmpty, s.count >= p.count else { return [] }
            var out: [Range<Int>] = [], i = base
            while i + p.count <= s.endIndex {
                if s[i] == p[0], s[i..<i + p.count].elementsEqual(p) {
                    out.append(i - base..<i - base + p.count)
                    i += p.count
                } else { i += 1 }
            }
            return out
        case let .scanner(scanner):
            return scanner.split(s)
        case let .regex(re, _):
            var text = String.UnicodeScalarView()
            text.append(contentsOf: s)
            let string = String(text)
            var out: [Range<Int>] = []
            var offset = 0, index = string.unicodeScalars.startIndex
            for m in string.matches(of: re) {
                offset += string.unicodeScalars.distance(from: index, to: m.range.lowerBound)
                let length = string.unicodeScalars.distance(from: m.range.lowerBound, to: m.range.upperBound)
                out.append(offset..<offset + length)
                offset += length
                index = m.range.upperBound
            }
            return out
        }
    }

    /// The whole string as alternating (range, is-match) pieces, as `tokenizers`' Pattern gives.
    func cover(_ s: ArraySlice<Unicode.Scalar>) -> [(Range<Int>, Bool)] {
        var out: [(Range<Int>, Bool)] = [], previous = 0
        if s.isEmpty { return [(0..<0, false)] }
        for m in matches(in: s) {
            if previous != m.lowerBound { out.append((previous..<m.lowerBound, false)) }
            out.append((m, true))
            previous = m.upperBound
        }
        if previous != s.count { out.append((previous..<s.count, false)) }
        return out
    }
}

/// A Hugging Face normalizer: rewrites each piece of text between added tokens before it is
/// split. Unicode normalization forms come from Foundation; case mapping is per scalar, as
/// Rust's `char::to_lowercase` (no final-sigma rule).
indirect enum Normalizer {
    case nfc, nfd, nfkc, nfkd, lowercase, stripAccents
    case bert(cleanText: Bool, chineseCharacters: Bool, stripAccents: Bool, lowercase: Bool)
    case prepend(Scalars)
    case replace(TextPattern, Scalars)
    case strip(left: Bool, right: Bool)
    case byteLevel
    case sequence([Normalizer])

    static func parse(_ json: JSON) throws(VFFNError) -> Normalizer? {
        if json.isNull { return nil }
        guard let type = json["type"]?.stringValue else { throw .badInput(nil, "normalizer without a type") }
        switch type {
        case "NFC": return .nfc
        case "NFD": return .nfd
        case "NFKC": return .nfkc
        case "NFKD": return .nfkd
        case "Lowercase": return .lowercase
        case "StripAccents": return .stripAccents
        case "BertNormalizer":
            let lowercase = json["lowercase"]?.boolValue ?? true
            let strip = json["strip_accents"].flatMap { $0.isNull ? nil : $0.boolValue } ?? lowercase
            return .bert(cleanText: json["clean_text"]?.boolValue ?? true,
                         chineseCharacters: json["handle_chinese_chars"]?.boolValue ?? true,
                         stripAccents: strip, lowercase: lowercase)
        case "Prepend":
            return .prepend(Array((json["prepend"]?.stringValue ?? "").unicodeScalars))
        case "Replace":
            return .replace(try TextPattern.parse(json["pattern"], what: "the Replace normalizer"),
                            Array((json["content"]?.stringValue ?? "").unicodeScalars))
        case "Strip":
            return .strip(left: json["strip_left"]?.boolValue ?? false, right: json["strip_right"]?.boolValue ?? false)
        case "ByteLevel": return .byteLevel
        case "Sequence":
            var parts: [Normalizer] = []
            for n in json["normalizers"]?.arrayValue ?? [] { if let p = try parse(n) { parts.append(p) } }
            return .sequence(parts)
        default:
            throw .badInput(nil, "normalizer \(type) is not supported (supported: NFC, NFD, NFKC, NFKD, Lowercase, StripAccents, BertNormalizer, Prepend, Replace, Strip, ByteLevel, Sequence)")
        }
    }

    func apply(_ s: Scalars) -> Scalars {
        switch self {
        case .nfc: return Self.foundation(s) { $0.precomposedStringWithCanonicalMapping }
        case .nfd: return Self.foundation(s) { $0.decomposedStringWithCanonicalMapping }
        case .nfkc: return Self.foundation(s) { $0.precomposedStringWithCompatibilityMapping }
        case .nfkd: return Self.foundation(s) { $0.decomposedStringWithCompatibilityMapping }
        case .lowercase: return Self.lowercased(s)
        case .stripAccents: return s.filter { !CharacterClass.isCombiningMark($0) }
        case let .bert(clean, chinese, strip, lower):
            var out = s
            if clean {
                out = out.compactMap { c in
                    if c.value == 0 || c.value == 0xFFFD || CharacterClass.isBertControl(c) { return nil }
                    return c == "\t" || c == "\n" || c == "\r" || CharacterClass.isWhitespace(c) ? " " : c
                }
            }
            if chinese, out.contains(where: CharacterClass.isChineseCharacter) {
                out = out.flatMap { c in CharacterClass.isChineseCharacter(c) ? [" ", c, " "] : [c] }
            }
            if strip { out = Normalizer.nfd.apply(out).filter { !CharacterClass.isNonspacingMark($0) } }
            if lower { out = Self.lowercased(out) }
            return out
        case let .prepend(p): return s.isEmpty ? s : p + s
        case let .replace(pattern, content):
            let found = pattern.matches(in: s[...])
            if found.isEmpty { return s }
            var out = Scalars(), previous = 0
            for m in found {
                out.append(contentsOf: s[previous..<m.lowerBound])
                out.append(contentsOf: content)
                previous = m.upperBound
            }
            out.append(contentsOf: s[previous...])
            return out
        case let .strip(left, right):
            var lo = 0, hi = s.count
            if left { while lo < hi, CharacterClass.isWhitespace(s[lo]) { lo += 1 } }
            if right { while hi > lo, CharacterClass.isWhitespace(s[hi - 1]) { hi -= 1 } }
            return Array(s[lo..<hi])
        case .byteLevel: return ByteLevel.encode(s[...])
        case let .sequence(parts):
            return parts.reduce(s) { $1.apply($0) }
        }
    }

    /// A normalization form by Foundation, with the scalars that `tokenizers`' tables predate
    /// (assigned after Unicode 9.0) left as they are: there they have no decomposition and
    /// combining class 0, so they also block composition and reordering across them.
    private static func foundation(_ s: Scalars, _ form: (String) -> String) -> Scalars {
        if s.allSatisfy({ $0.value < 0x80 }) { return s }
        var out = Scalars(), run = Scalars()
        func flush() {
            if run.isEmpty { return }
            out.append(contentsOf: form(String(scalars: run)).unicodeScalars)
            run.removeAll(keepingCapacity: true)
        }
        for c in s {
            if c.value >= 0x80, c.properties.age != nil, !CharacterClass.assigned(c, by: CharacterClass.normalizationVersion) {
                flush()
                out.append(c)
            } else {
                run.append(c)
            }
        }
        flush()
        return out
    }

    private static func lowercased(_ s: Scalars) -> Scalars {
        var out = Scalars()
        out.reserveCapacity(s.count)
        for c in s {
            if c.value < 0x80 {
                out.append(c.value >= 65 && c.value <= 90 ? Unicode.Scalar(c.value + 32)! : c)
            } else if c.properties.changesWhenLowercased, CharacterClass.assigned(c, by: CharacterClass.onigurumaVersion) {
                out.append(contentsOf: c.properties.lowercaseMapping.unicodeScalars)
            } else {
                out.append(c)
            }
        }
        return out
    }
}

/// Hand-written matchers for the Split regexes nearly every byte-level BPE tokenizer uses. A
/// backtracking regex engine spends most of a tokenizer's time on them; these give the same
/// leftmost-first matches in one pass (`RegexScannerTests` holds them to Swift's regex engine on
/// the corpus). Each alternative is tried in the regex's order, as the engine would.
struct RegexScanner: Sendable {
    enum Family: Sendable {
        /// GPT-2's `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`, which the
        /// ByteLevel pre-tokenizer applies when `use_regex` is set.
        case gpt2
        /// cl100k's, as Llama 3, OLMo 2 and Phi-4 write it (digits in runs of up to three), and
        /// Qwen2's (one digit at a time).
        case cl100k(maxDigits: Int)
    }

    static let gpt2Pattern = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#
    static let cl100kPattern = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let qwen2Pattern = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    let family: Family

    init(_ family: Family) { self.family = family }

    init?(pattern: String) {
        switch pattern {
        case Self.gpt2Pattern: family = .gpt2
        case Self.cl100kPattern: family = .cl100k(maxDigits: 3)
        case Self.qwen2Pattern: family = .cl100k(maxDigits: 1)
        default: return nil
        }
    }

    var pattern: String {
        switch family {
        case .gpt2: return Self.gpt2Pattern
        case .cl100k(3): return Self.cl100kPattern
        case .cl100k: return Self.qwen2Pattern
        }
    }

    /// The matches, as ranges relative to the slice's start. They tile the whole slice, since
    /// some alternative matches at every position.
    func split(_ text: ArraySlice<Unicode.Scalar>) -> [Range<Int>] {
        text.withContiguousStorageIfAvailable { scan($0) } ?? Array(text).withUnsafeBufferPointer { scan($0) }
    }

    private func scan(_ s: UnsafeBufferPointer<Unicode.Scalar>) -> [Range<Int>] {
        var out: [Range<Int>] = []
        out.reserveCapacity(s.count / 4 + 1)
        var pos = 0
        let n = s.count
        while pos < n {
            let end: Int
            switch family {
            case .gpt2: end = gpt2Match(s, pos, n)
            case let .cl100k(maxDigits): end = cl100kMatch(s, pos, n, maxDigits)
            }
            out.append(pos..<end)
            pos = end
        }
        return out
    }

    @inline(__always) private static func isOther(_ c: Unicode.Scalar) -> Bool {
        !CharacterClass.isWhitespace(c) && !CharacterClass.isLetter(c) && !CharacterClass.isNumber(c)
    }

    /// The contraction alternatives: the match's length, or 0.
    @inline(__always) private static func contraction(_ s: UnsafeBufferPointer<Unicode.Scalar>, _ pos: Int, _ n: Int, ignoringCase: Bool) -> Int {
        guard s[pos] == "'", pos + 1 < n else { return 0 }
        func fold(_ c: Unicode.Scalar) -> Unicode.Scalar {
            guard ignoringCase else { return c }
            if c.value >= 65 && c.value <= 90 { return Unicode.Scalar(c.value + 32)! }
            return c == "\u{17F}" ? "s" : c   // LATIN SMALL LETTER LONG S case-folds to s
        }
        let a = fold(s[pos + 1])
        if a == "s" || a == "t" || a == "m" || a == "d" { return 2 }
        guard pos + 2 < n else { return 0 }
        let b = fold(s[pos + 2])
        if (a == "r" && b == "e") || (a == "v" && b == "e") || (a == "l" && b == "l") { return 3 }
        return 0
    }

    /// `\s+(?!\S)|\s+` at a whitespace scalar: a run followed by a non-space leaves its last
    /// scalar to the next match, unless the run is that one scalar.
    @inline(__always) private static func whitespaceRun(_ s: UnsafeBufferPointer<Unicode.Scalar>, _ pos: Int, _ n: Int) -> Int {
        var q = pos
        while q < n, CharacterClass.isWhitespace(s[q]) { q += 1 }
        return q < n && q - pos > 1 ? q - 1 : q
    }

    private func gpt2Match(_ s: UnsafeBufferPointer<Unicode.Scalar>, _ pos: Int, _ n: Int) -> Int {
        let k = Self.contraction(s, pos, n, ignoringCase: false)
        if k > 0 { return pos + k }
        let afterSpace = s[pos] == " " && pos + 1 < n ? pos + 1 : pos
        let c = s[afterSpace]
        if CharacterClass.isLetter(c) {
            var q = afterSpace + 1
            while q < n, CharacterClass.isLetter(s[q]) { q += 1 }
            return q
        }
        if CharacterClass.isNumber(c) {
            var q = afterSpace + 1
            while q < n, CharacterClass.isNumber(s[q]) { q += 1 }
            return q
        }
        if Self.isOther(c) {
            var q = afterSpace + 1
            while q < n, Self.isOther(s[q]) { q += 1 }
            return q
        }
        return Self.whitespaceRun(s, pos, n)
    }

    private func cl100kMatch(_ s: UnsafeBufferPointer<Unicode.Scalar>, _ pos: Int, _ n: Int, _ maxDigits: Int) -> Int {
        let k = Self.contraction(s, pos, n, ignoringCase: true)
        if k > 0 { return pos + k }
        let c = s[pos]
        // [^\r\n\p{L}\p{N}]?\p{L}+
        var letters = -1
        if CharacterClass.isLetter(c) {
            letters = pos
        } else if c != "\r", c != "\n", !CharacterClass.isNumber(c), pos + 1 < n, CharacterClass.isLetter(s[pos + 1]) {
            letters = pos + 1
        }
        if letters >= 0 {
            var q = letters + 1
            while q < n, CharacterClass.isLetter(s[q]) { q += 1 }
            return q
        }
        // \p{N}{1,maxDigits}
        if CharacterClass.isNumber(c) {
            var q = pos + 1
            while q < n, q - pos < maxDigits, CharacterClass.isNumber(s[q]) { q += 1 }
            return q
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        let afterSpace = c == " " && pos + 1 < n ? pos + 1 : pos
        if Self.isOther(s[afterSpace]) {
            var q = afterSpace + 1
            while q < n, Self.isOther(s[q]) { q += 1 }
            while q < n, s[q] == "\r" || s[q] == "\n" { q += 1 }
            return q
        }
        // \s*[\r\n]+ : up to the run's last line break
        var q = pos, lastBreak = -1
        while q < n, CharacterClass.isWhitespace(s[q]) {
            if s[q] == "\r" || s[q] == "\n" { lastBreak = q }
            q += 1
        }
        if lastBreak >= 0 { return lastBreak + 1 }
        return Self.whitespaceRun(s, pos, n)
    }
}

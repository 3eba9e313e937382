import Foundation
import Testing
import TestSupport
@testable import VFFNText

/// The hand-written scanners against Swift's regex engine running the pattern they stand for,
/// on every corpus line and on strings built to hit each alternative's edges.
@Suite struct RegexScannerTests {
    static let edges = [
        "", " ", "  ", "a", " a", "  a", "\n", "\n\n", " \n ", "\t\tx", "x  ", "x \n\ny", "  \r\n  z", "'s", "'S", "'ll'", "'ſ",
        "it's", "IT'S", "we'LL", "'re'vee", "' s", "a'", "''", "12345678", " 1234", "x1y22z333", "١٢٣٤", "½⅓", "$$$ !!", " !!\n\n",
        "a\u{300}b", "😀😀 😀", "👨‍👩‍👧", "\u{A0}x", "x\u{3000}y", "\u{2028}", "\r\r\nx", "\u{85}", "\u{FEFF}a", "\u{1F1FA}\u{1F1F8}",
        "\u{11F5B}", // a Unicode 17 letter: not \p{L} to Oniguruma, which knows Unicode 16
    ]

    @Test(arguments: [RegexScanner.gpt2Pattern, RegexScanner.cl100kPattern, RegexScanner.qwen2Pattern])
    func scannerMatchesTheRegex(_ pattern: String) throws {
        let scanner = try #require(RegexScanner(pattern: pattern))
        let regex = try Regex(pattern).matchingSemantics(.unicodeScalar)
        var checked = 0, bad: [String] = []
        for line in try corpusLines() + Self.edges {
            let scalars = Array(line.unicodeScalars)
            let got = scanner.split(scalars[...])
            // The engine knows Unicode 17; the scanner, as Oniguruma, 16: compare where they agree.
            if scalars.contains(where: { $0.properties.age.map { $0.major >= 17 } ?? false }) { continue }
            let want = TextPattern.regex(regex, source: pattern).matches(in: scalars[...])
            if got != want { bad.append("\(String(reflecting: line).prefix(80)): \(got.prefix(8)) vs \(want.prefix(8))") }
            checked += 1
        }
        #expect(checked > 600)
        #expect(bad.isEmpty, "\(bad.count) lines differ:\n\(bad.prefix(5).joined(separator: "\n"))")
    }

    @Test func unknownPatternsRunOnTheRegexEngine() throws {
        guard case .regex = try TextPattern.regex(#"\p{N}{1,5}|[a-z]+"#, what: "test") else { Issue.record("not a regex"); return }
        guard case .scanner = try TextPattern.regex(RegexScanner.cl100kPattern, what: "test") else { Issue.record("not scanned"); return }
        let p = try TextPattern.regex(#"\p{N}{1,5}|[a-z]+"#, what: "test")
        #expect(p.matches(in: Array("ab1234567 é".unicodeScalars)[...]) == [0..<2, 2..<7, 7..<9])
    }
}

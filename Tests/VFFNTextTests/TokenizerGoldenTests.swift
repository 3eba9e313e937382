import Foundation
import Testing
import TestSupport
import VFFNFormats
@testable import VFFNText

/// The corpus, split at `\n` only (a `\r`, form feed or U+2028 stays inside its line), without
/// the empty piece after the final newline.
func corpusLines() throws -> [String] {
    let data = try #require(FileManager.default.contents(atPath: Fixtures.path("tokenizers/corpus.txt")))
    var lines = data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
    if lines.last == "" { lines.removeLast() }
    return lines
}

struct Golden {
    let withSpecial: [[Int]]
    let withoutSpecial: [[Int]]
    let decoded: [String]
    let decodedSkip: [String]

    init(_ path: String) throws {
        let json = try JSON.parse(try #require(FileManager.default.contents(atPath: path)))
        func ids(_ key: String) throws -> [[Int]] { try #require(json[key]?.arrayValue).map { ($0.arrayValue ?? []).compactMap(\.intValue) } }
        func texts(_ key: String) -> [String] { json[key]?.arrayValue?.compactMap(\.stringValue) ?? [] }
        withSpecial = try ids("with_special")
        withoutSpecial = try ids("without_special")
        decoded = texts("decoded")
        decodedSkip = texts("decoded_skip")
    }
}

/// The first few lines where `got` and `want` differ, for a failure message that shows them.
func differences(_ lines: [String], _ got: [[Int]], _ want: [[Int]], limit: Int = 3) -> [String] {
    var out: [String] = []
    for i in want.indices where got[i] != want[i] {
        out.append("line \(i + 1) \(String(reflecting: lines[i]).prefix(120)): got \(got[i].prefix(40)) want \(want[i].prefix(40))")
        if out.count == limit { break }
    }
    return out
}

@Suite struct TokenizerGoldenTests {
    static let configurations = ["gpt2", "llama3", "qwen2", "olmo2", "smollm", "starcoder2", "phi3", "phi4", "llama2", "mistral",
                                 "gemma", "bert", "bert-cased", "roberta", "normalizers", "nfkd-metaspace",
                                 "o200k", "deepseek", "clip"]

    @Test(arguments: configurations)
    func encodesTheCorpusAsTokenizersDoes(_ name: String) throws {
        let lines = try corpusLines()
        let tokenizer = try Tokenizer.load(path: Fixtures.path("tokenizers/" + name))
        let golden = try Golden(Fixtures.path("tokenizers/\(name)/goldens.json"))
        #expect(lines.count >= 600)
        try #require(golden.withSpecial.count == lines.count)
        let with = lines.map { tokenizer.encode($0, addSpecialTokens: true) }
        let without = lines.map { tokenizer.encode($0, addSpecialTokens: false) }
        let a = differences(lines, with, golden.withSpecial), b = differences(lines, without, golden.withoutSpecial)
        #expect(a.isEmpty, "\(name), add_special_tokens=True:\n\(a.joined(separator: "\n"))")
        #expect(b.isEmpty, "\(name), add_special_tokens=False:\n\(b.joined(separator: "\n"))")
        #expect(with.filter { $0 != golden.withSpecial[with.firstIndex(of: $0)!] }.isEmpty)
    }

    @Test(arguments: configurations)
    func decodesAsTokenizersDoes(_ name: String) throws {
        let lines = try corpusLines()
        let tokenizer = try Tokenizer.load(path: Fixtures.path("tokenizers/" + name))
        let golden = try Golden(Fixtures.path("tokenizers/\(name)/goldens.json"))
        try #require(golden.decoded.count == lines.count && golden.decodedSkip.count == lines.count)
        var bad: [String] = []
        for (i, ids) in golden.withSpecial.enumerated() {
            let d = tokenizer.decode(ids, skipSpecialTokens: false), s = tokenizer.decode(ids, skipSpecialTokens: true)
            if d != golden.decoded[i] { bad.append("line \(i + 1): got \(String(reflecting: d).prefix(100)) want \(String(reflecting: golden.decoded[i]).prefix(100))") }
            if s != golden.decodedSkip[i] { bad.append("line \(i + 1) skipping specials: got \(String(reflecting: s).prefix(100)) want \(String(reflecting: golden.decodedSkip[i]).prefix(100))") }
        }
        #expect(bad.isEmpty, "\(name): \(bad.count) lines differ\n\(bad.prefix(4).joined(separator: "\n"))")
    }
}

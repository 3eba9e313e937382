import Foundation
import Testing
import TestSupport
import VFFNFormats
@testable import VFFNText

/// Tokenizers read from GGUF metadata, and every way a tokenizer file can be wrong.
@Suite struct TokenizerSourcesTests {
    /// Each GGUF was written the way llama.cpp's convert_hf_to_gguf.py writes it, from the
    /// Hugging Face tokenizer whose goldens it must reproduce.
    @Test(arguments: [("gpt2", "gpt2"), ("llama3", "llama3"), ("qwen2", "qwen2"), ("llama2", "llama2")])
    func ggufTokenizerEncodesAsItsSource(_ gguf: String, _ source: String) throws {
        let lines = try corpusLines()
        let tokenizer = try Tokenizer.load(path: Fixtures.path("tokenizers/gguf/\(gguf).gguf"))
        let golden = try Golden(Fixtures.path("tokenizers/\(source)/goldens.json"))
        let with = lines.map { tokenizer.encode($0, addSpecialTokens: true) }
        let without = lines.map { tokenizer.encode($0, addSpecialTokens: false) }
        let a = differences(lines, with, golden.withSpecial), b = differences(lines, without, golden.withoutSpecial)
        #expect(a.isEmpty, "\(gguf).gguf with special tokens:\n\(a.joined(separator: "\n"))")
        #expect(b.isEmpty, "\(gguf).gguf without special tokens:\n\(b.joined(separator: "\n"))")
        var bad = 0
        for (i, ids) in golden.withSpecial.enumerated() where tokenizer.decode(ids) != golden.decoded[i] { bad += 1 }
        #expect(bad == 0, "\(gguf).gguf decodes \(bad) lines differently")
    }

    @Test func ggufWithoutTokenizerOrOfAnotherKindIsRefusedByName() throws {
        #expect(throws: VFFNError.self) { try Tokenizer.load(path: Fixtures.path("tokenizers/gguf/bert.gguf")) }
        do { _ = try Tokenizer.load(path: Fixtures.path("tokenizers/gguf/bert.gguf")) } catch {
            #expect(error.description.hasSuffix("GGUF tokenizer model \"bert\" is not supported (gpt2 and llama are)"))
        }
        let model = Fixtures.path("gguf")
        if let plain = (try? FileManager.default.contentsOfDirectory(atPath: model))?.first(where: { $0.hasSuffix(".gguf") }) {
            do { _ = try Tokenizer.load(path: model + "/" + plain); Issue.record("a GGUF without tokenizer metadata was read") } catch {
                #expect(error.description.contains("carries no tokenizer") || error.description.contains("tokenizer needs tokenizer.ggml.scores"), "\(error)")
            }
        }
    }

    /// A tokenizer.json rewritten by `edit`, in a directory of its own.
    func edited(_ name: String, _ edit: (String) -> String) throws -> String {
        let dir = makeTemporaryDirectory()
        let text = try String(contentsOfFile: Fixtures.path("tokenizers/\(name)/tokenizer.json"), encoding: .utf8)
        writeFile(dir + "/tokenizer.json", edit(text))
        return dir
    }

    func refusal(_ dir: String) -> String {
        do { _ = try Tokenizer.load(path: dir); return "read without error" } catch { return error.description }
    }

    @Test func malformedTokenizerFilesGetOneClearLine() throws {
        let cases: [(String, (String) -> String, String)] = [
            ("gpt2", { _ in "{\"model\": " }, "is not valid JSON: unexpected end of input at byte 10"),
            ("gpt2", { _ in "[1, 2]" }, "is not a tokenizer.json (no \"model\")"),
            ("gpt2", { $0.replacingOccurrences(of: "\"type\": \"BPE\"", with: "\"type\": \"Unigram\"") }, "tokenizer model Unigram is not supported (BPE and WordPiece are)"),
            ("gpt2", { $0.replacingOccurrences(of: "\"dropout\": null", with: "\"dropout\": 0.1") }, "BPE dropout 0.1 makes tokenization random"),
            ("gpt2", { $0.replacingOccurrences(of: "\"type\": \"ByteLevel\",\n    \"add_prefix_space\"", with: "\"type\": \"UnicodeScripts\",\n    \"add_prefix_space\"") },
             "pre-tokenizer UnicodeScripts is not supported"),
            ("bert", { $0.replacingOccurrences(of: "\"type\": \"BertNormalizer\"", with: "\"type\": \"Precompiled\"") }, "normalizer Precompiled is not supported"),
            ("llama3", { $0.replacingOccurrences(of: "\"type\": \"TemplateProcessing\"", with: "\"type\": \"Frobnicate\"") }, "post-processor Frobnicate is not supported"),
        ]
        for (name, edit, message) in cases {
            let dir = try edited(name, edit)
            let got = refusal(dir)
            #expect(got.hasPrefix(dir + "/tokenizer.json: ") && got.contains(message) && !got.contains("\n"), "\(name): \(got) (want \(message))")
        }
        // A merge naming a token the vocabulary lacks.
        let merges = try edited("gpt2") { text in
            guard let r = text.range(of: "\"merges\": [\n      ") else { return text }
            return text.replacingCharacters(in: r, with: "\"merges\": [\n      \"zzq qqz\",\n      ")
        }
        #expect(refusal(merges).contains("BPE merge 0 (zzq qqz) names a token missing from the vocabulary"), "\(refusal(merges))")
    }

    @Test func aCheckpointWithoutATokenizerSaysWhichFileIsMissing() throws {
        let got = refusal(Fixtures.path("llama-gqa-sharded"))
        #expect(got == Fixtures.path("llama-gqa-sharded") + ": has no tokenizer.json, so text cannot be tokenized; pass --tokens, or copy the model's tokenizer.json here", "\(got)")
        let sp = makeTemporaryDirectory()
        writeFile(sp + "/tokenizer.model", [0x0a, 0x01])
        #expect(refusal(sp).contains("(it has tokenizer.model, which this tool does not read)"))
    }

    /// Canonically equivalent but distinct vocabulary entries stay distinct, as in Rust.
    @Test func vocabularyKeysAreExactBytes() throws {
        let json = try JSON.parse(#"{"model": {"type": "WordPiece", "unk_token": "[UNK]", "vocab": {"[UNK]": 0, "\u00c5": 1, "A\u030a": 2, "\u212b": 3}}, "pre_tokenizer": {"type": "WhitespaceSplit"}}"#)
        let t = try Tokenizer(tokenizerJSON: json, source: "test")
        #expect(t.encode("\u{C5} A\u{30A} \u{212B} x") == [1, 2, 3, 0])
    }
}

/// GGUF tokenizers built by hand: a hand-computed encoding and each refusal.
@Suite struct GGUFTokenizerEdgeTests {
    static func strings(_ key: String, _ items: [String]) -> [UInt8] {
        GGUF.kv(key, 9, le(Int32(8)) + le(UInt64(items.count)) + items.flatMap { GGUF.string($0) })
    }

    static func ints(_ key: String, _ items: [Int32]) -> [UInt8] {
        GGUF.kv(key, 9, le(Int32(5)) + le(UInt64(items.count)) + items.flatMap { le($0) })
    }

    func load(_ kvs: [[UInt8]]) -> Result<Tokenizer, VFFNError> {
        let path = makeTemporaryDirectory() + "/t.gguf"
        writeFile(path, GGUF.file(kvs: [GGUF.str("general.architecture", "gpt2")] + kvs, tensors: [], data: []))
        do { return .success(try Tokenizer.load(path: path)) } catch { return .failure(error) }
    }

    func message(_ kvs: [[UInt8]]) -> String {
        if case let .failure(e) = load(kvs) { return e.message }
        return "read without error"
    }

    @Test func aByteLevelGGUFTokenizerByHand() throws {
        let base = [GGUF.str("tokenizer.ggml.model", "gpt2"), GGUF.str("tokenizer.ggml.pre", "gpt-2"),
                    Self.strings("tokenizer.ggml.tokens", ["a", "b", "ab", "\u{120}", "<eos>"]), Self.ints("tokenizer.ggml.token_type", [1, 1, 1, 1, 3]),
                    Self.strings("tokenizer.ggml.merges", ["a b"]), GGUF.u32("tokenizer.ggml.eos_token_id", 4)]
        let t = try load(base).get()
        // "ab" merges; the space is GPT-2's Ġ (U+0120), a token of its own; <eos> is matched as written.
        #expect(t.encode("ab ab<eos>") == [2, 3, 2, 4])
        #expect(t.decode([2, 3, 2, 4]) == "ab ab<eos>")
        #expect(t.decode([2, 3, 2, 4], skipSpecialTokens: true) == "ab ab")

        #expect(message(Array(base[0..<1] + base[2...])).contains("names no pre-tokenizer (tokenizer.ggml.pre is missing or \"default\")"))
        #expect(message(base.map { $0 == base[1] ? GGUF.str("tokenizer.ggml.pre", "jais") : $0 }).contains("tokenizer.ggml.pre \"jais\" is not supported"))
        #expect(message(base.map { $0 == base[4] ? Self.strings("tokenizer.ggml.merges", ["a q"]) : $0 })
                == "tokenizer.ggml.merges entry 0 \"a q\" does not join two tokens into a third")
        #expect(message(base.map { $0 == base[3] ? Self.ints("tokenizer.ggml.token_type", [1, 1]) : $0 }) == "tokenizer.ggml.token_type has 2 entries for 5 tokens")
        #expect(message(base.map { $0 == base[2] ? Self.ints("tokenizer.ggml.tokens", [1, 2]) : $0 }) == "tokenizer.ggml.tokens holds a value that is not a string")
        #expect(message([GGUF.str("tokenizer.ggml.model", "llama"), Self.strings("tokenizer.ggml.tokens", ["a"])])
                == "a llama (SentencePiece) tokenizer needs tokenizer.ggml.scores, one per token")
        #expect(message([GGUF.str("tokenizer.ggml.model", "t5")]).contains("has no tokenizer.ggml.tokens array") || message([GGUF.str("tokenizer.ggml.model", "t5")]).contains("not supported"))
    }
}

/// Edge cases of `tokenizers`' loading and decoding, each a tokenizer.json built in
/// edge-cases.json with the ids and text tokenizers 0.23.3 gives (written by a script in the review
/// of this module; the expected values are tokenizers' own).
@Suite struct TokenizerEdgeCaseTests {
    @Test func edgeCasesMatchTokenizers() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("edge-cases.json")
        let cases = try #require(try JSON.parse(Data(contentsOf: url)).arrayValue)
        #expect(cases.count == 7)
        for c in cases {
            let name = c["name"]!.stringValue!
            let json = try JSON.parse(c["json"]!.stringValue!)
            if name.contains("WordLevel") {
                #expect(throws: VFFNError.self, "\(name)") { try Tokenizer(tokenizerJSON: json, source: "t") }
                continue
            }
            let t = try Tokenizer(tokenizerJSON: json, source: "t")
            let ids = c["ids"]!.arrayValue!.compactMap(\.intValue), decodeIds = c["decode_ids"]!.arrayValue!.compactMap(\.intValue)
            #expect(t.encode(c["text"]!.stringValue!) == ids, "\(name)")
            #expect(t.decode(decodeIds) == c["decoded"]!.stringValue!, "\(name)")
            #expect(t.decode(decodeIds, skipSpecialTokens: true) == c["decoded_skip"]!.stringValue!, "\(name)")
        }
    }
}

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
            ("gpt2", { _ in "{\"model\": " }, "invalid JSON at byte 10: unexpected end of input"),
            ("gpt2", { _ in "[1, 2]" }, "is not a tokenizer.json (no \"model\")"),
            ("gpt2", { $0.replacingOccurrences(of: "\"type\": \"BPE\"", with: "\"type\": \"Unigram\"") }, "tokenizer model Unigram is not supported (BPE and WordPiece are)"),
            ("gpt2", { $0.replacingOccurrences(of: "\"dropout\": null", with: "\"dropout\": 0.1") }, "BPE dropout 0.1 makes tokenization random"),
            ("gpt2", { $0.replacingOccurrences(of: "\"type\": \"ByteLevel\",\n    \"add_prefix_space\"", with: "\"type\": \"CharDelimiterSplit\",\n    \"add_prefix_space\"") },
             "pre-tokenizer CharDelimiterSplit is not supported"),
            ("bert", { $0.replacingOccurrences(of: "\"unk_token\": \"[UNK]\"", with: "\"unk_token\": \"<nope>\"") }, "WordPiece unk_token \"<nope>\" is not in the vocabulary"),
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

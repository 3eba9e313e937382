import Foundation
import Testing
import TestSupport
import VFFNFormats

/// A tokenizer.json whose 256 tokens are GPT-2's byte-level characters, token i standing for
/// byte i, with no merges: text becomes its UTF-8 bytes, a hand-computable case that fits the
/// fixtures' 256-token vocabularies.
func byteTokenizerJSON(bos: Int? = nil) -> String {
    var table: [Int] = []
    var next = 256
    for b in 0..<256 {
        if (33...126).contains(b) || (161...172).contains(b) || (174...255).contains(b) { table.append(b) } else { table.append(next); next += 1 }
    }
    let vocab = table.enumerated().map { b, scalar in
        "\"\(String(Character(Unicode.Scalar(UInt32(scalar))!)).replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\""))\": \(b)"
    }.joined(separator: ", ")
    let post = bos.map { #"{"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "B", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}], "pair": [], "special_tokens": {"B": {"id": "B", "ids": [\#($0)], "tokens": ["B"]}}}"# } ?? "null"
    return """
    {"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
     "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
     "post_processor": \(post), "decoder": {"type": "ByteLevel"},
     "model": {"type": "BPE", "dropout": null, "unk_token": null, "vocab": {\(vocab)}, "merges": []}}
    """
}

extension CLITests {
    /// A copy of the Llama fixture (256-token vocabulary, 128 positions) with the byte tokenizer.
    func llamaWithByteTokenizer(bos: Int? = nil) throws -> String {
        let dir = makeTemporaryDirectory() + "/llama"
        try copyDirectory(Fixtures.path("llama-gqa-sharded"), to: dir)
        writeFile(dir + "/tokenizer.json", byteTokenizerJSON(bos: bos))
        return dir
    }

    @Test func tokenizePrintsTheIdsOfTextAndOfEachLine() throws {
        let llama3 = Fixtures.path("tokenizers/llama3")
        let gold = try JSON.parse(FileManager.default.contents(atPath: llama3 + "/goldens.json")!)
        let line0 = try corpusFirstLine()
        let t = try run(["tokenize", llama3, "--text", line0])
        #expect(t.status == 0, "\(t.stderr)")
        #expect(t.stdout == gold["with_special"]!.arrayValue![0].arrayValue!.map { String($0.intValue!) }.joined(separator: ",") + "\n")
        let n = try run(["tokenize", llama3 + "/tokenizer.json", "--text", line0, "--no-special", "--json"])
        #expect(n.stdout == JSON.array(gold["without_special"]!.arrayValue![0].arrayValue!).compact + "\n")
        // One array per line, split at \n only, an empty line giving [].
        let f = try run(["tokenize", llama3, "--text-file", Fixtures.path("tokenizers/corpus.txt"), "--json"])
        #expect(f.status == 0, "\(f.stderr)")
        let got = f.stdout.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
        let want = gold["with_special"]!.arrayValue!.map { JSON.array($0.arrayValue!).compact }
        #expect(got.count == want.count && got == want)
        // A GGUF's own tokenizer, and a .vffn that embeds tokenizer.json.
        let g = try run(["tokenize", Fixtures.path("tokenizers/gguf/llama3.gguf"), "--text", line0])
        #expect(g.stdout == t.stdout)
        let dir = makeTemporaryDirectory()
        let llama = try llamaWithByteTokenizer()
        #expect(try run(["pack", llama, dir + "/m.vffn"]).status == 0)
        let v = try run(["tokenize", dir + "/m.vffn", "--text", "hi é"])
        #expect(v.stdout == "104,105,32,195,169\n", "\(v.stderr)")
    }

    func corpusFirstLine() throws -> String {
        let text = try String(contentsOfFile: Fixtures.path("tokenizers/corpus.txt"), encoding: .utf8)
        return String(text.unicodeScalars.split(separator: "\n").first.map { String(String.UnicodeScalarView($0)) } ?? "")
    }

    @Test func textRunsAsItsTokensDo() throws {
        let llama = try llamaWithByteTokenizer(bos: 1)
        let dir = makeTemporaryDirectory()
        let a = try run(["run", llama, "--text", "Hi, you!", "--out", dir + "/text.npy"])
        #expect(a.status == 0, "\(a.stderr)")
        // BOS 1, then the bytes of "Hi, you!".
        let b = try run(["run", llama, "--tokens", "1,72,105,44,32,121,111,117,33", "--out", dir + "/ids.npy"])
        #expect(b.status == 0, "\(b.stderr)")
        #expect(FileManager.default.contents(atPath: dir + "/text.npy") == FileManager.default.contents(atPath: dir + "/ids.npy"))
        // A text file longer than the model's 128 positions is cut, with a note.
        writeFile(dir + "/long.txt", String(repeating: "abcdefghij", count: 20))
        let long = try run(["run", llama, "--text-file", dir + "/long.txt", "--out", dir + "/long.npy"])
        #expect(long.status == 0, "\(long.stderr)")
        #expect(long.stderr.contains("vffn-convert: note: \(dir)/long.txt is 201 tokens; the model covers 128 positions, so the first 128 are used"), "\(long.stderr)")
        let (_, shape) = try NPY.decode(Array(FileManager.default.contents(atPath: dir + "/long.npy")!))
        #expect(shape == [128, 256])

        // Convert calibrated on text, then stats and verify on text.
        let c = try run(["convert", llama, dir + "/vffn", "--experts", "4", "--top-k", "2", "--max-depth", "3",
                         "--depth-init", "calibrated", "--calibration-text", dir + "/long.txt", "--quiet"])
        #expect(c.status == 0, "\(c.stderr)")
        let cfg = try JSON.parse(FileManager.default.contents(atPath: dir + "/vffn/config.json")!)
        let calibrated = cfg["versatile_ffn"]?["depth_calibration"]?["tokens"]?.arrayValue?.compactMap(\.intValue) ?? []
        #expect(calibrated.count == 128 && calibrated.prefix(3) == [1, 97, 98], "\(calibrated.prefix(5))")
        let s = try run(["stats", dir + "/vffn", "--text", "Hello there, general.", "--json"])
        #expect(s.status == 0, "\(s.stderr)")
        #expect(try JSON.parse(s.stdout)["tokens"]?.intValue == 22)
        let v = try run(["verify", dir + "/vffn", "--source", llama, "--text", "Hello there."])
        #expect(v.status == 0, "\(v.stdout)\(v.stderr)")
    }

    @Test func textInputErrorsAreOneLine() throws {
        let dir = makeTemporaryDirectory()
        let noTokenizer = Fixtures.path("llama-gqa-sharded")
        let a = try run(["run", noTokenizer, "--text", "hello", "--out", dir + "/x.npy"])
        #expect(a.status == 65 && a.stderr == "vffn-convert: error: \(noTokenizer): has no tokenizer.json, so text cannot be tokenized; pass --tokens, or copy the model's tokenizer.json here\n", "\(a.status) \(a.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/x.npy"))
        writeFile(dir + "/bad.txt", [0x68, 0x69, 0xFF, 0x0A])
        let b = try run(["tokenize", Fixtures.path("tokenizers/gpt2"), "--text-file", dir + "/bad.txt"])
        #expect(b.status == 65 && b.stderr == "vffn-convert: error: \(dir)/bad.txt: is not UTF-8 text (an invalid byte sequence at byte 2)\n", "\(b.stderr)")
        let c = try run(["run", noTokenizer, "--text", "a", "--tokens", "1", "--out", dir + "/y.npy"])
        #expect(c.status == 64 && c.stderr.contains("give one of --tokens, --tokens-file, --text and --text-file, not --tokens and --text"), "\(c.stderr)")
        let d = try run(["tokenize", Fixtures.path("tokenizers/gpt2")])
        #expect(d.status == 64 && d.stderr.contains("give the text: --text S or --text-file FILE"), "\(d.stderr)")
        let e = try run(["convert", noTokenizer, dir + "/z", "--calibration-text", dir + "/bad.txt"])
        #expect(e.status == 64 && e.stderr.contains("apply only to --depth-init calibrated"), "\(e.stderr)")
        let llama = try llamaWithByteTokenizer()
        let f = try run(["run", llama, "--text", "", "--out", dir + "/w.npy"])
        #expect(f.status == 64 && f.stderr == "vffn-convert: error: --text gives no tokens\n", "\(f.stderr)")
    }
}

extension RealCheckpointTests {
    /// The real all-MiniLM-L6-v2 tokenizer against tokenizers' own ids on the corpus, and its text
    /// against the ids transformers gave the committed hidden-state golden.
    @Test func miniLMTokenizesAsTokenizersAndTransformers() throws {
        let cli = CLITests()
        let gold = try JSON.parse(FileManager.default.contents(atPath: Fixtures.path("tokenizers/all-minilm-l6-v2-goldens.json"))!)
        for (flag, key) in [([String](), "with_special"), (["--no-special"], "without_special")] {
            let f = try cli.run(["tokenize", source, "--text-file", Fixtures.path("tokenizers/corpus.txt"), "--json"] + flag)
            #expect(f.status == 0, "\(f.stderr)")
            let got = f.stdout.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
            let want = gold[key]!.arrayValue!.map { JSON.array($0.arrayValue!).compact }
            let bad = zip(got, want).enumerated().filter { $0.element.0 != $0.element.1 }.map(\.offset)
            #expect(got.count == want.count && bad.isEmpty, "\(key): lines \(bad.prefix(10).map { $0 + 1 }) differ")
        }
        let info = try JSON.parse(FileManager.default.contents(atPath: Fixtures.path("goldens/all-minilm-l6-v2.json"))!)
        let t = try cli.run(["tokenize", source, "--text", info["sentence"]!.stringValue!])
        #expect(t.stdout == info["tokens"]!.arrayValue!.map { String($0.intValue!) }.joined(separator: ",") + "\n")
    }
}

extension CLITests {
    /// The trained tiny Llama with its own tokenizer: text in gives transformers' logits for the
    /// ids transformers' tokenizer gives.
    @Test func trainedLlamaRunsTextAsTransformers() throws {
        let model = Fixtures.path("tiny-llama-trained")
        let info = try JSON.parse(FileManager.default.contents(atPath: Fixtures.path("goldens/tiny-llama-trained.json"))!)
        let text = info["text"]!.stringValue!, ids = info["tokens"]!.arrayValue!.compactMap(\.intValue)
        let t = try run(["tokenize", model, "--text", text])
        #expect(t.stdout == ids.map(String.init).joined(separator: ",") + "\n")
        let dir = makeTemporaryDirectory()
        let r = try run(["run", model, "--text", text, "--out", dir + "/logits.npy"])
        #expect(r.status == 0, "\(r.stderr)")
        let (logits, shape) = try NPY.decode(Array(FileManager.default.contents(atPath: dir + "/logits.npy")!))
        let golden = try Fixtures.golden("tiny-llama-trained-dense-logits.npy")
        #expect(shape == golden.shape)
        #expect(relativeError(logits, golden.values) < 1e-4)
    }
}

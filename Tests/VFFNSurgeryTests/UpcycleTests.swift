import Foundation
import Testing
import TestSupport
import VFFNFormats
import VFFNModels
import VFFNSurgery

@Suite struct UpcycleTests {
    func convert(_ fixture: String, experts: Int = 8, topK: Int = 2, maxDepth: Int = 4, seed: UInt64 = 0) throws -> String {
        let dst = makeTemporaryDirectory() + "/converted"
        let plan = try UpcyclePlan(source: Checkpoint(path: Fixtures.path(fixture)), experts: experts, topK: topK, maxDepth: maxDepth, seed: seed)
        try plan.write(to: dst)
        return dst
    }

    @Test(arguments: ["llama-gqa-sharded", "qwen2-bf16-tied", "mistral-f16", "qwen3-tiny", "qwen3-bf16-4x", "smollm3-tiny", "smollm3-bf16-4x", "granite-tiny",
                      "granite-bf16-4x", "olmo-tiny", "olmo-clip-bf16-4x", "starcoder2-tiny",
                      "starcoder2-bf16-4x", "phi3-longrope", "phi3-bf16-4x", "olmo2-tiny", "olmo2-bf16-4x",
                      "gemma-tiny", "gemma-bf16-4x", "gemma2-tiny", "gemma2-bf16-4x", "gemma3-tiny", "gemma3-bf16-4x", "gemma3-vlm-4x", "olmo2-bf16-sharded", "gemma2-bf16-sharded",
                      "olmo3-tiny", "olmo3-bf16-4x", "gpt-neox-tiny", "gpt-neox-bf16-4x", "gpt-neox-pythia-bin", "phi-tiny", "phi-bf16-4x", "cohere-tiny", "cohere-bf16-4x",
                      "cohere2-tiny", "cohere2-bf16-4x", "gpt2-tiny", "gpt2-noprefix-f16", "bert-tiny", "bert-noprefix-bf16",
                      // Sources that are decoded on the way (Q8_0, permuted q/k, deflated and strided
                      // entries, a packed container): streamed into the output, compared in pieces.
                      "gguf/llama-gqa-q8_0.gguf", "gguf/llama-gqa-f32.gguf", "llama-bin-deflated", "bert-tiny-bin", "vffn/mistral-f16.vffn"])
    func convertedCheckpointVerifies(fixture: String) throws {
        let dst = try convert(fixture)
        let report = try Verifier.verify(destination: dst, source: Fixtures.path(fixture))
        #expect(report.passed, "\(report.table)")
        // GPT-2 and BERT have an output-projection bias, shared whole by every sub-expert, and so
        // has a Llama-family FFN with mlp_bias (granite-bf16-4x).
        let config = try Checkpoint(path: Fixtures.path(fixture)).config
        let biased = fixture.hasPrefix("gpt2") || fixture.hasPrefix("bert") || fixture.hasPrefix("gpt-neox") || fixture.hasPrefix("phi-")
            || config["mlp_bias"]?.boolValue == true
            || (fixture.hasPrefix("starcoder2") && config["use_bias"]?.boolValue != false)
        #expect(report.hasOutputBias == biased)
        #expect(report.table.contains(biased ? "sum f_e = f + (N-1)b" : "sum f_e = f "))
        #expect(report.checks.first { $0.name == "dense tensors bit-identical" }?.passed == true)
        // One row per layer of the source, whatever its depth.
        let layers = (config["num_hidden_layers"] ?? config["text_config"]?["num_hidden_layers"])?.intValue ?? 2
        #expect(report.layers.count == layers)
        for l in report.layers {
            #expect(l.partitionRelative < 1e-6)
            #expect(l.denseEquivalenceMaxAbs == 0)
            #expect(l.routing.depthCounts.reduce(0, +) == report.probeTokens.count)
            #expect(l.routing.expertLoad.reduce(0, +) == 2 * report.probeTokens.count)
        }
    }

    @Test func convertedFileContract() throws {
        let src = try Checkpoint(path: Fixtures.path("llama-gqa-sharded"))
        let dst = try Checkpoint(path: try convert("llama-gqa-sharded"))
        // Sharding mirrored, file for file; gates beside their layer's FFN.
        #expect(dst.shards.map { ($0.path as NSString).lastPathComponent } == src.shards.map { ($0.path as NSString).lastPathComponent })
        for i in 0..<2 {
            let p = "model.layers.\(i).mlp"
            #expect(dst.info("\(p).expert_gate.weight")!.shape == [8, 32])
            #expect(dst.info("\(p).depth_predictor.weight")!.shape == [4, 32])
            #expect(dst.info("\(p).expert_gate.weight")!.dtype == .F32)
            #expect(dst.shard(of: "\(p).expert_gate.weight")!.path.hasSuffix((src.shard(of: "\(p).gate_proj.weight")!.path as NSString).lastPathComponent))
        }
        // The index covers every tensor and states the data bytes and parameter count.
        let index = try #require(dst.index)
        #expect(index["weight_map"]!.objectMembers!.count == src.tensorNames.count + 4)
        let dataBytes = dst.tensorNames.reduce(0) { $0 + dst.info($1)!.byteCount }
        #expect(index["metadata"]!["total_size"]!.intValue == dataBytes)
        #expect(index["metadata"]!["total_parameters"]!.intValue == 34976 + 2 * (8 + 4) * 32)
        // config.json is the source's, key for key, plus versatile_ffn.
        let members = dst.config.objectMembers!
        #expect(Array(members.dropLast()).map(\.0) == src.config.objectMembers!.map(\.0))
        #expect(JSON.object(Array(members.dropLast())) == src.config)
        let v = try #require(try VersatileFFNSettings.read(from: dst.config, path: "config.json"))
        #expect(v.numExperts == 8 && v.topK == 2 && v.maxDepth == 4 && v.expertSlicing == "contiguous")
        #expect(v.gateTensors[1] == .init(layer: 1, expertGate: "model.layers.1.mlp.expert_gate.weight", depthPredictor: "model.layers.1.mlp.depth_predictor.weight"))
        #expect(dst.config["versatile_ffn"]!["seed"]!.intValue == 0)
        // Other files copied byte for byte.
        for f in ["README.md", "generation_config.json"] {
            #expect(FileManager.default.contents(atPath: dst.path + "/" + f) == FileManager.default.contents(atPath: src.path + "/" + f))
        }
    }

    /// The layout of a Hugging Face cache snapshot: every file a relative symlink into blobs/.
    @Test func convertsACacheSnapshotOfSymlinks() throws {
        let root = makeTemporaryDirectory()
        let fm = FileManager.default
        try fm.createDirectory(atPath: root + "/blobs", withIntermediateDirectories: false)
        try fm.createDirectory(atPath: root + "/snapshots/abc", withIntermediateDirectories: true)
        for (i, f) in try fm.contentsOfDirectory(atPath: Fixtures.path("mistral-f16")).enumerated() {
            try fm.copyItem(atPath: Fixtures.path("mistral-f16/" + f), toPath: root + "/blobs/\(i)")
            try fm.createSymbolicLink(atPath: root + "/snapshots/abc/" + f, withDestinationPath: "../../blobs/\(i)")
        }
        let dst = root + "/out"
        try UpcyclePlan(source: Checkpoint(path: root + "/snapshots/abc"), experts: 8, topK: 2, maxDepth: 4).write(to: dst)
        for f in try fm.contentsOfDirectory(atPath: dst) {
            #expect((try? fm.destinationOfSymbolicLink(atPath: dst + "/" + f)) == nil, "\(f) is a link")
        }
        #expect(fm.contents(atPath: dst + "/README.md") == fm.contents(atPath: Fixtures.path("mistral-f16/README.md")))
        #expect(try Verifier.verify(destination: dst, source: root + "/snapshots/abc").passed)
    }

    /// Hugging Face repositories often hold the same weights in several formats; DST gets only
    /// the converted ones, and the summary says what was left out.
    @Test func weightsInOtherFormatsAreNotCopied() throws {
        let src = makeTemporaryDirectory() + "/both"
        try copyDirectory(Fixtures.path("mistral-f16"), to: src)
        try FileManager.default.copyItem(atPath: Fixtures.path("bert-tiny-bin/pytorch_model.bin"), toPath: src + "/pytorch_model.bin")
        try FileManager.default.createDirectory(atPath: src + "/onnx", withIntermediateDirectories: false)
        writeFile(src + "/onnx/model.onnx", "onnx")
        writeFile(src + "/consolidated.safetensors", "not read")
        let checkpoint = try Checkpoint(path: src)
        #expect(checkpoint.format == .safetensors)
        #expect(checkpoint.otherWeightFiles() == ["consolidated.safetensors", "onnx/model.onnx", "pytorch_model.bin"])
        let dst = makeTemporaryDirectory() + "/dst"
        let summary = try UpcyclePlan(source: checkpoint, experts: 8, topK: 2, maxDepth: 4).write(to: dst)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dst).sorted() == [AtomicOutput.markerName, "README.md", "config.json", "generation_config.json", "model.safetensors"])
        #expect(summary.sourceNotes == ["3 weight file(s) in other formats not copied (stale dense copies without gates): consolidated.safetensors, onnx/model.onnx, pytorch_model.bin"])
        // pack keeps everything, so unpack gives the directory back as it was.
        try VFFNContainer.pack(checkpoint, to: dst + ".vffn")
        try VFFNContainer(path: dst + ".vffn").unpack(to: dst + "-unpacked")
        #expect(FileManager.default.contents(atPath: dst + "-unpacked/pytorch_model.bin") == FileManager.default.contents(atPath: src + "/pytorch_model.bin"))
        #expect(FileManager.default.contents(atPath: dst + "-unpacked/onnx/model.onnx") == Data("onnx".utf8))
    }

    @Test func gatesAreStoredInTheSourceFloatDtype() throws {
        let qwen = try Checkpoint(path: try convert("qwen2-bf16-tied", experts: 12, topK: 3, maxDepth: 2))
        #expect(qwen.info("model.layers.0.mlp.expert_gate.weight")!.dtype == .BF16)
        #expect(qwen.info("model.layers.0.mlp.expert_gate.weight")!.shape == [12, 32])
        #expect(!qwen.isSharded)
        let mistral = try Checkpoint(path: try convert("mistral-f16"))
        #expect(mistral.info("model.layers.1.mlp.depth_predictor.weight")!.dtype == .F16)
    }

    @Test func conversionIsReproducibleBitForBit() throws {
        let a = try convert("llama-gqa-sharded", seed: 7)
        let b = try convert("llama-gqa-sharded", seed: 7)
        let c = try convert("llama-gqa-sharded", seed: 8)
        let files = try FileManager.default.contentsOfDirectory(atPath: a).sorted()
        #expect(files == (try FileManager.default.contentsOfDirectory(atPath: b).sorted()))
        // The checkpoint is reproducible; the marker records sizes and times of this copy on disk.
        for f in files where f != AtomicOutput.markerName {
            #expect(FileManager.default.contents(atPath: a + "/" + f) == FileManager.default.contents(atPath: b + "/" + f), "\(f)")
        }
        let gate = "model.layers.0.mlp.expert_gate.weight"
        let x = try Checkpoint(path: a), z = try Checkpoint(path: c)
        #expect(Array(try x.bytes(gate)!) != Array(try z.bytes(gate)!))
    }

    @Test func gateInitIsTheTruncatedNormalOfThePaper() {
        let v = GateInitializer(seed: 0).values(layer: 3, tensor: .expertGate, count: 200_000).map(Double.init)
        let mean = v.reduce(0, +) / Double(v.count)
        let std = (v.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(v.count)).squareRoot()
        #expect(abs(mean) < 2e-4)
        // A normal truncated at 3 std keeps 98.67% of its variance: std 0.02 * 0.98657.
        #expect(abs(std - 0.019731) < 2e-4, "std \(std)")
        #expect(v.allSatisfy { abs($0) <= 0.06 + 1e-9 })
        #expect(v.contains { abs($0) > 0.055 })
        #expect(GateInitializer(seed: 0).values(layer: 3, tensor: .depthPredictor, count: 8) != GateInitializer(seed: 0).values(layer: 3, tensor: .expertGate, count: 8))
        #expect(GateInitializer(seed: 0).values(layer: 1, tensor: .expertGate, count: 8) == GateInitializer(seed: 0).values(layer: 1, tensor: .expertGate, count: 8))
    }

    @Test(arguments: ["llama-gqa-sharded-seed0-e8k2d4-logits.npy", "qwen3-tiny-seed0-e8k2d4-logits.npy", "smollm3-tiny-seed0-e8k2d4-logits.npy", "granite-tiny-seed0-e8k2d4-logits.npy", "olmo-tiny-seed0-e8k2d4-logits.npy",
                      "starcoder2-tiny-seed0-e8k2d4-logits.npy", "phi3-longrope-seed0-e8k2d4-logits.npy",
                      "olmo2-tiny-seed0-e8k2d4-logits.npy", "gemma-tiny-seed0-e8k2d4-logits.npy",
                      "gemma2-tiny-seed0-e8k2d4-logits.npy", "gemma3-tiny-seed0-e8k2d4-logits.npy", "olmo3-tiny-seed0-e8k2d4-logits.npy", "gemma3-vlm-4x-seed0-e8k2d4-logits.npy",
                      "gpt-neox-tiny-seed0-e8k2d4-logits.npy", "phi-tiny-seed0-e8k2d4-logits.npy", "cohere-tiny-seed0-e8k2d4-logits.npy",
                      "cohere2-tiny-seed0-e8k2d4-logits.npy", "gpt2-tiny-seed0-e8k2d4-logits.npy",
                      "bert-noprefix-bf16-seed0-e8k2d4-hidden.npy"])
    func swiftConvertedCheckpointMatchesPyTorchReference(golden: String) throws {
        // fixtures/generate.py --swift-converted ran the PyTorch transcription of SPEC section 1
        // on this exact conversion (seed 0, N 8, k 2, D 4).
        let source = String(golden.prefix { $0 != "." }.split(separator: "-seed0")[0])
        let dst = try convert(source, experts: 8, topK: 2, maxDepth: 4, seed: 0)
        let model = try Architectures.load(Checkpoint(path: dst))
        let out = try model.forward(Fixtures.tokens, mode: .versatile(), trace: false).output
        let reference = try Fixtures.golden(golden)
        #expect([out.rows, out.cols] == reference.shape)
        #expect(relativeError(out.data, reference.values) < 1e-4, "\(source)")
    }

    /// SPEC section 2: gates are named under the FFN's own key prefix, whichever spelling the
    /// source uses, in the dtype of the FFN weights; everything else rides along untouched.
    @Test(arguments: [
        ("gpt2-tiny", "transformer.h.1.mlp", DType.F32),
        ("gpt2-noprefix-f16", "h.1.mlp", .F16),
        ("bert-tiny", "bert.encoder.layer.1", .F32),
        ("bert-noprefix-bf16", "encoder.layer.1", .BF16),
    ])
    func gateNamesFollowTheSourceKeySpelling(fixture: String, prefix: String, dtype: DType) throws {
        let dst = try Checkpoint(path: try convert(fixture, experts: 4, topK: 2, maxDepth: 3))
        #expect(dst.info(prefix + ".expert_gate.weight")?.dtype == dtype)
        #expect(dst.info(prefix + ".expert_gate.weight")?.shape == [4, 32])
        #expect(dst.info(prefix + ".depth_predictor.weight")?.shape == [3, 32])
        let v = try #require(try VersatileFFNSettings.read(from: dst.config, path: "config.json"))
        #expect(v.gateTensors[1].expertGate == prefix + ".expert_gate.weight")
        // Buffers and heads the forward pass does not run are still carried through.
        let carried = ["gpt2-noprefix-f16": ["h.0.attn.bias", "h.0.attn.masked_bias"],
                       "bert-tiny": ["bert.pooler.dense.weight", "cls.predictions.bias"],
                       "bert-noprefix-bf16": ["embeddings.position_ids", "pooler.dense.bias"]][fixture] ?? []
        let src = try Checkpoint(path: Fixtures.path(fixture))
        for name in carried {
            let a = try #require(src.info(name)), b = try #require(dst.info(name), "\(name) not carried")
            let same = try Array(src.bytes(name)!) == Array(dst.bytes(name)!)
            #expect(a.dtype == b.dtype && a.shape == b.shape && same)
        }
        if fixture == "bert-noprefix-bf16" { #expect(dst.info("embeddings.position_ids")?.dtype == .I64) }
        if fixture == "gpt2-noprefix-f16" { #expect(dst.info("h.0.attn.masked_bias")?.shape == []) }
    }

    /// A model with fewer positions than verify's 32 default probe tokens is probed with as many
    /// tokens as it has positions, not refused.
    @Test func verifyProbesNoMoreTokensThanTheModelHasPositions() throws {
        let src = makeTemporaryDirectory() + "/gpt2-16"
        try copyDirectory(Fixtures.path("gpt2-noprefix-f16"), to: src)
        try rewriteTensors(src) { t, bytes in
            t.name == "wpe.weight" ? TensorRecord(name: t.name, dtype: t.dtype, shape: [16, 32], bytes: .owned(Array(bytes.prefix(16 * 32 * 2))))
                                   : TensorRecord(name: t.name, dtype: t.dtype, shape: t.shape, bytes: .owned(bytes))
        }
        let config = try Checkpoint.readJSON(src + "/config.json", what: "config")
        writeFile(src + "/config.json", config.setting("n_positions", to: .int(16)).pretty)
        let dst = makeTemporaryDirectory() + "/dst"
        try UpcyclePlan(source: Checkpoint(path: src), experts: 4, topK: 1, maxDepth: 2).write(to: dst)
        let report = try Verifier.verify(destination: dst, source: src)
        #expect(report.passed, "\(report.table)")
        #expect(report.probeTokens.count == 16)
    }

    @Test func customSurgeryThroughThePlan() throws {
        var plan = try UpcyclePlan(source: Checkpoint(path: Fixtures.path("mistral-f16")), experts: 4, topK: 1, maxDepth: 2)
        // Every token takes depth 1 and expert 2: zero depth predictor, router row 2 large.
        for i in plan.layers.indices {
            plan.layers[i].depthPredictor = [Float](repeating: 0, count: 2 * 32)
            plan.layers[i].expertGate = (0..<4 * 32).map { $0 / 32 == 2 ? 1 : 0 }
        }
        let dst = makeTemporaryDirectory() + "/custom"
        try plan.write(to: dst)
        let model = try Architectures.load(Checkpoint(path: dst))
        let tokens = [1, 2, 3, 4, 5, 6]
        let result = try model.forward(tokens, mode: .versatile(), trace: false)
        for r in result.routing { #expect(r.depthCounts == [6, 0]) }
        // Depth 1 of D = 2 gives m = 1/2: half the dense sub-layer, half expert 2.
        #expect(result.output.isFinite)
    }
}

@Suite struct UpcycleErrorTests {
    func expectUsage(_ experts: Int, _ topK: Int, _ depth: Int, _ message: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let src = try Checkpoint(path: Fixtures.path("qwen2-bf16-tied"))
        do {
            _ = try UpcyclePlan(source: src, experts: experts, topK: topK, maxDepth: depth)
            Issue.record("accepted", sourceLocation: sourceLocation)
        } catch {
            #expect(error.kind == .usage, sourceLocation: sourceLocation)
            #expect(error.message == message, sourceLocation: sourceLocation)
        }
    }

    @Test func refusesSettingsThatCannotWork() throws {
        try expectUsage(5, 2, 4, "--experts 5 does not divide the FFN intermediate size 96")
        try expectUsage(8, 9, 4, "--top-k 9 exceeds --experts 8")
        try expectUsage(8, 2, 0, "--max-depth must be at least 1 (got 0)")
        try expectUsage(0, 1, 1, "--experts must be at least 1 (got 0)")
        try expectUsage(8, 0, 1, "--top-k must be at least 1 (got 0)")
    }

    @Test func refusesToConvertTwice() throws {
        do {
            _ = try UpcyclePlan(source: Checkpoint(path: Fixtures.path("qwen2-bf16-vffn")), experts: 8, topK: 2, maxDepth: 4)
            Issue.record("accepted")
        } catch {
            #expect(error.message == "is already a VersatileFFN checkpoint (config.json has \"versatile_ffn\")")
        }
    }

    /// A copy of mistral-f16 with one tensor changed by `transform`.
    func mistral(_ transform: @escaping (TensorInfo, [UInt8]) -> TensorRecord) throws -> Checkpoint {
        let dir = makeTemporaryDirectory() + "/m"
        try copyDirectory(Fixtures.path("mistral-f16"), to: dir)
        try rewriteTensors(dir, transform)
        return try Checkpoint(path: dir)
    }

    @Test func refusesSourcesWhoseTensorsCannotBeSliced() throws {
        // An FFN tensor saved under another name (here a gate's) is reported missing, not guessed at.
        let taken = try mistral { t, b in
            TensorRecord(name: t.name == "model.layers.0.mlp.up_proj.weight" ? "model.layers.0.mlp.expert_gate.weight" : t.name,
                         dtype: t.dtype, shape: t.shape, bytes: .owned(b))
        }
        #expect { try UpcyclePlan(source: taken, experts: 8, topK: 2, maxDepth: 4) } throws: {
            ($0 as? VFFNError)?.message == "missing FFN tensor \"model.layers.0.mlp.up_proj.weight\" (expected shape [64, 32])"
        }
        // A source that already holds a tensor under a gate's name, beside all its own.
        let extra = makeTemporaryDirectory() + "/m"
        try copyDirectory(Fixtures.path("mistral-f16"), to: extra)
        let original = try SafeTensorsFile(path: Fixtures.path("mistral-f16/model.safetensors"))
        let records = original.tensors.map { TensorRecord(name: $0.name, dtype: $0.dtype, shape: $0.shape, bytes: .tensor(original, $0)) }
        let squatter = TensorRecord(name: "model.layers.1.mlp.depth_predictor.weight", dtype: .F16, shape: [4, 32], bytes: .owned([UInt8](repeating: 0, count: 256)))
        try SafeTensorsWriter.write(records + [squatter], metadata: nil, to: extra + "/model.safetensors")
        #expect { try UpcyclePlan(source: Checkpoint(path: extra), experts: 8, topK: 2, maxDepth: 4) } throws: {
            ($0 as? VFFNError)?.message == "already holds a tensor named \"model.layers.1.mlp.depth_predictor.weight\""
        }
        // FFN weights stored as integers cannot be sliced into float sub-experts.
        let ints = try mistral { t, b in TensorRecord(name: t.name, dtype: t.name.hasSuffix("mlp.down_proj.weight") ? .I16 : t.dtype, shape: t.shape, bytes: .owned(b)) }
        #expect { try UpcyclePlan(source: ints, experts: 8, topK: 2, maxDepth: 4) } throws: {
            ($0 as? VFFNError)?.message == "tensor \"model.layers.0.mlp.down_proj.weight\" has dtype I16; FFN weights must be F32, F16 or BF16"
        }
    }

    @Test func existingDestinationIsKeptWithoutForce() throws {
        let dir = makeTemporaryDirectory()
        let dst = dir + "/dst"
        try FileManager.default.createDirectory(atPath: dst, withIntermediateDirectories: false)
        writeFile(dst + "/keep", "mine")
        let plan = try UpcyclePlan(source: Checkpoint(path: Fixtures.path("mistral-f16")), experts: 8, topK: 2, maxDepth: 4)
        #expect(throws: VFFNError.self) { try plan.write(to: dst) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dst) == ["keep"])
        // --force replaces only what this tool wrote: the user's directory stays as it is.
        #expect(throws: VFFNError.self) { try plan.write(to: dst, force: true) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dst) == ["keep"])
        let own = dir + "/own"
        try plan.write(to: own)
        try plan.write(to: own, force: true)
        #expect(FileManager.default.fileExists(atPath: own + "/model.safetensors"))
        // The replaced output is gone whole: no temporary or set-aside copy is left beside it.
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == ["dst", "own"])
    }

    @Test func refusesToWriteOverOrInsideTheSource() throws {
        let dir = makeTemporaryDirectory() + "/src"
        try copyDirectory(Fixtures.path("mistral-f16"), to: dir)
        let plan = try UpcyclePlan(source: Checkpoint(path: dir), experts: 8, topK: 2, maxDepth: 4)
        for dst in [dir, dir + "/", dir + "/inner", (dir as NSString).deletingLastPathComponent] {
            #expect(throws: VFFNError.self) { try plan.write(to: dst, force: true) }
        }
        #expect(try Checkpoint(path: dir).tensorNames.count == 21)
    }

    @Test func failedWriteLeavesNothingBehind() throws {
        var plan = try UpcyclePlan(source: Checkpoint(path: Fixtures.path("mistral-f16")), experts: 8, topK: 2, maxDepth: 4)
        plan.layers[1].expertGate.removeLast()
        let dir = makeTemporaryDirectory()
        #expect(throws: VFFNError.self) { try plan.write(to: dir + "/dst") }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)
    }
}

@Suite struct VerifyFailureTests {
    func converted() throws -> String {
        let dst = makeTemporaryDirectory() + "/c"
        try UpcyclePlan(source: Checkpoint(path: Fixtures.path("mistral-f16")), experts: 8, topK: 2, maxDepth: 4).write(to: dst)
        return dst
    }

    /// Overwrites bytes of one tensor in place, keeping the file valid.
    func patch(_ dir: String, tensor: String, bytes: [UInt8]) throws {
        let c = try Checkpoint(path: dir)
        let shard = try #require(c.shard(of: tensor) as? SafeTensorsFile)
        let start = 8 + shard.headerSize + shard.info(tensor)!.dataOffsets.lowerBound
        var data = Array(FileManager.default.contents(atPath: shard.path)!)
        data.replaceSubrange(start..<start + bytes.count, with: bytes)
        writeFile(shard.path, data)
    }

    @Test func detectsAChangedDenseTensor() throws {
        let dst = try converted()
        try patch(dst, tensor: "model.layers.1.mlp.up_proj.weight", bytes: [0x00, 0x3C])
        let report = try Verifier.verify(destination: dst, source: Fixtures.path("mistral-f16"))
        let check = try #require(report.checks.first { $0.name == "dense tensors bit-identical" })
        #expect(!check.passed)
        #expect(check.detail == "1 differ: model.layers.1.mlp.up_proj.weight: bytes differ")
        #expect(!report.passed)
    }

    @Test func detectsNaNGatesAndNaNWeights() throws {
        let dst = try converted()
        try patch(dst, tensor: "model.layers.0.mlp.depth_predictor.weight", bytes: [0x00, 0x7E])
        let report = try Verifier.verify(destination: dst)
        #expect(report.checks.first { $0.name == "gates finite" }?.passed == false)
        #expect(!report.passed)

        let dst2 = try converted()
        try patch(dst2, tensor: "model.layers.0.mlp.down_proj.weight", bytes: [0x00, 0x7C])  // +Inf
        let report2 = try Verifier.verify(destination: dst2)
        #expect(report2.checks.first { $0.name == "dense forward finite" }?.passed == false)
        #expect(!report2.passed)
    }

    @Test func refusesADenseCheckpoint() {
        #expect(throws: VFFNError.self) { try Verifier.verify(destination: Fixtures.path("mistral-f16")) }
    }
}

@Suite struct RemoteCodeTests {
    static let cases: [(fixture: String, autoClass: String, modelClass: String)] = [
        ("llama-gqa-sharded", "AutoModelForCausalLM", "VersatileLlamaForCausalLM"),
        ("mistral-f16", "AutoModelForCausalLM", "VersatileMistralForCausalLM"),
        ("qwen2-bf16-tied", "AutoModelForCausalLM", "VersatileQwen2ForCausalLM"),
        ("qwen3-tiny", "AutoModelForCausalLM", "VersatileQwen3ForCausalLM"),
        ("smollm3-bf16-4x", "AutoModelForCausalLM", "VersatileSmolLM3ForCausalLM"),
        ("granite-bf16-4x", "AutoModelForCausalLM", "VersatileGraniteForCausalLM"),
        ("olmo-clip-bf16-4x", "AutoModelForCausalLM", "VersatileOlmoForCausalLM"),
        ("starcoder2-tiny", "AutoModelForCausalLM", "VersatileStarcoder2ForCausalLM"),
        ("phi3-longrope", "AutoModelForCausalLM", "VersatilePhi3ForCausalLM"),
        ("olmo2-bf16-4x", "AutoModelForCausalLM", "VersatileOlmo2ForCausalLM"),
        ("gemma-bf16-4x", "AutoModelForCausalLM", "VersatileGemmaForCausalLM"),
        ("gemma2-tiny", "AutoModelForCausalLM", "VersatileGemma2ForCausalLM"),
        ("gemma3-bf16-4x", "AutoModelForCausalLM", "VersatileGemma3ForCausalLM"),
        ("olmo3-tiny", "AutoModelForCausalLM", "VersatileOlmo3ForCausalLM"),
        ("gemma3-vlm-4x", "AutoModelForImageTextToText", "VersatileGemma3ForConditionalGeneration"),
        ("gpt-neox-tiny", "AutoModelForCausalLM", "VersatileGPTNeoXForCausalLM"),
        ("phi-bf16-4x", "AutoModelForCausalLM", "VersatilePhiForCausalLM"),
        ("cohere-tiny", "AutoModelForCausalLM", "VersatileCohereForCausalLM"),
        ("cohere2-bf16-4x", "AutoModelForCausalLM", "VersatileCohere2ForCausalLM"),
        ("gpt2-noprefix-f16", "AutoModelForCausalLM", "VersatileGPT2LMHeadModel"),
        ("bert-tiny", "AutoModel", "VersatileBertModel"),
    ]

    /// Every declared family has its class in the Python module, built on the stock class its
    /// name promises: a family added without its remote code fails here, not in a user's trainer.
    @Test func everyFamilyHasItsRemoteCodeClass() throws {
        let module = String(decoding: RemoteCode.source, as: UTF8.self)
        for family in Architectures.families {
            #expect(module.contains("class \(family.remoteCodeClass)("), "\(family.modelType): no class \(family.remoteCodeClass)")
            #expect(["AutoModelForCausalLM", "AutoModel", "AutoModelForImageTextToText"].contains(family.autoClass))
            #expect((family.autoClass == "AutoModel") == (family.output == .hiddenStates), "\(family.modelType)")
        }
        #expect(Architectures.supportedModelTypes == ["llama", "mistral", "qwen2", "qwen3", "smollm3", "granite", "olmo", "starcoder2", "phi3", "gemma", "gemma2", "gemma3_text", "gemma3", "olmo2", "olmo3", "gpt_neox", "phi", "cohere", "cohere2", "gpt2", "bert"])
        #expect(Architectures.families.filter(\.olmoLayout).map(\.modelType) == ["llama", "mistral", "qwen2", "olmo", "olmo2"])
        #expect(Architectures.families.filter { $0.topology != .preNorm }.map { "\($0.modelType) \($0.topology.rawValue)" } == ["granite scaled pre-norm", "gemma2 sandwich", "gemma3_text sandwich", "gemma3 sandwich", "olmo2 output-norm",
                                                                                                                         "olmo3 output-norm", "gpt_neox parallel", "phi parallel", "cohere parallel",
                                                                                                                         "cohere2 parallel", "bert post-norm"])
    }

    /// The module written is the package's resource byte for byte, and config.json names the
    /// class of the checkpoint's model_type (the Python side is checked by `make test-interop`).
    @Test(arguments: cases.map(\.fixture))
    func emitModelingWritesTheModuleAndAutoMap(fixture: String) throws {
        let expected = Self.cases.first { $0.fixture == fixture }!
        let plan = try UpcyclePlan(source: Checkpoint(path: Fixtures.path(fixture)), experts: 4, topK: 2, maxDepth: 2)
        let dst = makeTemporaryDirectory() + "/converted"
        try plan.write(to: dst, emitModeling: true)
        let written = try #require(FileManager.default.contents(atPath: dst + "/modeling_versatile_ffn.py"))
        let resource = try #require(FileManager.default.contents(atPath: Fixtures.packageRoot + "/Sources/VFFNSurgery/Resources/modeling_versatile_ffn.py"))
        #expect(written == resource)
        #expect(String(decoding: written, as: UTF8.self).contains("class \(expected.modelClass)("))
        let config = try Checkpoint(path: dst).config
        #expect(config["auto_map"]!.objectMembers!.map(\.0) == [expected.autoClass])
        #expect(config["auto_map"]![expected.autoClass]!.stringValue == "modeling_versatile_ffn." + expected.modelClass)
        #expect(try Verifier.verify(destination: dst, source: Fixtures.path(fixture)).passed)

        // Without the option, neither the module nor auto_map.
        let plain = makeTemporaryDirectory() + "/plain"
        try plan.write(to: plain)
        #expect(!FileManager.default.fileExists(atPath: plain + "/modeling_versatile_ffn.py"))
        #expect(try Checkpoint(path: plain).config["auto_map"] == nil)
    }

    @Test func emitModelingInsideAContainerAndKeepsOtherAutoMapEntries() throws {
        let src = makeTemporaryDirectory() + "/src"
        try copyDirectory(Fixtures.path("llama-gqa-sharded"), to: src)
        let config = try Checkpoint(path: src).config.setting("auto_map", to: .object([
            ("AutoTokenizer", .string("tokenization_custom.Custom")), ("AutoModelForCausalLM", .string("old.Model"))]))
        writeFile(src + "/config.json", config.pretty)
        let plan = try UpcyclePlan(source: Checkpoint(path: src), experts: 8, topK: 2, maxDepth: 4)
        let dst = makeTemporaryDirectory() + "/converted.vffn"
        try plan.write(to: dst, format: .vffn, emitModeling: true)
        let unpacked = makeTemporaryDirectory() + "/unpacked"
        try VFFNContainer(path: dst).unpack(to: unpacked)
        #expect(FileManager.default.contents(atPath: unpacked + "/modeling_versatile_ffn.py") == Data(RemoteCode.source))
        let autoMap = try Checkpoint(path: unpacked).config["auto_map"]!
        #expect(autoMap.objectMembers!.map(\.0) == ["AutoTokenizer", "AutoModelForCausalLM"])
        #expect(autoMap["AutoModelForCausalLM"]!.stringValue == "modeling_versatile_ffn.VersatileLlamaForCausalLM")
    }
}

/// `--output-format olmo`, read back with our torch reader. torch.load, the tensor-by-tensor
/// comparison and the OLMo-layout forward pass are in `make test-interop`.
@Suite struct OLMoExportTests {
    func export(_ fixture: String, _ options: GateOptions = GateOptions()) throws -> (dir: String, file: TorchCheckpointFile, yaml: String) {
        let plan = try UpcyclePlan(source: Checkpoint(path: Fixtures.path(fixture)), experts: 8, topK: 2, maxDepth: 4, options: options)
        let dst = makeTemporaryDirectory() + "/olmo"
        try plan.write(to: dst, format: .olmo)
        let yaml = String(decoding: try #require(FileManager.default.contents(atPath: dst + "/config.yaml")), as: UTF8.self)
        return (dst, try TorchCheckpointFile(path: dst + "/model.pt"), yaml)
    }

    /// OLMo 1 goes back to its own layout in its own terms: no norm tensors (its LayerNorms have
    /// no parameters), layer_norm_type default without affine, and 1.7's clip_qkv.
    @Test(arguments: [("olmo-tiny", "null"), ("olmo-clip-bf16-4x", "1.5")])
    func olmoReturnsToItsOwnLayout(fixture: String, clip: String) throws {
        let (_, file, yaml) = try export(fixture)
        #expect(!file.tensors.contains { $0.name.contains("norm") }, "\(file.tensors.map(\.name))")
        #expect(file.tensors.count == 1 + 2 * 6 + (fixture == "olmo-tiny" ? 1 : 0)) // wte; per block 6; an untied head
        for line in ["  layer_norm_type: default", "  layer_norm_with_affine: false", "  layer_norm_eps: 1.0e-05", "  clip_qkv: \(clip)"] {
            #expect(yaml.contains(line + "\n"), "config.yaml lacks \(line)")
        }
    }

    /// OLMo 2 goes back to OLMo in OLMo's terms for it: norm_after, with attn_norm and ff_norm
    /// holding the norms on the attention and FFN outputs, and full-width q/k norms.
    @Test func olmo2ReturnsWithNormAfterAndQKNorms() throws {
        let (_, file, yaml) = try export("olmo2-bf16-4x")
        let src = try Checkpoint(path: Fixtures.path("olmo2-bf16-4x"))
        let l = "model.layers.1.", b = "transformer.blocks.1."
        for (olmo, hf) in [("attn_norm", "post_attention_layernorm"), ("ff_norm", "post_feedforward_layernorm"),
                           ("q_norm", "self_attn.q_norm"), ("k_norm", "self_attn.k_norm")] {
            #expect(Array(try file.bytes(file.info(b + olmo + ".weight")!)) == Array(try src.bytes(l + hf + ".weight")!), "\(olmo)")
        }
        // Attention biases (attention_bias true) make every linear biased.
        #expect(file.tensors.count == 1 + 2 * 14 + 1, "\(file.tensors.map(\.name))") // wte; per block 14; ln_f; tied
        for line in ["  norm_after: true", "  attention_layer_norm: true", "  attention_layer_norm_with_affine: true", "  layer_norm_type: rms",
                     "  include_bias: true", "  weight_tying: true", "  layer_norm_eps: 1.0e-05", "    block: output-norm"] {
            #expect(yaml.contains(line + "\n"), "config.yaml lacks \(line)")
        }
    }

    @Test func llamaFusesAttentionAndSwiGLUInOLMoOrder() throws {
        let (dir, file, yaml) = try export("llama-gqa-sharded")
        let src = try Checkpoint(path: Fixtures.path("llama-gqa-sharded"))
        func bytes(_ names: String...) throws -> [UInt8] { try names.flatMap { Array(try src.bytes($0)!) } }
        let l = "model.layers.1."
        #expect(Array(try file.bytes(file.info("transformer.blocks.1.att_proj.weight")!))
                == (try bytes(l + "self_attn.q_proj.weight", l + "self_attn.k_proj.weight", l + "self_attn.v_proj.weight")))
        #expect(Array(try file.bytes(file.info("transformer.blocks.1.ff_proj.weight")!))
                == (try bytes(l + "mlp.up_proj.weight", l + "mlp.gate_proj.weight")))
        #expect(file.info("transformer.blocks.1.att_proj.weight")!.shape == [32 + 16 + 16, 32])
        #expect(file.info("transformer.blocks.0.ff_proj.weight")!.shape == [128, 32])
        #expect(file.info("transformer.blocks.0.expert_gate.weight")!.shape == [8, 32])
        #expect(file.info("transformer.blocks.0.depth_predictor.weight")!.shape == [4, 32])
        #expect(Array(try file.bytes(file.info("transformer.ff_out.weight")!)) == (try bytes("lm_head.weight")))
        #expect(file.tensors.count == 1 + 2 * 8 + 2) // wte; per block 8; ln_f and the untied head
        #expect(!file.tensors.contains { $0.name.hasSuffix(".bias") })
        for line in ["  n_kv_heads: 2", "  mlp_hidden_size: 128  # ff_proj rows; SwiGLU halves it to 64", "  rope_theta: 500000", "  include_bias: false", "  weight_tying: false",
                     "  layer_norm_eps: 1.0e-05", "    num_experts: 8", "load_path: \"\(URL(fileURLWithPath: dir).standardizedFileURL.path)\""] {
            #expect(yaml.contains(line + "\n"), "config.yaml lacks \(line)")
        }
        #expect(FileManager.default.fileExists(atPath: dir + "/generation_config.json"))
    }

    /// Qwen2's q/k/v biases need OLMo's include_bias, which gives every linear a bias: the ones
    /// the source lacks are written as zeros, so the function is unchanged.
    @Test func qwen2BiasesAndTiedHead() throws {
        let (_, file, yaml) = try export("qwen2-bf16-tied")
        #expect(yaml.contains("  include_bias: true\n") && yaml.contains("  weight_tying: true\n"))
        #expect(file.info("transformer.ff_out.weight") == nil)
        let zeros = try file.bytes(file.info("transformer.blocks.0.ff_proj.bias")!)
        #expect(zeros.count == 2 * 96 * 2 && zeros.allSatisfy { $0 == 0 })
        let src = try Checkpoint(path: Fixtures.path("qwen2-bf16-tied"))
        let qkv = try ["q", "k", "v"].flatMap { Array(try src.bytes("model.layers.0.self_attn.\($0)_proj.bias")!) }
        #expect(Array(try file.bytes(file.info("transformer.blocks.0.att_proj.bias")!)) == qkv)
        #expect(file.info("transformer.blocks.0.att_proj.weight")!.dtype == .BF16)
    }

    /// Gates made for one block are not run in another: a converted GPT-NeoX whose config was
    /// edited to the sequential block since is refused with one line.
    @Test func recordedBlockMustMatchTheConfig() throws {
        let dst = makeTemporaryDirectory() + "/c"
        try UpcyclePlan(source: Checkpoint(path: Fixtures.path("gpt-neox-tiny")), experts: 4, topK: 2, maxDepth: 2).write(to: dst)
        #expect(try Checkpoint(path: dst).config["versatile_ffn"]?["block"]?.stringValue == "parallel")
        let config = try Checkpoint.readJSON(dst + "/config.json", what: "config")
        writeFile(dst + "/config.json", config.setting("use_parallel_residual", to: .bool(false)).pretty)
        let error = try #require(throws: VFFNError.self) { try Architectures.load(Checkpoint(path: dst)) }
        #expect(error.message == "versatile_ffn.block is \"parallel\" but this config.json makes pre-norm blocks; the gates were made for the recorded one")
    }

    @Test func refusesWhatOLMoCannotHold() throws {
        let dst = makeTemporaryDirectory() + "/olmo"
        for (fixture, message) in [("gpt2-tiny", "--output-format olmo cannot express model_type gpt2: learned positions, LayerNorm with biases and a GELU FFN (it takes llama, mistral, qwen2, olmo, olmo2)"),
                                   ("qwen3-tiny", "--output-format olmo cannot express model_type qwen3: per-head q/k norms (OLMo's block has none; OLMo 2's span the whole projection) (it takes llama, mistral, qwen2, olmo, olmo2)"),
                                   ("olmo3-tiny", "--output-format olmo cannot express model_type olmo3: sliding-window layers with a rotary embedding of their own (it takes llama, mistral, qwen2, olmo, olmo2)"),
                                   ("phi-tiny", "--output-format olmo cannot express model_type phi: parallel attention and FFN (OLMo's block is sequential) (it takes llama, mistral, qwen2, olmo, olmo2)"),
                                   ("gpt-neox-bf16-4x", "--output-format olmo cannot express model_type gpt_neox: parallel attention and FFN, LayerNorms with biases and an ungated GELU FFN (it takes llama, mistral, qwen2, olmo, olmo2)"),
                                   ("llama3-rope", "rope type \"llama3\" has no OLMo equivalent (OLMo's rotary embedding is unscaled)")] {
            let plan = try UpcyclePlan(source: Checkpoint(path: Fixtures.path(fixture)), experts: 4, topK: 2, maxDepth: 2)
            let error = try #require(throws: VFFNError.self) { try plan.write(to: dst, format: .olmo) }
            #expect(error.message == message)
            #expect(!FileManager.default.fileExists(atPath: dst))
        }
        let plan = try UpcyclePlan(source: Checkpoint(path: Fixtures.path("llama-gqa-sharded")), experts: 4, topK: 2, maxDepth: 2)
        #expect(throws: VFFNError.self) { try plan.write(to: dst, format: .olmo, emitModeling: true) }
        // A tensor the layout has no place for is refused rather than dropped; a rotary cache
        // (old checkpoints carry one) is not needed.
        let src = makeTemporaryDirectory() + "/src"
        try copyDirectory(Fixtures.path("mistral-f16"), to: src)
        let file = try SafeTensorsFile(path: src + "/model.safetensors")
        var records = file.tensors.map { TensorRecord(name: $0.name, dtype: $0.dtype, shape: $0.shape, bytes: .owned(Array(file.bytes($0)))) }
        records.append(TensorRecord(name: "model.layers.0.self_attn.rotary_emb.inv_freq", dtype: .F32, shape: [4], bytes: .owned([UInt8](repeating: 0, count: 16))))
        try SafeTensorsWriter.write(records, metadata: file.metadata, to: src + "/model.safetensors")
        try UpcyclePlan(source: Checkpoint(path: src), experts: 4, topK: 2, maxDepth: 2).write(to: dst, format: .olmo)
        try FileManager.default.removeItem(atPath: dst)
        records.append(TensorRecord(name: "model.extra_scale", dtype: .F16, shape: [2], bytes: .owned([0, 0, 0, 0])))
        try SafeTensorsWriter.write(records, metadata: file.metadata, to: src + "/model.safetensors")
        let extra = try UpcyclePlan(source: Checkpoint(path: src), experts: 4, topK: 2, maxDepth: 2)
        let error = try #require(throws: VFFNError.self) { try extra.write(to: dst, format: .olmo) }
        #expect(error.message == "tensor \"model.extra_scale\" has no place in an OLMo checkpoint")
        #expect(!FileManager.default.fileExists(atPath: dst))
    }
}

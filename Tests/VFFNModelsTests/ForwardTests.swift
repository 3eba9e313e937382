import Foundation
import Testing
import TestSupport
import VFFNFormats
import VFFNModels

/// The forward pass against transformers (dense) and the generator's PyTorch transcription of
/// SPEC section 1 (VersatileFFN), on checkpoints written by transformers and safetensors.
@Suite struct GoldenTests {
    static let tolerance: Float = 1e-4

    /// The golden's file name: logits for causal LMs, last hidden states for encoders.
    static func golden(_ fixture: String, dense: Bool) -> String {
        "\(fixture)\(dense ? "-dense" : "")-\(fixture.hasPrefix("bert") ? "hidden" : "logits").npy"
    }

    @Test(arguments: ["llama-gqa-sharded", "qwen2-bf16-tied", "mistral-f16", "llama3-rope", "qwen3-tiny", "qwen3-bf16-4x",
                      "smollm3-tiny", "smollm3-bf16-4x", "granite-tiny", "granite-bf16-4x", "olmo-tiny",
                      "olmo-clip-bf16-4x", "starcoder2-tiny", "starcoder2-bf16-4x", "phi3-longrope", "phi3-bf16-4x",
                      "olmo2-tiny", "olmo2-bf16-4x", "gemma-tiny", "gemma-bf16-4x", "gemma2-tiny",
                      "gemma2-bf16-4x", "gemma3-tiny", "gemma3-bf16-4x", "gemma3-vlm-4x", "olmo3-tiny", "olmo3-bf16-4x",
                      "olmo2-bf16-sharded", "gemma2-bf16-sharded", "gpt-neox-tiny", "gpt-neox-bf16-4x", "gpt-neox-pythia-bin", "phi-tiny", "phi-bf16-4x",
                      "cohere-tiny", "cohere-bf16-4x", "cohere2-tiny", "cohere2-bf16-4x",
                      "gpt2-tiny", "gpt2-noprefix-f16", "bert-tiny", "bert-noprefix-bf16"])
    func denseOutputMatchesTransformers(fixture: String) throws {
        let model = try Architectures.load(Checkpoint(path: Fixtures.path(fixture)))
        let out = try model.forward(Fixtures.tokens, mode: .dense, trace: false).output
        let golden = try Fixtures.golden(Self.golden(fixture, dense: true))
        #expect([out.rows, out.cols] == golden.shape)
        #expect(golden.shape[1] == (fixture.hasPrefix("bert") ? model.hiddenSize : model.vocabSize))
        let err = relativeError(out.data, golden.values)
        #expect(err < Self.tolerance, "\(fixture): relative error \(err)")
    }

    @Test(arguments: [("llama-gqa-vffn", 2), ("qwen2-bf16-vffn", 3), ("qwen3-vffn", 2), ("smollm3-vffn", 2), ("granite-vffn", 2), ("olmo-vffn", 2), ("starcoder2-vffn", 2), ("phi3-vffn", 2), ("olmo2-vffn", 2), ("gemma-vffn", 2), ("gemma2-vffn", 2), ("gemma3-vffn", 2), ("olmo3-vffn", 2), ("gpt-neox-vffn", 2), ("phi-vffn", 2), ("cohere-vffn", 2), ("cohere2-vffn", 2), ("gpt2-noprefix-vffn", 2), ("bert-tiny-vffn", 2)])
    func versatileOutputMatchesPyTorchReference(fixture: String, topK: Int) throws {
        let model = try Architectures.load(Checkpoint(path: Fixtures.path(fixture)))
        let result = try model.forward(Fixtures.tokens, mode: .versatile(), trace: false)
        let golden = try Fixtures.golden(Self.golden(fixture, dense: false))
        let err = relativeError(result.output.data, golden.values)
        #expect(err < Self.tolerance, "\(fixture): relative error \(err)")
        // The routing is not degenerate: several depths and several experts are in use.
        for r in result.routing {
            #expect(r.depthCounts.reduce(0, +) == Fixtures.tokens.count)
            #expect(r.depthCounts.filter { $0 > 0 }.count >= 2)
            #expect(r.expertLoad.reduce(0, +) == Fixtures.tokens.count * topK)
        }
        // And it is not the dense model by accident: ten times the tolerance away from it (Granite's
        // residual multiplier 0.22 keeps every FFN branch small, so the gap is 9e-3 there).
        let dense = try model.forward(Fixtures.tokens, mode: .dense, trace: false)
        #expect(relativeError(dense.output.data, golden.values) > 10 * Self.tolerance)
    }

    /// The same weights in another format give the same output, bit for bit.
    /// GGUFs against transformers: llama3 rope scaling (from rope_freqs) against the original
    /// safetensors, Qwen2 against transformers' own GGUF loader.
    @Test(arguments: [("gguf/llama3-rope-f32.gguf", "llama3-rope-dense-logits.npy"), ("gguf/qwen2-bf16.gguf", "qwen2-bf16-gguf-logits.npy")])
    func ggufRunsAsTransformersRunsIt(fixture: String, golden: String) throws {
        let out = try Architectures.load(Checkpoint(path: Fixtures.path(fixture))).forward(Fixtures.tokens, mode: .dense, trace: false).output
        #expect(relativeError(out.data, try Fixtures.golden(golden).values) < Self.tolerance)
    }

    @Test(arguments: [("gguf/llama-gqa-f32.gguf", "llama-gqa-sharded"), ("gguf/llama-gqa-f32-v2.gguf", "llama-gqa-sharded"),
                      ("gguf/qwen2-bf16.gguf", "qwen2-bf16-tied"), ("gguf/qwen3-tiny-f32.gguf", "qwen3-tiny"), ("llama-bin-deflated", "llama-gqa-sharded"), ("gpt2-bin-sharded", "gpt2-tiny"), ("bert-tiny-bin", "bert-tiny")])
    func otherFormatsRunExactlyAsTheirSafetensorsTwin(fixture: String, twin: String) throws {
        let a = try Architectures.load(Checkpoint(path: Fixtures.path(fixture))).forward(Fixtures.tokens, mode: .dense, trace: false).output
        let b = try Architectures.load(Checkpoint(path: Fixtures.path(twin))).forward(Fixtures.tokens, mode: .dense, trace: false).output
        #expect(a.data == b.data)
    }

    /// Q8_0 against transformers' own GGUF loader (same dequantized weights) and against the f32
    /// originals (what quantization costs: 1.5e-2 relative on these order-one weights).
    @Test func q8_0GGUFMatchesTransformersWithinRoundingAndTheOriginalWithinQuantization() throws {
        let out = try Architectures.load(Checkpoint(path: Fixtures.path("gguf/llama-gqa-q8_0.gguf"))).forward(Fixtures.tokens, mode: .dense, trace: false).output
        #expect(relativeError(out.data, try Fixtures.golden("llama-gqa-q8_0-gguf-logits.npy").values) < Self.tolerance)
        let quantization = relativeError(out.data, try Fixtures.golden("llama-gqa-sharded-dense-logits.npy").values)
        #expect(quantization > 1e-3 && quantization < 3e-2, "Q8_0 vs f32: \(quantization)")
        #expect(relativeError(try Fixtures.golden("llama-gqa-f32-gguf-logits.npy").values, try Fixtures.golden("llama-gqa-sharded-dense-logits.npy").values) == 0)
    }

    @Test func denseModeOfAConvertedCheckpointIsTheSourceModel() throws {
        let converted = try Architectures.load(Checkpoint(path: Fixtures.path("qwen2-bf16-vffn")))
        let source = try Architectures.load(Checkpoint(path: Fixtures.path("qwen2-bf16-tied")))
        let a = try converted.forward(Fixtures.tokens, mode: .dense, trace: false).output
        let b = try source.forward(Fixtures.tokens, mode: .dense, trace: false).output
        #expect(a.data == b.data)
    }

    /// A trainer saving through another class respells the base prefix (GPT2LMHeadModel adds
    /// `transformer.`, BertModel drops `bert.`) while config.json keeps the gate names it had:
    /// the gates are found under the new spelling, and the model computes the same.
    @Test(arguments: [("gpt2-noprefix-vffn", "+transformer."), ("bert-tiny-vffn", "-bert.")])
    func gatesFollowARespelledBasePrefix(fixture: String, respelling: String) throws {
        let dir = makeTemporaryDirectory() + "/resaved"
        try copyDirectory(Fixtures.path(fixture), to: dir)
        let prefix = String(respelling.dropFirst()), adding = respelling.hasPrefix("+")
        try rewriteTensors(dir) { info, bytes in
            // BertModel keeps no pre-training heads (cls.*); GPT2LMHeadModel's head is outside the base model.
            let name = adding ? (info.name == "lm_head.weight" ? info.name : prefix + info.name)
                              : (info.name.hasPrefix(prefix) ? String(info.name.dropFirst(prefix.count)) : nil)
            return name.map { TensorRecord(name: $0, dtype: info.dtype, shape: info.shape, bytes: .owned(bytes)) }
        }
        let resaved = try Checkpoint(path: dir)
        #expect(resaved.contains(adding ? "transformer.h.0.mlp.expert_gate.weight" : "encoder.layer.0.expert_gate.weight"))
        let a = try Architectures.load(resaved).forward(Fixtures.tokens, mode: .versatile(), trace: false).output
        let b = try Architectures.load(Checkpoint(path: Fixtures.path(fixture))).forward(Fixtures.tokens, mode: .versatile(), trace: false).output
        #expect(a.data == b.data)
    }

    @Test func depthLimitOneIsExactlyDense() throws {
        let model = try Architectures.load(Checkpoint(path: Fixtures.path("llama-gqa-vffn")))
        let a = try model.forward(Fixtures.tokens, mode: .versatile(depthLimit: 1), trace: true)
        let b = try model.forward(Fixtures.tokens, mode: .dense, trace: true)
        #expect(a.output.data == b.output.data)
        #expect(a.routing.allSatisfy { $0.depthCounts[0] == Fixtures.tokens.count })
    }
}

@Suite struct ModelErrorTests {
    func copy(_ fixture: String) throws -> String {
        let dir = makeTemporaryDirectory() + "/m"
        try copyDirectory(Fixtures.path(fixture), to: dir)
        return dir
    }

    func editConfig(_ dir: String, _ edit: (JSON) -> JSON) throws {
        let c = try Checkpoint.readJSON(dir + "/config.json", what: "config")
        writeFile(dir + "/config.json", edit(c).pretty)
    }

    func expectError(_ dir: String, _ message: String, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try Architectures.load(Checkpoint(path: dir))
            Issue.record("loaded", sourceLocation: sourceLocation)
        } catch {
            #expect(error.description.contains(message), "\(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func unknownOrMissingModelType() throws {
        let dir = try copy("mistral-f16")
        try editConfig(dir) { $0.setting("model_type", to: .string("mamba")) }
        expectError(dir, "model_type \"mamba\" is not supported (supported: llama, mistral, qwen2, qwen3, smollm3, granite, olmo, starcoder2, phi3, gemma, gemma2, gemma3_text, gemma3, olmo2, olmo3, gpt_neox, phi, cohere, cohere2, gpt2, bert)")
        try editConfig(dir) { .object($0.objectMembers!.filter { $0.0 != "model_type" }) }
        expectError(dir, "config.json: has no \"model_type\"")
    }

    /// The config says how the weights were quantized; the refusal names the method, as
    /// transformers writes it for GPTQ, AWQ, fp8 and bitsandbytes (which older versions spelled
    /// with load_in_4bit alone).
    @Test func quantizedCheckpointsAreRefusedByMethod() throws {
        let dir = try copy("mistral-f16")
        for (q, method) in [(#"{"quant_method": "gptq", "bits": 4, "group_size": 128}"#, "quant_method \"gptq\""),
                            (#"{"quant_method": "awq", "bits": 4, "version": "gemm"}"#, "quant_method \"awq\""),
                            (#"{"quant_method": "fp8", "activation_scheme": "dynamic"}"#, "quant_method \"fp8\""),
                            (#"{"load_in_4bit": true, "bnb_4bit_quant_type": "nf4"}"#, "quant_method \"bitsandbytes\""),
                            (#"{"bits": 8}"#, "quantization_config)")] {
            try editConfig(dir) { $0.setting("quantization_config", to: try! JSON.parse(q)) }
            expectError(dir, "config.json: is a quantized checkpoint (\(method.hasSuffix(")") ? method : "quantization_config, " + method + ")"); convert the unquantized model")
        }
        try editConfig(dir) { $0.setting("quantization_config", to: .null) }
        _ = try Architectures.load(Checkpoint(path: dir))
        // Without the config entry, the packed tensors themselves give a GPTQ upload away.
        let checkpoint = try Checkpoint(path: dir)
        var records: [TensorRecord] = []
        for name in checkpoint.tensorNames {
            let info = checkpoint.info(name)!
            let renamed = name == "model.layers.0.mlp.down_proj.weight" ? "model.layers.0.mlp.down_proj.qweight" : name
            records.append(TensorRecord(name: renamed, dtype: info.dtype, shape: info.shape, bytes: .owned(Array(try checkpoint.bytes(name)!))))
        }
        try FileManager.default.removeItem(atPath: dir + "/model.safetensors")
        try SafeTensorsWriter.write(records, metadata: nil, to: dir + "/model.safetensors")
        expectError(dir, "holds packed quantized weights (GPTQ/AWQ qweight: \"model.layers.0.mlp.down_proj.qweight\")")
    }

    /// Qwen3's per-head q/k norms are part of the function (fixtures/generate.py spreads their
    /// weights; with them reset to 1 transformers' logits move by 29%), and a checkpoint that
    /// lacks them is refused by name rather than run as a Qwen2.
    @Test func qwen3NeedsItsPerHeadNorms() throws {
        let dir = try copy("qwen3-bf16-4x")
        let checkpoint = try Checkpoint(path: dir)
        var records: [TensorRecord] = []
        for name in checkpoint.tensorNames where !name.hasSuffix("self_attn.q_norm.weight") {
            let info = checkpoint.info(name)!
            records.append(TensorRecord(name: name, dtype: info.dtype, shape: info.shape, bytes: .owned(Array(try checkpoint.bytes(name)!))))
        }
        try FileManager.default.removeItem(atPath: dir + "/model.safetensors")
        try SafeTensorsWriter.write(records, metadata: nil, to: dir + "/model.safetensors")
        expectError(dir, "model.layers.0.self_attn.q_norm.weight")
        // Its 4.x-style config has no head_dim-free spelling to fall back on: Qwen3's default is 128.
        let c = try Llama.Config(try JSON.parse(#"{"model_type": "qwen3", "vocab_size": 8, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4}"#), path: "config.json")
        #expect(c.headDim == 128 && c.qkNormPerHead)
    }

    /// Gemma 3's text tower under each spelling it is saved with (the original, transformers
    /// 5's in-memory one, and 5.23's save of a subclass), untied: the same logits, and the FFN
    /// sites under that spelling. (make test-interop's training step saves the third spelling
    /// with config.json naming the gates under the first, and verifies it.)
    @Test(arguments: ["model.language_model", "model.language_model.model"])
    func gemma3TextTowerUnderEachSpelling(base: String) throws {
        let dir = try copy("gemma3-vlm-4x")
        let checkpoint = try Checkpoint(path: dir)
        var records: [TensorRecord] = []
        for name in checkpoint.tensorNames {
            let info = checkpoint.info(name)!
            let renamed = name.hasPrefix("language_model.model.") ? base + name.dropFirst("language_model.model".count) : "model." + name
            records.append(TensorRecord(name: renamed, dtype: info.dtype, shape: info.shape, bytes: .owned(Array(try checkpoint.bytes(name)!))))
        }
        let embedding = records.first { $0.name.hasSuffix("embed_tokens.weight") }!
        records.append(TensorRecord(name: "lm_head.weight", dtype: embedding.dtype, shape: embedding.shape, bytes: embedding.bytes))
        try FileManager.default.removeItem(atPath: dir + "/model.safetensors")
        try SafeTensorsWriter.write(records, metadata: nil, to: dir + "/model.safetensors")
        try editConfig(dir) { $0.setting("tie_word_embeddings", to: .bool(false)) }
        let model = try Architectures.load(Checkpoint(path: dir))
        let out = try model.forward(Fixtures.tokens, mode: .dense, trace: false).output
        #expect(relativeError(out.data, try Fixtures.golden("gemma3-vlm-4x-dense-logits.npy").values) < GoldenTests.tolerance)
        let layout = try Architectures.lookup(Checkpoint(path: dir)).ffnLayout(Checkpoint(path: dir))
        #expect(layout.sites[5].prefix == base + ".layers.5.mlp")
    }

    /// SPEC 5: Gemma's embedding scale is sqrt(hidden_size) in the stored dtype. The bf16
    /// checkpoint's golden (sqrt(96) = 9.798 in bf16 is 9.8125) is missed by the same weights
    /// stored in f32, whose scale is unrounded; a converted checkpoint records the scale.
    @Test func gemmaEmbeddingScaleIsTheStoredDtypes() throws {
        let dir = try copy("gemma3-bf16-4x")
        let golden = try Fixtures.golden("gemma3-bf16-4x-dense-logits.npy").values
        let checkpoint = try Checkpoint(path: dir)
        #expect(try Llama.ffnLayout(checkpoint).embeddingScale == 9.8125)
        var records: [TensorRecord] = []
        for name in checkpoint.tensorNames {
            let info = checkpoint.info(name)!
            let values = try checkpoint.bytes(name)!.withUnsafeBytes { FloatCodec.decode($0, as: info.dtype) }
            records.append(TensorRecord(name: name, dtype: .F32, shape: info.shape, bytes: .owned(FloatCodec.encode(values, as: .F32))))
        }
        try FileManager.default.removeItem(atPath: dir + "/model.safetensors")
        try SafeTensorsWriter.write(records, metadata: nil, to: dir + "/model.safetensors")
        func error() throws -> Float {
            relativeError(try Architectures.load(Checkpoint(path: dir)).forward(Fixtures.tokens, mode: .dense, trace: false).output.data, golden)
        }
        #expect(try error() > 2 * GoldenTests.tolerance)
        try editConfig(dir) { $0.setting("versatile_ffn", to: try! JSON.parse(#"{"embedding_scale": 9.8125}"#)) }
        #expect(try Llama.ffnLayout(Checkpoint(path: dir)).embeddingScale == 9.8125)
    }

    /// SmolLM3's NoPE layers and windows, as SmolLM3Config derives them when a config leaves
    /// the lists out: RoPE is skipped in every interval-th layer, and with use_sliding_window
    /// those layers slide; without use_sliding_window nothing slides, whatever layer_types says.
    @Test func smolLM3DerivesItsLayerLists() throws {
        func config(_ extra: String) throws -> Llama.Config {
            try Llama.Config(try JSON.parse(#"{"model_type": "smollm3", "vocab_size": 8, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 8, "num_attention_heads": 4"# + extra + "}"), path: "config.json")
        }
        #expect(try config("").ropeLayers == [true, true, true, false, true, true, true, false])
        let sliding = try config(#", "no_rope_layer_interval": 2, "use_sliding_window": true, "sliding_window": 3"#)
        #expect(sliding.ropeLayers == [true, false, true, false, true, false, true, false])
        #expect(sliding.slidingWindows == [nil, 3, nil, 3, nil, 3, nil, 3])
        let off = try config(#", "sliding_window": 3, "layer_types": ["sliding_attention", "full_attention", "full_attention", "full_attention", "full_attention", "full_attention", "full_attention", "full_attention"]"#)
        #expect(off.slidingWindows.allSatisfy { $0 == nil })
        #expect(throws: VFFNError.self) { try config(#", "no_rope_layers": [1, 0]"#) }
        #expect(try config(#", "no_rope_layers": [0, 1, 1, 1, 1, 1, 1, 0]"#).ropeLayers == [false, true, true, true, true, true, true, false])
        // Another family never skips RoPE, even with the key present.
        #expect(try Llama.Config(try JSON.parse(#"{"model_type": "llama", "vocab_size": 8, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "no_rope_layers": [0, 0]}"#), path: "c").ropeLayers == [true, true])
    }

    /// A feature a family has in transformers but not here is refused by its key and value, not
    /// run as something else: a rope type we do not implement, a layer type we do not know, an
    /// unknown activation, rope per layer type in a family that has one.
    @Test func unimplementedFeaturesAreRefusedByKeyAndValue() throws {
        let dir = try copy("qwen3-tiny")
        try editConfig(dir) { $0.setting("rope_parameters", to: try! JSON.parse(#"{"rope_type": "proportional", "rope_theta": 1000000.0, "factor": 4.0}"#)) }
        expectError(dir, "rope_parameters rope type \"proportional\" is not supported (default, linear, llama3, dynamic, longrope, yarn)")
        try editConfig(dir) {
            $0.setting("rope_parameters", to: .null).setting("rope_scaling", to: try! JSON.parse(#"{"type": "proportional", "factor": 4.0}"#))
        }
        expectError(dir, "rope_scaling rope type \"proportional\" is not supported")
        try editConfig(dir) {
            $0.setting("rope_scaling", to: .null).setting("rope_parameters", to: try! JSON.parse(#"{"full_attention": {"rope_type": "default", "rope_theta": 10.0}}"#))
        }
        expectError(dir, "rope_parameters per layer type is not read for model_type \"qwen3\"")
        let bidirectional = try copy("gemma3-tiny")
        try editConfig(bidirectional) { $0.setting("use_bidirectional_attention", to: .bool(true)) }
        expectError(bidirectional, "use_bidirectional_attention (an embedding model's bidirectional attention) is not supported")
        let windows = try copy("qwen3-tiny")
        try editConfig(windows) { $0.setting("layer_types", to: try! JSON.parse(#"["chunked_attention", "full_attention"]"#)) }
        expectError(windows, "layer_types entry \"chunked_attention\" is not supported (full_attention, sliding_attention)")
        let act = try copy("starcoder2-tiny")
        try editConfig(act) { $0.setting("hidden_act", to: .string("quick_gelu")) }
        expectError(act, "hidden_act \"quick_gelu\" is not supported")
        let longrope = try copy("phi3-longrope")
        try editConfig(longrope) { c in
            var rope = c["rope_parameters"]!
            rope = rope.setting("short_factor", to: try! JSON.parse("[1.0]"))
            return c.setting("rope_parameters", to: rope)
        }
        expectError(longrope, "longrope short_factor must list 2 positive numbers (one per rotary frequency)")
    }

    /// Keys a config may leave out take the family's own default, as its transformers config
    /// class has it (a 4.x save omits values equal to the default).
    @Test func missingKeysTakeTheFamilysDefault() throws {
        func config(_ type: String, _ extra: String = "") throws -> Llama.Config {
            try Llama.Config(try JSON.parse(#"{"model_type": ""# + type + #"", "vocab_size": 8, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 30, "num_attention_heads": 4"# + extra + "}"), path: "config.json")
        }
        #expect(try config("smollm3").tieWordEmbeddings && config("starcoder2").tieWordEmbeddings)
        #expect(try !config("llama").tieWordEmbeddings && !config("qwen3").tieWordEmbeddings)
        #expect(try config("phi3").normEps == 1e-5 && config("llama").normEps == 1e-6)
        // Qwen2Config's max_window_layers defaults to 28: layers 28 and 29 slide.
        let q = try config("qwen2", #", "use_sliding_window": true, "sliding_window": 16"#)
        #expect(q.slidingWindows.enumerated().allSatisfy { $0.element == ($0.offset >= 28 ? 16 : nil) })
        // Phi-3's early "su" rope is longrope; its original context is the top-level key
        // (Phi3Config's 4096 when absent), whatever the nested one says.
        let factors = #""short_factor": [1, 1, 1, 1], "long_factor": [2, 2, 2, 2]"#
        let su = try config("phi3", #", "max_position_embeddings": 131072, "rope_scaling": {"type": "su", "#
                            + factors + #", "original_max_position_embeddings": 64}"#)
        #expect(su.longropeOriginal == 4096)
        #expect(abs(su.rotaryScale - Float((1 + log(32.0) / log(4096.0)).squareRoot())) < 1e-6)
        let top = try config("phi3", #", "max_position_embeddings": 131072, "original_max_position_embeddings": 8192, "rope_scaling": {"type": "longrope", "#
                             + factors + "}")
        #expect(top.longropeOriginal == 8192)
        // The parallel families, as transformers 5.23's configs read them: GPT-NeoX rotates a
        // quarter of each head at base 10000 (rotary_pct and rotary_emb_base win over the
        // partial_rotary_factor and rope_theta 4.46 also wrote; either alone is not read), Phi
        // half; Cohere's base is 500000 (4.x's class said 10000), its logits scaled by 1/16,
        // its q/k norms off; Cohere 2 slides three layers in four, rotating only those, and
        // takes head_dim from the hidden size whatever the config says.
        let neox = try config("gpt_neox")
        #expect(neox.rotaryDim == 2 && neox.ropeTheta == 10000 && neox.parallel && !neox.sharedNorm && neox.topology == .parallel)
        let both = try config("gpt_neox", #", "rotary_pct": 0.5, "partial_rotary_factor": 0.25, "rotary_emb_base": 9, "rope_theta": 7"#)
        #expect(both.rotaryDim == 4 && both.ropeTheta == 9)
        let lone = try config("gpt_neox", #", "partial_rotary_factor": 0.5, "rope_theta": 77"#)
        #expect(lone.rotaryDim == 2 && lone.ropeTheta == 10000)
        #expect(try config("gpt_neox", #", "use_parallel_residual": false"#).topology == .preNorm)
        let phi = try config("phi")
        #expect(phi.rotaryDim == 4 && phi.sharedNorm && phi.headBias && !phi.qkNormPerHead && !phi.tieWordEmbeddings)
        let cohere = try config("cohere", #", "partial_rotary_factor": 0.5"#)
        #expect(cohere.rotaryDim == 8, "Cohere's rotary embedding reads no fraction")
        #expect(cohere.ropeTheta == 500_000 && cohere.logitScale == 0.0625 && cohere.tieWordEmbeddings && !cohere.qkNormPerHead && cohere.interleavedRope)
        let cohere2 = try config("cohere2", #", "head_dim": 4"#)
        #expect(cohere2.headDim == 8 && cohere2.slidingWindows.prefix(8) == [4096, 4096, 4096, nil, 4096, 4096, 4096, nil] && cohere2.ropeLayers == cohere2.slidingLayers)
        // Without a window no layer rotates (transformers tests the window, not the layer type).
        #expect(try config("cohere2", #", "sliding_window": null"#).ropeLayers.allSatisfy { !$0 })
        #expect(try config("gpt_neox", #", "num_key_value_heads": 2"#).numKVHeads == 4)
    }

    /// YaRN's frequencies and attention factor, as transformers 5.23's _compute_yarn_parameters
    /// gives them for a Qwen3-style config (head_dim 16, theta 1e6, factor 4 over 32768).
    @Test func yarnFrequenciesMatchTransformers() throws {
        let c = try Llama.Config(try JSON.parse(#"{"model_type": "qwen3", "vocab_size": 8, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "head_dim": 16, "max_position_embeddings": 131072, "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}, "rope_theta": 1000000.0}"#), path: "c")
        let expected: [Float] = [1.0, 0.17782793939113617, 0.03162277862429619, 0.004217559937387705, 0.0005000000237487257,
                                 4.4456985051510856e-05, 7.905693564680405e-06, 1.405853367941745e-06]
        #expect(relativeError(c.inverseFrequencies, expected) < 1e-6, "\(c.inverseFrequencies)")
        #expect(abs(c.rotaryScale - 1.138629436111989) < 1e-6)
        #expect(c.slidingRotary == nil)
    }

    /// Gemma 3 and OLMo 3 rotate sliding and full layers differently: the 4.x keys and the 5.x
    /// nesting give each layer type its base, with scaling on the full layers only.
    @Test func ropePerLayerType() throws {
        func config(_ type: String, _ extra: String) throws -> Llama.Config {
            try Llama.Config(try JSON.parse(#"{"model_type": ""# + type + #"", "vocab_size": 8, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 6, "num_attention_heads": 4, "head_dim": 8"# + extra + "}"), path: "config.json")
        }
        let gemma = try config("gemma3_text", "")
        #expect(gemma.ropeTheta == 1_000_000 && gemma.slidingRotary?.theta == 10000)
        #expect(gemma.slidingWindows == [4096, 4096, 4096, 4096, 4096, nil])
        let legacy = try config("gemma3_text", #", "rope_theta": 1000.0, "rope_local_base_freq": 50.0, "sliding_window_pattern": 2, "sliding_window": 7, "rope_scaling": {"rope_type": "linear", "factor": 8.0}"#)
        #expect(legacy.ropeTheta == 1000 && legacy.slidingRotary?.theta == 50)
        #expect(legacy.inverseFrequencies[1] == 1 / powf(1000, 0.25) / 8)
        #expect(legacy.slidingRotary?.inverseFrequencies[1] == 1 / powf(50, 0.25))
        #expect(legacy.slidingWindows == [7, nil, 7, nil, 7, nil])
        // A 4.x top-level rope_theta is OLMo 3's full layers' base only (SPEC 5, transformers 5.23).
        let olmo = try config("olmo3", #", "rope_theta": 20000.0"#)
        #expect(olmo.ropeTheta == 20000 && olmo.slidingRotary?.theta == 500_000)
        #expect(olmo.slidingWindows == [4096, 4096, 4096, nil, 4096, 4096])
        let nested = try config("olmo3", #", "rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64, "rope_theta": 100.0}, "sliding_attention": {"rope_type": "default", "rope_theta": 10.0}}"#)
        #expect(nested.ropeType == "yarn" && nested.slidingRotary?.type == "default" && nested.slidingRotary?.theta == 10)
        #expect(abs(nested.rotaryScale - Float(0.1 * log(2.0) + 1)) < 1e-6 && nested.slidingRotary?.scale == 1)
        // Gemma 3 4B's text_config as its checkpoint has it: the difference from the defaults.
        let wrapper = try Llama.Config(try JSON.parse(#"{"model_type": "gemma3", "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text", "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024}}"#), path: "config.json")
        #expect([wrapper.vocabSize, wrapper.numHeads, wrapper.numKVHeads, wrapper.headDim] == [Int]([262_208, 8, 4, 256]))
        #expect(wrapper.attentionScale == Float(1) / 16 && wrapper.tieWordEmbeddings && wrapper.textTower)
        #expect(wrapper.slidingWindows.prefix(6) == [1024, 1024, 1024, 1024, 1024, nil])
        #expect(wrapper.inverseFrequencies[1] == 1 / powf(1_000_000, Float(2) / 256) / 8)
        #expect(wrapper.slidingRotary?.inverseFrequencies[1] == 1 / powf(10000, Float(2) / 256))
        #expect(throws: VFFNError.self) { try Llama.Config(try JSON.parse(#"{"model_type": "gemma3"}"#), path: "config.json") }
        // Gemma 2's soft-caps and window default as Gemma2Config has them; null turns one off.
        let gemma2 = try config("gemma2", #", "attn_logit_softcapping": null"#)
        #expect(gemma2.attentionSoftcap == nil && gemma2.finalLogitSoftcap == 30 && gemma2.slidingWindows[0] == 4096)
    }

    /// Each per-layer-type rope piece is part of the function: with it changed, the logits leave
    /// transformers' golden by far more than the tolerance (so the golden match is not luck).
    @Test(arguments: [
        ("gemma3-tiny", "sliding layers on the global base", #"{"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 50000.0}, "sliding_attention": {"rope_type": "default", "rope_theta": 50000.0}}"#),
        ("gemma3-tiny", "global layers unscaled", #"{"full_attention": {"rope_type": "default", "rope_theta": 50000.0}, "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}}"#),
        ("olmo3-tiny", "no YaRN on the full layer", #"{"full_attention": {"rope_type": "default", "rope_theta": 10000.0}, "sliding_attention": {"rope_type": "default", "rope_theta": 1000.0}}"#),
        ("olmo3-tiny", "sliding layers on the full base", #"{"full_attention": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "rope_theta": 10000.0}, "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}"#),
    ])
    func ropePerLayerTypeMatters(fixture: String, change: String, rope: String) throws {
        let dir = try copy(fixture)
        try editConfig(dir) { $0.setting("rope_parameters", to: try! JSON.parse(rope)) }
        let out = try Architectures.load(Checkpoint(path: dir)).forward(Fixtures.tokens, mode: .dense, trace: false).output
        let err = relativeError(out.data, try Fixtures.golden("\(fixture)-dense-logits.npy").values)
        #expect(err > 100 * GoldenTests.tolerance, "\(fixture), \(change): relative error only \(err)")
    }

    /// Each config-chosen piece of the parallel families is part of the function: changed, the
    /// logits leave transformers' golden by far more than the tolerance.
    @Test(arguments: [
        ("gpt-neox-tiny", "sequential", "use_parallel_residual", "false"),
        ("gpt-neox-tiny", "whole heads rotated", "rope_parameters", #"{"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 1.0}"#),
        ("gpt-neox-tiny", "another base", "rope_parameters", #"{"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}"#),
        ("gpt-neox-bf16-4x", "parallel", "use_parallel_residual", "true"),
        ("gpt-neox-bf16-4x", "4.x rotary_pct", "rotary_pct", "0.5"),
        ("gpt-neox-bf16-4x", "4.x rotary_emb_base", "rotary_emb_base", "100.0"),
        ("phi-tiny", "whole heads rotated", "rope_parameters", #"{"rope_type": "default", "rope_theta": 1000.0, "partial_rotary_factor": 1.0}"#),
        ("phi-bf16-4x", "4.x partial_rotary_factor", "partial_rotary_factor", "0.5"),
        ("cohere-tiny", "logit_scale", "logit_scale", "0.0625"),
        ("cohere-bf16-4x", "4.x rope_theta", "rope_theta", "10000.0"),
        ("cohere2-tiny", "rope on the last layer instead", "layer_types", #"["full_attention", "sliding_attention", "sliding_attention", "sliding_attention"]"#),
        ("cohere2-bf16-4x", "4.x sliding_window_pattern", "sliding_window_pattern", "4"),
    ])
    func parallelFamilyPiecesMatter(fixture: String, change: String, key: String, value: String) throws {
        let dir = try copy(fixture)
        try editConfig(dir) { $0.setting(key, to: try! JSON.parse(value)) }
        let out = try Architectures.load(Checkpoint(path: dir)).forward(Fixtures.tokens, mode: .dense, trace: false).output
        let err = relativeError(out.data, try Fixtures.golden("\(fixture)-dense-logits.npy").values)
        #expect(err > 100 * GoldenTests.tolerance, "\(fixture), \(change): relative error only \(err)")
    }

    @Test func parallelFamilyConfigsAndTensorsThatCannotDescribeTheModel() throws {
        let neox = try copy("gpt-neox-tiny")
        try editConfig(neox) { $0.setting("rope_parameters", to: try! JSON.parse(#"{"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.4}"#)) }
        expectError(neox, "rotary dimension 3 (head_dim x rotary_pct) is not even")
        let cohere = try copy("cohere-tiny")
        try editConfig(cohere) { $0.setting("logit_scale", to: .int(0)) }
        expectError(cohere, "logit_scale 0.0 must be finite and non-zero")
        // A Phi without its q/k norms' tensors, as qk_layernorm promises them.
        let phi = try copy("phi-bf16-4x")
        try editConfig(phi) { $0.setting("qk_layernorm", to: .bool(true)) }
        expectError(phi, "missing tensor \"model.layers.0.self_attn.q_layernorm.weight\"")
    }

    @Test func configValuesThatCannotDescribeTheModel() throws {
        let dir = try copy("mistral-f16")
        try editConfig(dir) { $0.setting("hidden_size", to: .string("32")) }
        expectError(dir, "\"hidden_size\" is \"32\", expected an integer")
        try editConfig(dir) { $0.setting("hidden_size", to: .int(32)).setting("num_key_value_heads", to: .int(3)) }
        expectError(dir, "num_attention_heads 4 is not a multiple of num_key_value_heads 3")
        try editConfig(dir) { $0.setting("num_key_value_heads", to: .int(1)).setting("rope_parameters", to: .object([("rope_type", .string("proportional"))])) }
        expectError(dir, "rope type \"proportional\" is not supported")
    }

    @Test func tensorShapeOrPresenceNotMatchingTheConfig() throws {
        let dir = try copy("mistral-f16")
        try editConfig(dir) { $0.setting("intermediate_size", to: .int(48)) }
        expectError(dir, "tensor \"model.layers.0.mlp.gate_proj.weight\" has shape [64, 32], expected [48, 32]")
        try editConfig(dir) { $0.setting("intermediate_size", to: .int(64)).setting("num_hidden_layers", to: .int(3)) }
        expectError(dir, "missing tensor \"model.layers.2.input_layernorm.weight\" (expected shape [32])")
        try editConfig(dir) { $0.setting("num_hidden_layers", to: .int(1)) }
        expectError(dir, "tensor(s) not part of the mistral model: \"model.layers.1.")
    }

    /// The same weights with config.json as transformers 4.x wrote it: `rope_theta` at the top
    /// level, no `layer_types`, `torch_dtype`, and (Qwen2) an unused sliding window.
    @Test(arguments: ["mistral-f16", "qwen2-bf16-tied"])
    func transformers4ConfigGivesTheSameLogits(fixture: String) throws {
        let dir = try copy(fixture)
        try editConfig(dir) { c in
            var v4 = JSON.object(c.objectMembers!.filter { !["rope_parameters", "layer_types", "dtype"].contains($0.0) })
                .setting("rope_theta", to: c["rope_parameters"]!["rope_theta"]!).setting("rope_scaling", to: .null)
                .setting("torch_dtype", to: .string("float16")).setting("transformers_version", to: .string("4.44.2"))
            if fixture.hasPrefix("qwen2") { v4 = v4.setting("sliding_window", to: .int(4)).setting("max_window_layers", to: .int(1)) }
            return v4
        }
        let model = try Architectures.load(Checkpoint(path: dir))
        let out = try model.forward(Fixtures.tokens, mode: .dense, trace: false).output
        #expect(relativeError(out.data, try Fixtures.golden("\(fixture)-dense-logits.npy").values) < 1e-4)
    }

    @Test func unsupportedActivationIsRefused() throws {
        let dir = try copy("mistral-f16")
        try editConfig(dir) { $0.setting("hidden_act", to: .string("gelu")) }
        expectError(dir, "hidden_act \"gelu\" is not supported for mistral (only silu)")
    }

    /// Renames (or, for nil, drops) a single-file fixture's tensors.
    func rewriteTensors(_ dir: String, _ rename: (String) -> String?) throws {
        try TestSupport.rewriteTensors(dir) { t, bytes in
            rename(t.name).map { TensorRecord(name: $0, dtype: t.dtype, shape: t.shape, bytes: .owned(bytes)) }
        }
    }

    func denseOutput(_ dir: String) throws -> [Float] {
        try Architectures.load(Checkpoint(path: dir)).forward(Fixtures.tokens, mode: .dense, trace: false).output.data
    }

    /// Checkpoints converted from TensorFlow name LayerNorm parameters gamma and beta.
    @Test func bertLayerNormAsGammaAndBeta() throws {
        let dir = try copy("bert-noprefix-bf16")
        try rewriteTensors(dir) { $0.replacingOccurrences(of: "LayerNorm.weight", with: "LayerNorm.gamma").replacingOccurrences(of: "LayerNorm.bias", with: "LayerNorm.beta") }
        #expect(try Checkpoint(path: dir).contains("encoder.layer.0.output.LayerNorm.gamma"))
        #expect(try denseOutput(dir) == (try denseOutput(Fixtures.path("bert-noprefix-bf16"))))
    }

    /// OpenAI's original GPT-2 config: `n_ctx` beside (or instead of) `n_positions`, no `n_inner`.
    @Test func gpt2ConfigAsOpenAIWroteIt() throws {
        let dir = try copy("gpt2-tiny")
        try editConfig(dir) { c in
            JSON.object(c.objectMembers!.filter { !["n_inner", "n_positions", "tie_word_embeddings", "dtype"].contains($0.0) })
                .setting("n_ctx", to: .int(64))
        }
        #expect(try denseOutput(dir) == (try denseOutput(Fixtures.path("gpt2-tiny"))))
        let model = try Architectures.load(Checkpoint(path: dir))
        // Learned positions end at 64 (GPT-2's wpe, BERT's position_embeddings).
        #expect(model.maxTokens == 64)
        for m in [model, try Architectures.load(Checkpoint(path: Fixtures.path("bert-tiny")))] {
            #expect { try m.forward(Array(repeating: 1, count: 65), mode: .dense, trace: false) } throws: {
                ($0 as? VFFNError)?.description == "65 tokens exceed the 64 positions this \(m.modelType) model covers"
            }
        }
    }

    @Test func gpt2AndBertConfigsOutsideWhatIsImplemented() throws {
        let gpt2 = try copy("gpt2-tiny")
        try editConfig(gpt2) { $0.setting("activation_function", to: .string("quick_gelu")) }
        expectError(gpt2, "activation_function \"quick_gelu\" is not supported (gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu, silu)")
        try editConfig(gpt2) { $0.setting("activation_function", to: .string("gelu_new")).setting("n_head", to: .int(5)) }
        expectError(gpt2, "n_embd 32 is not a multiple of n_head 5")
        let bert = try copy("bert-tiny")
        try editConfig(bert) { $0.setting("position_embedding_type", to: .string("relative_key")) }
        expectError(bert, "position_embedding_type \"relative_key\" is not supported (only absolute)")
        try editConfig(bert) { $0.setting("position_embedding_type", to: .string("absolute")).setting("is_decoder", to: .bool(true)) }
        expectError(bert, "BERT as a decoder")
    }

    @Test func gpt2AndBertKeysThatDoNotFit() throws {
        // Neither spelling of the token embedding: not a GPT-2 checkpoint at all.
        let gpt2 = try copy("gpt2-noprefix-f16")
        try rewriteTensors(gpt2) { $0 == "wte.weight" ? "embed.weight" : $0 }
        expectError(gpt2, "has no \"transformer.wte.weight\" or \"wte.weight\": not a gpt2 checkpoint")
        // A tensor inside the base model that no part of BERT reads is refused, not ignored.
        let bert = try copy("bert-tiny")
        try rewriteTensors(bert) { $0 == "bert.encoder.layer.1.output.LayerNorm.bias" ? "bert.encoder.layer.1.output.LayerNorm.extra" : $0 }
        expectError(bert, "missing tensor \"bert.encoder.layer.1.output.LayerNorm.bias\"")
        let extra = try copy("bert-noprefix-bf16")
        try rewriteTensors(extra) { $0 == "embeddings.position_ids" ? "encoder.rel_pos_bias" : $0 }
        expectError(extra, "1 tensor(s) not part of the bert model: \"encoder.rel_pos_bias\"")
    }

    @Test func tokensOutsideTheVocabulary() throws {
        let model = try Architectures.load(Checkpoint(path: Fixtures.path("mistral-f16")))
        #expect(throws: VFFNError.self) { try model.forward([1, 256], mode: .dense, trace: false) }
        #expect(throws: VFFNError.self) { try model.forward([], mode: .dense, trace: false) }
        // A dense checkpoint has no gates to run.
        #expect(throws: VFFNError.self) { try model.forward([1], mode: .versatile(), trace: false) }
    }

    @Test func rotaryParametersFromEitherTransformersGeneration() throws {
        // transformers 4 puts rope_theta at the top level, transformers 5 in rope_parameters.
        let v4 = try JSON.parse(#"{"model_type":"llama","vocab_size":8,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":1,"rope_theta":500000.0,"rope_scaling":null}"#)
        let v5 = try JSON.parse(#"{"model_type":"llama","vocab_size":8,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":1,"rope_parameters":{"rope_theta":500000.0,"rope_type":"default"}}"#)
        let a = try Llama.Config(v4, path: "v4").inverseFrequencies
        let b = try Llama.Config(v5, path: "v5").inverseFrequencies
        #expect(a == b)
        // 1 / 500000^(2i/8) for i = 0..3, by hand.
        let expected: [Float] = [1, 0.037606030, 0.0014142136, 5.3182959e-05]
        for (x, y) in zip(a, expected) { #expect(abs(x - y) / y < 1e-6) }
        let missing = try JSON.parse(#"{"model_type":"llama","vocab_size":8,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":1}"#)
        #expect(try Llama.Config(missing, path: "x").inverseFrequencies[1] == 1 / powf(10000, 0.25))
        // A null rope_parameters beside 4.x's rope_scaling: the latter is the one that counts.
        let dynamic = try JSON.parse(#"{"model_type":"llama","vocab_size":8,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":1,"max_position_embeddings":16,"rope_parameters":null,"rope_scaling":{"type":"dynamic","factor":2.0}}"#)
        let c = try Llama.Config(dynamic, path: "x")
        #expect(c.maxPositions == 16)
        #expect(c.inverseFrequencies == (try Llama.Config(missing, path: "x").inverseFrequencies))
        #expect(try Llama.Config(missing, path: "x").maxPositions == nil)
    }

    @Test func llama3RopeScalingKeepsHighAndScalesLowFrequencies() throws {
        let json = try JSON.parse(#"{"model_type":"llama","vocab_size":8,"hidden_size":64,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":1,"rope_theta":500000.0,"rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#)
        let scaled = try Llama.Config(json, path: "x").inverseFrequencies
        let plain = (0..<32).map { 1 / powf(500000, Float(2 * $0) / 64) }
        // Wavelength 2*pi/f below 8192/4 = 2048: unchanged; above 8192: divided by 8.
        for i in 0..<32 {
            let wavelen = 2 * Float.pi / plain[i]
            if wavelen < 2048 { #expect(scaled[i] == plain[i]) }
            if wavelen > 8192 { #expect(abs(scaled[i] - plain[i] / 8) <= 1e-6 * plain[i]) }
            if wavelen >= 2048 && wavelen <= 8192 { #expect(scaled[i] < plain[i] && scaled[i] > plain[i] / 8) }
        }
    }
}

import Foundation
import Testing
import TestSupport
@testable import VFFNFormats

/// GGUF: llama.cpp's layout mapped back to Hugging Face, and every malformed header refused.
@Suite struct GGUFTests {
    @Test(arguments: ["llama-gqa-f32.gguf", "llama-gqa-f32-v2.gguf"])
    func f32GGUFIsTheSafetensorsCheckpointByteForByte(file: String) throws {
        let g = try Checkpoint(path: Fixtures.path("gguf/" + file)), s = try Checkpoint(path: Fixtures.path("llama-gqa-sharded"))
        #expect(g.format == .gguf)
        #expect(g.tensorNames.sorted() == s.tensorNames.sorted())
        // Names mapped, dimensions reversed, Q/K un-permuted: every tensor equals the original.
        for name in s.tensorNames {
            #expect(g.info(name)!.shape == s.info(name)!.shape, "\(name)")
            #expect(Array(try g.bytes(name)!) == Array(try s.bytes(name)!), "\(name)")
        }
        let c = g.config
        for key in ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "max_position_embeddings"] {
            #expect(c[key]?.intValue == s.config[key]?.intValue, "\(key)")
        }
        #expect(c["rope_theta"]?.doubleValue == 500000)
        #expect(c["tie_word_embeddings"]?.boolValue == false)
        #expect((try GGUFFile(path: Fixtures.path("gguf/" + file))).version == (file.contains("v2") ? 2 : 3))
    }

    /// Q8_0 blocks dequantize to qs * d exactly; against the f32 originals the error is bounded
    /// by half a quantization step (d/2) plus the f16 rounding of d.
    @Test func q8_0DequantizesWithinHalfAStep() throws {
        let q = try Checkpoint(path: Fixtures.path("gguf/llama-gqa-q8_0.gguf")), s = try Checkpoint(path: Fixtures.path("llama-gqa-sharded"))
        #expect(q.notes.contains { $0.hasPrefix("16 Q8_0 tensor(s) dequantized to F32") })
        for name in s.tensorNames where s.info(name)!.shape.count == 2 {
            let a = FloatCodec.decode(try q.bytes(name)!, as: .F32), b = FloatCodec.decode(try s.bytes(name)!, as: .F32)
            // Q/K rows are un-permuted, so compare each block of 32 along its original row.
            for block in stride(from: 0, to: b.count, by: 32) {
                let amax = b[block..<block + 32].map(abs).max()!
                let step = amax / 127
                for i in block..<block + 32 { #expect(abs(a[i] - b[i]) <= step * 0.5 + amax * 1e-3, "\(name)[\(i)]") }
            }
        }
    }

    /// Qwen2 as llama.cpp writes it: BF16 tensors, q/k/v biases, no Q/K permutation, no output
    /// tensor (tied): the same tensors and config as the safetensors original.
    @Test func qwen2GGUFIsTheSafetensorsCheckpoint() throws {
        let g = try Checkpoint(path: Fixtures.path("gguf/qwen2-bf16.gguf")), s = try Checkpoint(path: Fixtures.path("qwen2-bf16-tied"))
        #expect(g.tensorNames.sorted() == s.tensorNames.sorted())
        for name in s.tensorNames {
            #expect(g.info(name)!.dtype == .BF16)
            #expect(Array(try g.bytes(name)!) == Array(try s.bytes(name)!), "\(name)")
        }
        #expect(g.config["model_type"]?.stringValue == "qwen2" && g.config["tie_word_embeddings"]?.boolValue == true)
        #expect(!g.notes.contains { $0.contains("un-permuted") })
    }

    /// llama.cpp stores llama3 rope scaling as per-frequency divisors (`rope_freqs.weight`); they
    /// become `rope_scaling` in config.json again, and the model runs as transformers runs the
    /// original safetensors.
    @Test func llama3RopeFrequenciesBecomeRopeScaling() throws {
        let g = try Checkpoint(path: Fixtures.path("gguf/llama3-rope-f32.gguf"))
        #expect(!g.contains("rope_freqs.weight"))
        let scaling = try #require(g.config["rope_scaling"])
        #expect(scaling["rope_type"]?.stringValue == "llama3" && scaling["factor"]?.doubleValue == 8)
        #expect(abs(scaling["low_freq_factor"]!.doubleValue! - 1) < 1e-6 && abs(scaling["high_freq_factor"]!.doubleValue! - 8) < 1e-5)
        #expect(scaling["original_max_position_embeddings"]?.intValue == 8192)
        #expect(g.notes.contains("rope_freqs.weight expressed as llama3 rope_scaling in config.json"))
    }

    /// Factors made with llama.cpp's formula come back to their parameters, whether the smooth
    /// band holds several frequencies, one, or none; factors no parameters give are refused.
    @Test func llama3ScalingFromFactorsByHand() throws {
        func factors(theta: Double, dim: Int, factor: Double, low: Double, high: Double, original: Double) -> [Float] {
            (0..<dim / 2).map { i in
                let w = 2 * Double.pi / Double(1 / Float(pow(theta, Double(2 * i) / Double(dim))))
                if w < original / high { return 1 }
                if w > original / low { return Float(factor) }
                let s = (original / w - low) / (high - low)
                return Float(1 / ((1 - s) / factor + s))
            }
        }
        // Two band frequencies, many, and one with no frequency scaled fully (then any parameters
        // that give the same divisors are as good: the factor found is the largest divisor).
        for (theta, dim, low, high) in [(10000.0, 16, 1.0, 8.0), (500000.0, 128, 1.0, 4.0), (10000.0, 8, 1.0, 4.0)] {
            let f = factors(theta: theta, dim: dim, factor: 8, low: low, high: high, original: 8192)
            let s = try #require(GGUFToHuggingFace.llama3Scaling(f, theta: theta, dim: dim, original: 8192) ?? nil, "\(theta) \(dim)")
            #expect(s.factor == Double(f.max()!))
            #expect(factors(theta: theta, dim: dim, factor: s.factor, low: s.low, high: s.high, original: 8192).elementsEqual(f) { abs($0 - $1) <= 1e-4 * $1 })
        }
        #expect(GGUFToHuggingFace.llama3Scaling([1, 1, 1, 1], theta: 10000, dim: 8, original: 8192)! == nil)
        #expect(GGUFToHuggingFace.llama3Scaling([1, 3, 2, 8], theta: 10000, dim: 8, original: 8192) == nil)
        #expect(GGUFToHuggingFace.llama3Scaling([0, 0, 0, 0], theta: 10000, dim: 8, original: 8192) == nil)
    }

    @Test func handMadeGGUFWithF16AndBF16() throws {
        let d: Int64 = 8
        var tensors: [GGUF.Tensor] = []
        var data: [UInt8] = []
        func add(_ name: String, _ dims: [Int64], type: Int32, _ bytes: [UInt8]) {
            tensors.append(.init(name, dims, type: type, offset: UInt64(data.count)))
            data += bytes
            data += [UInt8](repeating: 0, count: (32 - data.count % 32) % 32)
        }
        let values = (0..<Int(d * 16)).map { Float($0) / 64 - 1 }
        add("token_embd.weight", [d, 16], type: 1, FloatCodec.encode(values, as: .F16))
        add("output_norm.weight", [d], type: 30, FloatCodec.encode(Array(values.prefix(8)), as: .BF16))
        let path = makeTemporaryDirectory() + "/m.gguf"
        writeFile(path, GGUF.file(kvs: GGUF.llamaMetadata(), tensors: tensors, data: data))
        // The same file with general.alignment 64: offsets must now be multiples of 64.
        let aligned = makeTemporaryDirectory() + "/a.gguf"
        let offsets64 = [GGUF.Tensor("token_embd.weight", [d, 16], type: 1, offset: 0), GGUF.Tensor("output_norm.weight", [d], type: 30, offset: 256)]
        writeFile(aligned, GGUF.file(kvs: GGUF.llamaMetadata() + [GGUF.u32("general.alignment", 64)], tensors: offsets64,
                                     data: Array(data.prefix(256)) + Array(data[256..<272]), alignment: 64))
        let g = try GGUFFile(path: aligned)
        #expect(g.alignment == 64)
        #expect(FloatCodec.decode(try g.bytes(g.info("model.norm.weight")!), as: .BF16) == Array(values.prefix(8)))
        let f = try GGUFFile(path: path)
        #expect(f.info("model.embed_tokens.weight")?.dtype == .F16 && f.info("model.embed_tokens.weight")?.shape == [16, 8])
        #expect(FloatCodec.decode(try f.bytes(f.info("model.norm.weight")!), as: .BF16) == Array(values.prefix(8)))
        #expect(FloatCodec.decode(try f.bytes(f.info("model.embed_tokens.weight")!), as: .F16) == values)
        #expect(try f.checkpointConfig()["tie_word_embeddings"]?.boolValue == true)
        #expect(try f.checkpointConfig()["vocab_size"]?.intValue == 16)
    }

    func expectError(_ bytes: [UInt8], _ message: String, prefix: Bool = false, sourceLocation: SourceLocation = #_sourceLocation) {
        let path = makeTemporaryDirectory() + "/m.gguf"
        writeFile(path, bytes)
        do {
            _ = try Checkpoint(path: path)
            Issue.record("opened without error", sourceLocation: sourceLocation)
        } catch {
            if prefix {
                #expect(error.description.hasPrefix(path + ": " + message), "\(error)", sourceLocation: sourceLocation)
            } else {
                #expect(error.description == path + ": " + message, sourceLocation: sourceLocation)
            }
        }
    }

    static let norm = GGUF.Tensor("output_norm.weight", [8], type: 0, offset: 0)
    static let normData = [UInt8](repeating: 0, count: 32)

    @Test func malformedHeaders() throws {
        let meta = GGUF.llamaMetadata()
        func file(_ version: UInt32 = 3, kvs: [[UInt8]] = GGUF.llamaMetadata(), tensors: [GGUF.Tensor] = [GGUFTests.norm],
                  data: [UInt8] = GGUFTests.normData, tensorCount: Int64? = nil, kvCount: Int64? = nil) -> [UInt8] {
            GGUF.file(version: version, kvs: kvs, tensors: tensors, data: data, tensorCount: tensorCount, kvCount: kvCount)
        }
        expectError(Array("GGUG".utf8) + [UInt8](repeating: 0, count: 20), "not a GGUF file: bad magic \"GGUG\" (expected \"GGUF\")")
        expectError(Array("ggjt".utf8) + [UInt8](repeating: 0, count: 20), "is a legacy GGML file (ggjt), which predates GGUF; convert it to GGUF first")
        expectError(file(1), "GGUF version 1 is no longer supported (re-convert with a current llama.cpp)")
        expectError(file(4), "GGUF version 4 is not supported (2 and 3 are)")
        expectError(file(0x0300_0000), "GGUF version 50331648 looks byte-swapped: big-endian GGUF files are not supported")
        expectError(file(tensorCount: -1), "GGUF tensor count -1 is impossible for a \(file().count)-byte file")
        expectError(file(kvCount: 1 << 40), "GGUF metadata count 1099511627776 is impossible for a \(file(kvCount: 1 << 40).count)-byte file")
        expectError(file(kvs: meta + [GGUF.str("general.architecture", "llama")]), "GGUF metadata key \"general.architecture\" appears twice")
        expectError(file(kvs: meta + [GGUF.u32("", 1)]), "GGUF metadata key at byte \(24 + meta.joined().count + 8) is empty")
        expectError(file(kvs: meta + [GGUF.kv("bad.type", 13, [])]), "GGUF key \"bad.type\" has invalid type 13")
        expectError(file(kvs: meta + [GGUF.kv("nested", 9, le(Int32(9)) + le(UInt64(1)) + le(Int32(4)) + le(UInt64(0)))]),
                    "GGUF key \"nested\" has an array of arrays, which is not supported")
        expectError(file(kvs: meta + [GGUF.kv("huge.array", 9, le(Int32(4)) + le(UInt64(1) << 40))]),
                    "GGUF array \"huge.array\" of 1099511627776 elements exceeds the remaining ", prefix: true)
        expectError(file(kvs: meta + [GGUF.kv("long.string", 8, le(UInt64(1) << 20))]),
                    "GGUF value of long.string length 1048576 at byte \(24 + meta.joined().count + 8 + 11 + 4) exceeds the ", prefix: true)
        expectError(file(kvs: meta + [GGUF.u32("general.alignment", 48)]), "GGUF general.alignment must be a u32 power of two up to 1048576")
        expectError(file(kvs: meta + [GGUF.kv("flag", 7, [2])]), "GGUF bool \"flag\" holds 2, not 0 or 1")
    }

    @Test func malformedTensorTables() throws {
        let meta = GGUF.llamaMetadata()
        func file(_ tensors: [GGUF.Tensor], data: [UInt8] = [UInt8](repeating: 0, count: 64), kvs: [[UInt8]] = GGUF.llamaMetadata()) -> [UInt8] {
            GGUF.file(kvs: kvs, tensors: tensors, data: data)
        }
        let long = String(repeating: "x", count: 64)
        expectError(file([.init(long, [8], type: 0, offset: 0)]), "GGUF tensor name \"\(long)\" is 64 bytes (limit 63)")
        expectError(file([Self.norm, Self.norm]), "GGUF tensor \"output_norm.weight\" appears twice")
        expectError(file([.init("t", [1, 1, 1, 1, 1], type: 0, offset: 0)]), "GGUF tensor \"t\" has 5 dimensions (1 to 4 allowed)")
        expectError(file([.init("t", [8, -1], type: 0, offset: 0)]), "GGUF tensor \"t\" has a negative dimension -1")
        expectError(file([.init("t", [8], type: 4, offset: 0)]), "GGUF tensor \"t\" has invalid type id 4")
        expectError(file([.init("t", [16], type: 8, offset: 0)]), "GGUF tensor \"t\": first dimension 16 is not a multiple of the Q8_0 block size 32")
        expectError(file([.init("t", [1 << 32, 1 << 32], type: 0, offset: 0)]), "GGUF tensor \"t\" dimensions [4294967296, 4294967296] overflows 64 bits")
        expectError(file([.init("t", [8], type: 0, offset: 8)]), "GGUF tensor \"t\" offset 8 is not a multiple of the alignment 32")
        expectError(file([.init("a", [16], type: 0, offset: 0), .init("b", [8], type: 0, offset: 32)]), "GGUF tensors \"a\" and \"b\" overlap")
        expectError(file([.init("output_norm.weight", [8], type: 0, offset: 64)]), "GGUF tensor \"output_norm.weight\" data (32 bytes at offset 64) is not within the \(file([Self.norm]).count)-byte file (truncated?)")
        expectError(file([.init("blk.0.ffn_gate.weight", [256, 16], type: 12, offset: 0)], data: [UInt8](repeating: 0, count: 2304)),
                    "GGUF tensor \"blk.0.ffn_gate.weight\" is Q4_K; only F32, F16, BF16 and Q8_0 are supported")
        expectError(file([.init("blk.0.ffn_weird.weight", [8], type: 0, offset: 0)]), "GGUF tensor \"blk.0.ffn_weird.weight\" has no Hugging Face Llama equivalent")
        expectError(file([.init("token_embd.weight", [8, 4], type: 0, offset: 0), .init("rope_freqs.weight", [8], type: 0, offset: 128)],
                         data: [UInt8](repeating: 0, count: 160)),
                    "GGUF rope_freqs.weight (8 values) does not match llama3 rope scaling for rotary dimension 4")
        // Not a Llama: the tensors parse, but there is no Hugging Face model to map them to.
        var mamba = meta
        mamba[0] = GGUF.str("general.architecture", "mamba")
        expectError(file([Self.norm], kvs: mamba), "GGUF architecture \"mamba\" is not supported; only llama, qwen2, qwen3 are mapped to Hugging Face names")
        // A llama missing a size the config needs.
        expectError(file([.init("token_embd.weight", [8, 4], type: 0, offset: 0)], data: [UInt8](repeating: 0, count: 128), kvs: meta.filter { !String(decoding: $0, as: UTF8.self).contains("block_count") }),
                    "GGUF metadata \"llama.block_count\" is missing or not a positive integer")
    }
}

import Foundation

/// How a GGUF file maps to the Hugging Face checkpoint it was converted from (gguf-py's
/// `tensor_mapping.py` and `convert_hf_to_gguf.py`, read backwards): tensor names, config.json
/// from the `<arch>.*` metadata, llama3 rope scaling from `rope_freqs`, and llama's Q/K row
/// permutation. `GGUFFile` parses and validates the file; this says what it means.
enum GGUFToHuggingFace {
    /// The GGUF architectures mapped back, with their Hugging Face class. All use llama.cpp's
    /// Llama tensor names (Qwen3 adds attn_q_norm / attn_k_norm); only llama's Q/K rows are
    /// permuted (Qwen2 and Qwen3 rotate in NeoX order).
    static let architectures = ["llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"]

    /// llama.cpp's names (gguf-py `tensor_mapping.py`) back to Hugging Face's. Unknown names are
    /// refused rather than carried under a name no loader would understand.
    static func tensorName(_ name: String, path: String) throws(VFFNError) -> String {
        if let n = DecoderTensor.ggufGlobals[name] { return n }
        let parts = name.split(separator: ".")
        if parts.count == 4, parts[0] == "blk", let layer = Int(parts[1]), layer >= 0,
           let hf = DecoderTensor.byGGUF[String(parts[2])],
           parts[3] == "weight" || parts[3] == "bias" {
            return hf.at(layer) + "." + parts[3]
        }
        throw .badInput(path, "GGUF tensor \"\(name)\" has no Hugging Face Llama equivalent")
    }

    /// config.json for the Hugging Face model, from the `<arch>.*` keys (`llama.*`, `qwen2.*`).
    static func config(_ v: [String: GGUFFile.Value], architecture arch: String, tensors: [TensorInfo], ropeFactors: [Float]?, path: String) throws(VFFNError) -> JSON {
        func int(_ key: String) throws(VFFNError) -> Int {
            guard let x = v[key]?.asInt, x > 0 else { throw .badInput(path, "GGUF metadata \"\(key)\" is missing or not a positive integer") }
            return x
        }
        func number(_ key: String) throws(VFFNError) -> Double? {
            guard let x = v[key] else { return nil }
            guard let d = x.asDouble else { throw .badInput(path, "GGUF metadata \"\(key)\" is not a number") }
            return d
        }
        guard let embedding = tensors.first(where: { $0.name == DecoderTensor.embedding }), embedding.shape.count == 2 else {
            throw .badInput(path, "GGUF file has no 2-D token_embd.weight")
        }
        let heads = try int("\(arch).attention.head_count")
        let hidden = try int("\(arch).embedding_length")
        var members: [(String, JSON)] = [
            ("architectures", .array([.string(architectures[arch]!)])),
            ("model_type", .string(arch)),
            ("vocab_size", .int(embedding.shape[0])),
            ("hidden_size", .int(hidden)),
            ("intermediate_size", .int(try int("\(arch).feed_forward_length"))),
            ("num_hidden_layers", .int(try int("\(arch).block_count"))),
            ("num_attention_heads", .int(heads)),
            ("num_key_value_heads", .int(v["\(arch).attention.head_count_kv"] == nil ? heads : try int("\(arch).attention.head_count_kv"))),
            ("max_position_embeddings", .int(try int("\(arch).context_length"))),
            ("rms_norm_eps", .number(String(try number("\(arch).attention.layer_norm_rms_epsilon") ?? 1e-5))),
            ("rope_theta", .number(String(try number("\(arch).rope.freq_base") ?? 10000))),
            ("tie_word_embeddings", .bool(!tensors.contains { $0.name == DecoderTensor.head })),
        ]
        if v["\(arch).attention.key_length"] != nil {
            let headDim = try int("\(arch).attention.key_length")
            // Qwen3Config's head_dim defaults to 128, not hidden / heads: say it always there.
            if headDim != hidden / heads || arch == "qwen3" { members.append(("head_dim", .int(headDim))) }
        } else if arch == "qwen3" {
            // llama.cpp reads a missing key_length as hidden / heads.
            members.append(("head_dim", .int(hidden / heads)))
        }
        if let factors = ropeFactors {
            let theta = try number("\(arch).rope.freq_base") ?? 10000
            let dim = v["\(arch).rope.dimension_count"]?.asInt ?? hidden / heads
            let original = v["\(arch).rope.scaling.original_context_length"]?.asInt ?? 8192
            guard factors.count == dim / 2, let s = llama3Scaling(factors, theta: theta, dim: dim, original: original) else {
                throw .badInput(path, "GGUF rope_freqs.weight (\(factors.count) values) does not match llama3 rope scaling for rotary dimension \(dim)")
            }
            if let s {
                members.append(("rope_scaling", .object([
                    ("rope_type", .string("llama3")), ("factor", .number(String(s.factor))),
                    ("low_freq_factor", .number(String(s.low))), ("high_freq_factor", .number(String(s.high))),
                    ("original_max_position_embeddings", .int(original)),
                ])))
            }
        } else if case let .string(type)? = v["\(arch).rope.scaling.type"], type != "none" {
            guard type == "linear", let factor = try number("\(arch).rope.scaling.factor") else {
                throw .badInput(path, "GGUF rope scaling \"\(type)\" is not supported (only linear)")
            }
            members.append(("rope_scaling", .object([("type", .string("linear")), ("factor", .number(String(factor)))])))
        }
        return .object(members)
    }

    /// The llama3 rope-scaling parameters that give `factors` (llama.cpp's `rope_freqs`: inverse
    /// frequency i is divided by factor i): `factor` is the largest; the smooth band, where
    /// `1/f = (1 - s)/factor + s` with `s = (original/wavelength - low)/(high - low)`, fixes low
    /// and high (two or more band frequencies by least squares, one with llama3's low of 1, none
    /// by thresholds just outside the unscaled and fully scaled wavelengths). Returns
    /// `.some(nil)` when nothing is scaled, nil when no parameters reproduce the factors.
    static func llama3Scaling(_ factors: [Float], theta: Double, dim: Int, original: Int) -> (factor: Double, low: Double, high: Double)?? {
        let f = factors.map(Double.init)
        guard f.allSatisfy({ $0.isFinite && $0 >= 1 - 1e-6 }) else { return nil }   // divisors, never shrinking a wavelength
        let factor = f.max() ?? 1
        if factor <= 1 + 1e-6 { return .some(nil) }
        let wavelength = (0..<f.count).map { i in 2 * Double.pi / Double(1 / Float(pow(theta, Double(2 * i) / Double(dim)))) }
        let unscaled = f.indices.filter { abs(f[$0] - 1) < 1e-6 }
        let full = f.indices.filter { abs(f[$0] - factor) < 1e-6 * factor }
        let band = f.indices.filter { !unscaled.contains($0) && !full.contains($0) }
        let o = Double(original)
        var low = 1.0, high = 4.0
        let points = band.map { i in (x: o / wavelength[i], s: (1 / f[i] - 1 / factor) / (1 - 1 / factor)) }
        if points.count >= 2 {
            let n = Double(points.count), sx = points.reduce(0) { $0 + $1.x }, sy = points.reduce(0) { $0 + $1.s }
            let sxx = points.reduce(0) { $0 + $1.x * $1.x }, sxy = points.reduce(0) { $0 + $1.x * $1.s }
            let a = (n * sxy - sx * sy) / (n * sxx - sx * sx), b = (sy - a * sx) / n
            guard a > 0 else { return nil }
            low = -b / a
            high = low + 1 / a
        } else if let p = points.first {
            guard p.s > 0 else { return nil }
            high = low + (p.x - low) / p.s
        } else {
            let longestUnscaled = unscaled.map { wavelength[$0] }.max() ?? 0
            let shortestFull = full.map { wavelength[$0] }.min() ?? .infinity
            high = o / (longestUnscaled * 1.001)
            low = shortestFull.isFinite ? o / (shortestFull * 0.999) : 1
        }
        guard low > 0, high > low else { return nil }
        // The parameters must give back every factor, as llama.cpp's converter computes them.
        for i in f.indices {
            let w = wavelength[i]
            let expected: Double = w < o / high ? 1 : w > o / low ? factor : {
                let s = (o / w - low) / (high - low)
                return 1 / ((1 - s) / factor + s)
            }()
            if abs(expected - f[i]) > 1e-4 * max(1, f[i]) { return nil }
        }
        return (factor, low, high)
    }

    /// Inverse of llama.cpp's `permute` within one head of `rowsPerHead` rows: Hugging Face's
    /// row j*half + i is stored at row 2i + j.
    static func storedRow(_ r: Int, rowsPerHead: Int) -> Int {
        let half = rowsPerHead / 2
        return 2 * (r % half) + r / half
    }
}

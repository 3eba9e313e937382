import Foundation
import VFFNFormats
import VFFNModels

/// `convert --output-format olmo`: an unsharded OLMo checkpoint of a Llama-family conversion, for
/// OLMo's trainer (`load_path`). DST is a directory holding
///
/// - `model.pt`: a torch.save state dict (our own writer, `TorchCheckpointWriter`) in OLMo's
///   fused layout, per block i (`transformer.blocks.i.`):
///   `att_proj` = [q; k; v] (rows), `attn_out` = o, `ff_proj` = [up; gate] (OLMo's SwiGLU takes
///   `x, gate = ff_proj(h).chunk(2)` and computes silu(gate) * x), `ff_out` = down,
///   `attn_norm` = input_layernorm, `ff_norm` = post_attention_layernorm (OLMo 2, `norm_after`:
///   `attn_norm` = post_attention_layernorm and `ff_norm` = post_feedforward_layernorm, both on
///   their sub-layer's output, and `q_norm`, `k_norm` over the whole projections), plus `expert_gate` and
///   `depth_predictor`; `transformer.wte` = embed_tokens, `transformer.ln_f` = norm and, when the
///   source's head is untied, `transformer.ff_out` = lm_head. Sources with any q/k/v/o or MLP bias
///   (Qwen2) get `include_bias: true` and zero biases where the source has none, which keeps the
///   function exact. Tensors keep the source's dtype and bytes (after a --split cluster permutation).
/// - `config.yaml`: the model section of an OLMo training config, with `load_path` set to DST.
/// - the source's tokenizer and other auxiliary files, copied.
extension UpcyclePlan {
    func writeOLMo(to destination: String, force: Bool, dryRun: Bool,
                   progress: @escaping @Sendable (ConversionProgress) -> Void) throws(VFFNError) -> ConversionSummary {
        guard isUniform else {
            throw .usage("--output-format olmo cannot express this plan: OLMo's config holds one num_experts, top_k and max_depth for every block, and every block has gates")
        }
        let olmo = try olmoLayout()
        let output = try AtomicOutput(destination: destination, kind: .directory, force: force, inputs: [source.path], dryRun: dryRun)
        let totalSize = olmo.tensors.reduce(0) { $0 + $1.parts.reduce(0) { $0 + $1.count } }
        let auxiliary = source.auxiliaryFiles().filter { $0 != "config.yaml" && $0 != "model.pt" }
        let summary = ConversionSummary(layers: layers.count, gateDType: layers.first?.dtype, shards: 1,
                                        copiedTensors: olmo.copied, copiedBytes: totalSize,
                                        changedTensors: Self.counted(tensorChanges(permuted: permutedTensors)), gateTensors: 2 * layers.count,
                                        totalSize: totalSize, auxiliaryFiles: auxiliary,
                                        sourceNotes: source.notes + olmo.notes + Self.skippedNote(source.otherWeightFiles()))
        if dryRun { return summary }
        let meter = ProgressMeter(ConversionProgress(tensorsTotal: olmo.tensors.count, bytesTotal: totalSize), report: progress)
        try OLMoDirectoryWriter().write(tensors: olmo.tensors, yaml: olmo.yaml(output.absoluteDestination ?? destination), auxiliary: auxiliary,
                                        from: source, to: output.temporary, meter: meter)
        try output.commit()
        return summary
    }

    /// The OLMo layout of this conversion: its model.pt tensors (read from the source only when
    /// written), config.yaml for a given load_path, and what the summary says; every source
    /// tensor must find its place, or the export is refused.
    func olmoLayout() throws(VFFNError) -> (tensors: [TorchCheckpointWriter.Tensor], yaml: (String) -> String, copied: Int, notes: [String]) {
        let configPath = source.configPath
        let modelType = source.config["model_type"]?.stringValue ?? "?"
        let olmoTypes = Architectures.families.filter(\.olmoLayout).map(\.modelType).joined(separator: ", ")
        if let unfit = Architectures.family(modelType)?.notInOLMo {
            throw .usage("--output-format olmo cannot express model_type \(modelType): \(unfit) (it takes \(olmoTypes))")
        }
        let c = try Llama.Config(source.config, path: configPath)
        guard c.headDim * c.numHeads == c.hiddenSize else {
            throw .badInput(configPath, "head_dim \(c.headDim) x \(c.numHeads) heads != hidden_size \(c.hiddenSize); OLMo derives head_dim as d_model / n_heads")
        }
        guard c.ropeType == "default" || c.ropeType == "dynamic" else {
            throw .badInput(configPath, "rope type \"\(c.ropeType)\" has no OLMo equivalent (OLMo's rotary embedding is unscaled)")
        }
        guard c.ropeTheta.rounded() == c.ropeTheta, c.ropeTheta > 0, c.ropeTheta < 1e15 else {
            throw .badInput(configPath, "rope_theta \(c.ropeTheta) is not a positive integer, as OLMo's rope_theta must be")
        }
        // OLMo attends to every earlier position: a sliding window is the same function only for
        // sequences no longer than the window, so the sequence length is capped there.
        var notes: [String] = []
        var maxSequence = c.maxPositionEmbeddings ?? 2048
        if let window = c.slidingWindows.compactMap({ $0 }).min(), window < maxSequence {
            notes.append("\(modelType) attends within a sliding window of \(window); OLMo has none, so max_sequence_length is \(window), where the two agree")
            maxSequence = window
        }

        let layersPrefix = layout.sites.map { DecoderTensor.layer($0.layer) }
        let permuted = permutedTensors
        var used = Set<String>()
        func part(_ name: String) throws(VFFNError) -> (info: TensorInfo, bytes: TensorBytes) {
            guard let info = source.info(name), let shard = source.shard(of: name) else {
                throw .badInput(source.path, "has no tensor \"\(name)\", which the OLMo layout needs")
            }
            used.insert(name)
            return (info, try outputBytes(info, in: shard, permuted: permuted))
        }
        let includeBias = c.qkvBias || c.outputBias || c.mlpBias
        /// A weight made of `names` stacked by rows, and its bias (the sources' biases, or zeros).
        func fused(_ olmoName: String, _ names: [String], hasBias: Bool) throws(VFFNError) -> [TorchCheckpointWriter.Tensor] {
            let parts = try names.map { n throws(VFFNError) in try part(n + ".weight") }
            let dtype = parts[0].info.dtype
            guard parts.allSatisfy({ $0.info.dtype == dtype && $0.info.shape.count == 2 && $0.info.shape[1] == parts[0].info.shape[1] }) else {
                throw .badInput(source.path, "\(names.joined(separator: ", ")) differ in dtype or input width, so they cannot be fused into \(olmoName)")
            }
            let rows = parts.reduce(0) { $0 + $1.info.shape[0] }
            var out = [TorchCheckpointWriter.Tensor(name: olmoName + ".weight", dtype: dtype, shape: [rows, parts[0].info.shape[1]], parts: parts.map(\.bytes))]
            if includeBias {
                var biasParts: [TensorBytes] = []
                for (n, p) in zip(names, parts) {
                    if hasBias {
                        let b = try part(n + ".bias")
                        guard b.info.dtype == dtype, b.info.shape == [p.info.shape[0]] else {
                            throw .badInput(source.path, "\(n).bias has dtype \(b.info.dtype.rawValue) shape \(b.info.shape), expected \(dtype.rawValue) [\(p.info.shape[0])]")
                        }
                        biasParts.append(b.bytes)
                    } else {
                        biasParts.append(.owned([UInt8](repeating: 0, count: p.info.shape[0] * dtype.bitSize / 8)))
                    }
                }
                out.append(.init(name: olmoName + ".bias", dtype: dtype, shape: [rows], parts: biasParts))
            }
            return out
        }
        func copied(_ olmoName: String, _ name: String) throws(VFFNError) -> TorchCheckpointWriter.Tensor {
            let p = try part(name)
            return .init(name: olmoName, dtype: p.info.dtype, shape: p.info.shape, parts: [p.bytes])
        }

        guard c.ffn == .gated, case let ffn = c.ffn.projections, ffn.count == 3 else {
            throw .usage("--output-format olmo needs a SwiGLU FFN with separate gate, up and down projections")
        }
        var tensors = [try copied("transformer.wte.weight", DecoderTensor.embedding)]
        let d = layout.hiddenSize
        for (i, (layer, gates)) in zip(layersPrefix, layers).enumerated() {
            let block = "transformer.blocks.\(i)."
            tensors += try fused(block + "att_proj", [DecoderTensor.q, .k, .v].map { layer + "." + $0.rawValue }, hasBias: c.qkvBias)
            tensors += try fused(block + "attn_out", [layer + "." + DecoderTensor.o.rawValue], hasBias: c.outputBias)
            // The family's own projection names; OLMo's SwiGLU takes `x, gate = chunk(2)`, so ff_proj is [up; gate].
            let (gate, up, down) = (ffn[0].tensor.rawValue, ffn[1].tensor.rawValue, ffn[2].tensor.rawValue)
            tensors += try fused(block + "ff_proj", [layer + "." + up, layer + "." + gate], hasBias: c.mlpBias)
            tensors += try fused(block + "ff_out", [layer + "." + down], hasBias: c.mlpBias)
            // OLMo 1's LayerNorms have no parameters, in either layout. OLMo 2's follow their
            // sub-layer, where OLMo's norm_after puts attn_norm and ff_norm.
            if !c.parameterFreeLayerNorm {
                let (attentionNorm, ffnNorm): (DecoderTensor, DecoderTensor) = c.outputNorms
                    ? (.postAttentionNorm, .postFeedforwardNorm) : (.inputNorm, .postAttentionNorm)
                tensors.append(try copied(block + "attn_norm.weight", layer + "." + attentionNorm.rawValue + ".weight"))
                tensors.append(try copied(block + "ff_norm.weight", layer + "." + ffnNorm.rawValue + ".weight"))
            }
            if c.qkNormFullWidth {
                tensors.append(try copied(block + "q_norm.weight", layer + "." + DecoderTensor.qNorm.rawValue + ".weight"))
                tensors.append(try copied(block + "k_norm.weight", layer + "." + DecoderTensor.kNorm.rawValue + ".weight"))
            }
            tensors.append(.init(name: block + "expert_gate.weight", dtype: gates.dtype, shape: [numExperts, d],
                                 parts: [.owned(FloatCodec.encode(gates.expertGate, as: gates.dtype))]))
            tensors.append(.init(name: block + "depth_predictor.weight", dtype: gates.dtype, shape: [maxDepth, d],
                                 parts: [.owned(FloatCodec.encode(gates.depthPredictor, as: gates.dtype))]))
        }
        if !c.parameterFreeLayerNorm { tensors.append(try copied("transformer.ln_f.weight", DecoderTensor.finalNorm)) }
        if c.tieWordEmbeddings {
            used.insert(DecoderTensor.head) // a tied head saved anyway is the embedding again
        } else {
            let head = try copied("transformer.ff_out.weight", DecoderTensor.head)
            tensors.append(head)
            if includeBias {
                tensors.append(.init(name: "transformer.ff_out.bias", dtype: head.dtype, shape: [head.shape[0]],
                                     parts: [.owned([UInt8](repeating: 0, count: head.shape[0] * head.dtype.bitSize / 8))]))
            }
        }
        // Rotary caches are recomputed by OLMo; anything else would be silently lost.
        let left = source.tensorNames.filter { !used.contains($0) && !$0.hasSuffix("rotary_emb.inv_freq") }
        guard left.isEmpty else {
            throw .badInput(source.path, "tensor \"\(left[0])\" has no place in an OLMo checkpoint\(left.count > 1 ? " (and \(left.count - 1) more)" : "")")
        }

        let yaml = { (loadPath: String) in
            self.olmoConfigYAML(c, modelType: modelType, includeBias: includeBias, maxSequence: maxSequence, loadPath: loadPath)
        }
        return (tensors, yaml, used.count, notes)
    }

    /// The `model` section OLMo's trainer needs to rebuild this network, and `load_path`.
    func olmoConfigYAML(_ c: Llama.Config, modelType: String, includeBias: Bool, maxSequence: Int, loadPath: String) -> String {
        func token(_ key: String) -> String {
            let v = source.config[key]
            return (v?.intValue ?? v?.arrayValue?.first?.intValue).map(String.init) ?? "null"
        }
        let eos = token("eos_token_id"), pad = token("pad_token_id")
        return """
        # OLMo config fragment written by \(Self.toolVersion) from \(source.path) (model_type \(modelType)).
        # Merge it into a training config: `load_path` starts training from this directory's
        # model.pt (unsharded), with a fresh optimizer and trainer state. Per block, model.pt holds
        # att_proj = [q; k; v], ff_proj = [up; gate], ff_out = down, attn_out, attn_norm, ff_norm,
        # and the VersatileFFN gates expert_gate [num_experts, d_model] and depth_predictor
        # [max_depth, d_model], which a VersatileFFN block reads with the settings below. Its
        # sub-layer is \(c.outputNorms ? "S(x) = x + ff_norm(F(x)) (norm_after)" : "S(x) = x + F(ff_norm(x))"), and the gates read x.
        model:
          d_model: \(c.hiddenSize)
          n_heads: \(c.numHeads)
          n_kv_heads: \(c.numKVHeads)
          n_layers: \(c.numLayers)
          mlp_hidden_size: \(2 * c.intermediateSize)  # ff_proj rows; SwiGLU halves it to \(c.intermediateSize)
          activation_type: swiglu
          block_type: sequential
          alibi: false
          rope: true
          rope_theta: \(Int(c.ropeTheta))
          rope_full_precision: true
          flash_attention: false
          attention_layer_norm: \(c.qkNormFullWidth)
          attention_layer_norm_with_affine: \(c.qkNormFullWidth)
          norm_after: \(c.outputNorms)
          clip_qkv: \(c.clipQKV.map { Self.yamlFloat(Double($0)) } ?? "null")
          include_bias: \(includeBias)
          bias_for_layer_norm: false
          layer_norm_type: \(c.parameterFreeLayerNorm ? "default" : "rms")
          layer_norm_with_affine: \(!c.parameterFreeLayerNorm)
          layer_norm_eps: \(Self.yamlFloat(c.normEps))
          attention_dropout: 0.0
          residual_dropout: 0.0
          embedding_dropout: 0.0
          max_sequence_length: \(maxSequence)
          vocab_size: \(c.vocabSize)
          embedding_size: \(c.vocabSize)
          weight_tying: \(c.tieWordEmbeddings)
          eos_token_id: \(eos)
          pad_token_id: \(pad == "null" ? eos : pad)
          init_device: meta
          versatile_ffn:
            block: \(c.outputNorms ? "output-norm" : "pre-norm")
            num_experts: \(numExperts)
            top_k: \(topK)
            max_depth: \(maxDepth)
        load_path: \(Self.yamlString(loadPath))
        reset_optimizer_state: true
        reset_trainer_state: true

        """
    }

    /// A float YAML 1.1 readers (PyYAML, omegaconf) take as a float: they need a '.' before an exponent.
    static func yamlFloat(_ v: Double) -> String {
        var s = "\(v)"
        if !s.contains("."), let e = s.firstIndex(where: { $0 == "e" || $0 == "E" }) { s.insert(contentsOf: ".0", at: e) }
        return s
    }

    static func yamlString(_ s: String) -> String {
        "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }
}

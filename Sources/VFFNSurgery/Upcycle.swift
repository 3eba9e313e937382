import Foundation
import VFFNFormats
import VFFNModels

/// How one layer is upcycled: N sub-experts, top-k, maximum depth D, the neuron split and the
/// gate inits (a plan file's entry, `convert --plan`).
public struct LayerPlan: Sendable, Equatable {
    public var numExperts: Int
    public var topK: Int
    public var maxDepth: Int
    public var split: NeuronSplit
    public var routerInit: RouterInit
    public var depthInit: DepthInit

    public init(numExperts: Int, topK: Int, maxDepth: Int, split: NeuronSplit = .contiguous, routerInit: RouterInit = .random, depthInit: DepthInit = .random) {
        self.numExperts = numExperts
        self.topK = topK
        self.maxDepth = maxDepth
        self.split = split
        self.routerInit = routerInit
        self.depthInit = depthInit
    }

    var needsModel: Bool { split == .cluster || routerInit == .centroid || depthInit == .calibrated }

    func json(layer: Int) -> JSON {
        .object([("layer", .int(layer)), ("num_experts", .int(numExperts)), ("top_k", .int(topK)), ("max_depth", .int(maxDepth)),
                 ("split", .string(split.rawValue)), ("router_init", .string(routerInit.rawValue)), ("depth_init", .string(depthInit.rawValue))])
    }
}

/// The gates one layer gets: f32 values, stored in `dtype` when written.
public struct LayerGates: Sendable {
    public let site: FFNSite
    public let dtype: DType
    /// `[numExperts, hidden]`, row-major.
    public var expertGate: [Float]
    /// `[maxDepth, hidden]`, row-major.
    public var depthPredictor: [Float]

    public var expertGateName: String { site.prefix + ".expert_gate.weight" }
    public var depthPredictorName: String { site.prefix + ".depth_predictor.weight" }
}

/// A conversion before it is written: the source, the settings, and every layer's gates. The
/// library's unit of custom surgery: build a plan, replace any gate values, then `write` it.
///
///     var plan = try UpcyclePlan(source: Checkpoint(path: "llama"), experts: 8, topK: 2, maxDepth: 4)
///     plan.layers[0].depthPredictor = myInit
///     try plan.write(to: "llama-vffn")
public struct UpcyclePlan: @unchecked Sendable {
    public let source: Checkpoint
    public let layout: FFNLayout
    public let numExperts: Int
    public let topK: Int
    public let maxDepth: Int
    public let seed: UInt64
    public let options: GateOptions
    /// Per layer of the model: its settings, or nil for a layer left dense.
    public let layerPlans: [LayerPlan?]
    /// Whether config.json records the plan (it does for plans given layer by layer).
    public let recordPlan: Bool
    /// The gates of the upcycled layers, in layer order.
    public var layers: [LayerGates]
    /// Per layer, the neuron order of the written FFN (position p holds source neuron
    /// `permutations[l][p]`); nil when neurons keep their order.
    public let permutations: [[Int]]?
    /// The calibration tokens and, per layer, the depth histogram reached on them (`calibrated`).
    public let calibration: (tokens: [Int], target: [Double], layers: [DepthCalibration])?

    public static let toolVersion = "vffn-convert 0.3.0"

    /// Every layer upcycled alike: N sub-experts, top-k, depth D, and `options`' split and inits.
    public init(source: Checkpoint, experts: Int, topK: Int, maxDepth: Int, seed: UInt64 = 0,
                options: GateOptions = GateOptions()) throws(VFFNError) {
        let layout = try Architectures.lookup(source).ffnLayout(source)
        try VersatileFFNSettings.validate(experts: experts, topK: topK, maxDepth: maxDepth, intermediateSize: layout.intermediateSize)
        let plan = LayerPlan(numExperts: experts, topK: topK, maxDepth: maxDepth, split: options.split, routerInit: options.routerInit, depthInit: options.depthInit)
        try self.init(source: source, layers: Array(repeating: plan, count: layout.sites.count), seed: seed, options: options, recordPlan: false)
    }

    /// Layer by layer: `layers[l]` is layer l's settings, nil to leave it dense (no gates; it runs
    /// as the dense model's everywhere). `options` gives the calibration tokens and target; its
    /// split and inits are the per-layer ones'. `recordPlan` writes the plan into config.json.
    public init(source: Checkpoint, layers plans: [LayerPlan?], seed: UInt64 = 0, options: GateOptions = GateOptions(),
                recordPlan: Bool = true) throws(VFFNError) {
        let configPath = source.configPath
        if source.config[VersatileFFNSettings.key] != nil {
            throw .badInput(configPath, "is already a VersatileFFN checkpoint (config.json has \"versatile_ffn\")")
        }
        let layout = try Architectures.lookup(source).ffnLayout(source)
        guard plans.count == layout.sites.count else { throw .usage("the plan covers \(plans.count) layers, the model has \(layout.sites.count)") }
        guard let first = plans.compactMap({ $0 }).first else { throw .usage("the plan upcycles no layer; every layer would stay dense") }
        for (l, p) in plans.enumerated() {
            guard let p else { continue }
            do { try VersatileFFNSettings.validate(experts: p.numExperts, topK: p.topK, maxDepth: p.maxDepth, intermediateSize: layout.intermediateSize) } catch {
                throw .usage("layer \(l): " + error.message.replacingOccurrences(of: "--experts", with: "num_experts").replacingOccurrences(of: "--top-k", with: "top_k").replacingOccurrences(of: "--max-depth", with: "max_depth"))
            }
        }
        for site in layout.sites {
            for name in [site.prefix + ".expert_gate.weight", site.prefix + ".depth_predictor.weight"] where source.contains(name) {
                throw .badInput(source.path, "already holds a tensor named \"\(name)\"")
            }
        }
        let initializer = GateInitializer(seed: seed)
        let d = layout.hiddenSize
        self.source = source
        self.layout = layout
        self.numExperts = first.numExperts
        self.topK = first.topK
        self.maxDepth = first.maxDepth
        self.seed = seed
        self.options = options
        self.layerPlans = plans
        self.recordPlan = recordPlan
        // Gates for the upcycled layers, in layer order; `index[l]` is layer l's place among them.
        var layers: [LayerGates] = []
        var index = [Int?](repeating: nil, count: plans.count)
        for (l, site) in layout.sites.enumerated() {
            guard let p = plans[l] else { continue }
            index[l] = layers.count
            layers.append(LayerGates(site: site, dtype: source.info(site.tensors[0].name)!.dtype,
                                     expertGate: initializer.values(layer: site.layer, tensor: .expertGate, count: p.numExperts * d),
                                     depthPredictor: p.depthInit == .shallow ? [Float](repeating: 0, count: p.maxDepth * d)
                                         : initializer.values(layer: site.layer, tensor: .depthPredictor, count: p.maxDepth * d)))
        }
        var permutations: [[Int]]?
        var calibration: (tokens: [Int], target: [Double], layers: [DepthCalibration])?
        let upcycled = plans.compactMap { $0 }
        for (l, order) in options.neuronOrders {
            guard plans.indices.contains(l), let p = plans[l] else { throw .usage("a neuron order is given for layer \(l), which the plan does not upcycle") }
            do { _ = try NeuronOrder.read(.array(order.map { .int($0) }), neurons: layout.intermediateSize, experts: p.numExperts, what: "the neuron order of layer \(l)") } catch {
                throw .usage(error.message)
            }
        }
        let needsModel = upcycled.contains(where: \.needsModel) || !options.neuronOrders.isEmpty || options.initializer?.needsActivations == true
        var model: (any LanguageModel)?
        if needsModel {
            let loaded = try Architectures.load(source)
            model = loaded
            if upcycled.contains(where: { $0.split == .cluster || $0.routerInit == .centroid }) || !options.neuronOrders.isEmpty {
                // One layer's neuron keys at a time ([I, d] floats each): the split and the router read them.
                var orders: [[Int]] = []
                for (l, sub) in loaded.ffnSublayers.enumerated() {
                    let identity = Array(0..<layout.intermediateSize)
                    guard let p = plans[l], let g = index[l] else { orders.append(identity); continue }
                    var keys = InformedInit.neuronKeys(sub)
                    if let given = options.neuronOrders[l] {
                        orders.append(given)
                    } else if p.split == .cluster {
                        var rng = Xoshiro256StarStar(seed: seed, stream: UInt64(l) << 8 | 0x10)
                        orders.append(BalancedKMeans.clusters(keys, k: p.numExperts, rng: &rng).flatMap { $0 })
                    } else {
                        orders.append(identity)
                    }
                    if p.routerInit == .centroid {
                        if orders[l] != identity { keys = keys.gather(orders[l]) }
                        layers[g].expertGate = InformedInit.centroidRouter(keys: keys, experts: p.numExperts)
                    }
                }
                if upcycled.contains(where: { $0.split == .cluster }) || !options.neuronOrders.isEmpty { permutations = orders }
            }
            if upcycled.contains(where: { $0.depthInit == .calibrated }) {
                let tokens = options.calibrationTokens ?? GateOptions.builtinCalibration(vocabSize: loaded.vocabSize, maxTokens: loaded.maxTokens, hiddenSize: loaded.hiddenSize)
                // The dense model's FFN inputs: a neuron permutation does not change them.
                let inputs = try loaded.forward(tokens, mode: .dense, trace: true).ffnInputs
                var fitted: [DepthCalibration] = [], recordedTarget: [Double]?
                for (l, p) in plans.enumerated() {
                    guard let p, p.depthInit == .calibrated, let g = index[l] else { continue }
                    let target: [Double]
                    do { target = try Self.depthTarget(options.depthTarget, depth: p.maxDepth) } catch {
                        throw upcycled.count == plans.count && Set(upcycled.map(\.maxDepth)).count == 1 ? error : .usage("layer \(l): " + error.message)
                    }
                    recordedTarget = recordedTarget ?? target
                    var rng = Xoshiro256StarStar(seed: seed, stream: UInt64(l) << 8 | 0x20)
                    let (rows, _) = InformedInit.calibratedDepth(inputs[l], target: target, rng: &rng)
                    // The histogram recorded is the one the stored gates give: rounded to their
                    // dtype (bf16 moves a token near a boundary now and then), as verify reads them.
                    let stored = FloatCodec.encode(rows, as: layers[g].dtype).withUnsafeBytes { FloatCodec.decode($0, as: layers[g].dtype) }
                    layers[g].depthPredictor = stored
                    fitted.append(DepthCalibration(histogram: InformedInit.depthHistogram(inputs[l], predictor: stored, depth: p.maxDepth)))
                }
                calibration = (tokens, recordedTarget ?? [], fitted)
            }
        }
        if let custom = options.initializer {
            var inputs: [Matrix]?
            if custom.needsActivations, let model {
                let tokens = options.calibrationTokens ?? GateOptions.builtinCalibration(vocabSize: model.vocabSize, maxTokens: model.maxTokens, hiddenSize: model.hiddenSize)
                inputs = try model.forward(tokens, mode: .dense, trace: true).ffnInputs
            }
            for (l, p) in plans.enumerated() {
                guard let p, let g = index[l] else { continue }
                let (e, dp) = try custom.gates(GateContext(layer: l, plan: p, hiddenSize: d, expertGate: layers[g].expertGate,
                                                           depthPredictor: layers[g].depthPredictor, ffnInputs: inputs?[l]))
                if let e {
                    guard e.count == p.numExperts * d else { throw .usage("layer \(l): the initializer's expert_gate has \(e.count) values, [\(p.numExperts), \(d)] needs \(p.numExperts * d)") }
                    layers[g].expertGate = e
                }
                if let dp {
                    guard dp.count == p.maxDepth * d else { throw .usage("layer \(l): the initializer's depth_predictor has \(dp.count) values, [\(p.maxDepth), \(d)] needs \(p.maxDepth * d)") }
                    layers[g].depthPredictor = dp
                }
            }
        }
        self.layers = layers
        self.permutations = permutations
        self.calibration = calibration
    }

    /// The depth histogram asked for: D non-negative fractions summing to 1 (uniform if nil).
    static func depthTarget(_ given: [Double]?, depth: Int) throws(VFFNError) -> [Double] {
        guard let t = given else { return [Double](repeating: 1 / Double(depth), count: depth) }
        guard t.count == depth else { throw .usage("--depth-target has \(t.count) fractions for --max-depth \(depth)") }
        guard t.allSatisfy({ $0 >= 0 }), abs(t.reduce(0, +) - 1) < 1e-6 else {
            throw .usage("--depth-target fractions must be non-negative and sum to 1 (they sum to \(t.reduce(0, +)))")
        }
        return t
    }

    public var settings: VersatileFFNSettings {
        VersatileFFNSettings(numExperts: numExperts, topK: topK, maxDepth: maxDepth, gateTensors: layers.map { g in
            let p = layerPlans[layout.sites.firstIndex { $0.layer == g.site.layer }!]!
            return .init(layer: g.site.layer, expertGate: g.expertGateName, depthPredictor: g.depthPredictorName,
                         numExperts: p.numExperts, topK: p.topK, maxDepth: p.maxDepth)
        })
    }

    /// The rows of layer `g`'s expert_gate and depth_predictor: its N and D.
    func gateRows(_ g: LayerGates) -> (Int, Int) {
        let p = layerPlans[layout.sites.firstIndex { $0.layer == g.site.layer }!]!
        return (p.numExperts, p.maxDepth)
    }

    /// Whether every layer is upcycled with the same settings (what OLMo's config can say).
    public var isUniform: Bool { layerPlans.allSatisfy { $0 != nil && $0 == layerPlans[0] } }

    /// SRC's config plus the `versatile_ffn` object, and how the gates were made.
    public var convertedConfig: JSON {
        var section = settings.json
        if case var .object(members) = section {
            if recordPlan {
                members.append(("plan", .array(layerPlans.enumerated().compactMap { l, p in p.map { $0.json(layer: l) } })))
            }
            members += [("block", .string(layout.topology.rawValue)), ("gate_init", .string(GateInitializer.description)), ("seed", .number(String(seed))),
                        ("router_init", .string(options.routerInit.rawValue)), ("depth_init", .string(options.depthInit.rawValue)),
                        ("neuron_permutation", .bool(permutations != nil))]
            if let permutations {
                members.append(("split_method", .string(options.neuronOrders.isEmpty ? NeuronSplit.clusterMethod : "given by the caller")))
                members.append(("neuron_order", .array(permutations.enumerated().map { l, order in
                    order == Array(0..<order.count) ? .null : NeuronOrder.json(order, experts: layerPlans[l]?.numExperts ?? numExperts)
                })))
            }
            if let scale = layout.embeddingScale { members.append(("embedding_scale", .number("\(scale)"))) }
            if let c = calibration {
                members.append(("depth_calibration", .object([
                    ("layers", .array(layerPlans.enumerated().compactMap { l, p in p?.depthInit == .calibrated ? .int(l) : nil })),
                    ("target", .array(c.target.map { .number(String($0)) })),
                    ("tokens", .array(c.tokens.map { .int($0) })),
                    ("histograms", .array(c.layers.map { .array($0.histogram.map { .int($0) }) })),
                ])))
            }
            members.append(("tool", .string(Self.toolVersion)))
            section = .object(members)
        }
        return source.config.setting(VersatileFFNSettings.key, to: section)
    }

    /// What `write` produces.
    public enum OutputFormat: String, Sendable, CaseIterable {
        /// A Hugging Face directory mirroring the source's sharding.
        case safetensors
        /// One .vffn container file (docs/FORMATS.md); `unpack` turns it into the directory.
        case vffn
        /// An unsharded OLMo checkpoint directory, model.pt + config.yaml (Llama family; OLMoExport.swift).
        case olmo
    }

    /// Writes the converted checkpoint to `destination`, atomically. Returns a summary.
    /// `emitModeling` adds the transformers remote code (`RemoteCode`) and its config.json entries.
    @discardableResult
    public func write(to destination: String, format: OutputFormat = .safetensors, compress: Bool = false, force: Bool = false,
                      emitModeling: Bool = false, dryRun: Bool = false,
                      progress: @escaping @Sendable (ConversionProgress) -> Void = { _ in }) throws(VFFNError) -> ConversionSummary {
        let d = layout.hiddenSize
        for g in layers {
            let (n, depth) = gateRows(g)
            guard g.expertGate.count == n * d, g.depthPredictor.count == depth * d else {
                throw .usage("layer \(g.site.layer): gate sizes \(g.expertGate.count), \(g.depthPredictor.count) do not match [\(n), \(d)] and [\(depth), \(d)]")
            }
        }
        let writer: any CheckpointWriter
        switch format {
        case .olmo:
            guard !emitModeling else { throw .usage("transformers remote code (--emit-modeling) belongs with a Hugging Face output, not --output-format olmo") }
            guard !compress else { throw .usage("--compress applies only to --output-format vffn") }
            return try writeOLMo(to: destination, force: force, dryRun: dryRun, progress: progress)
        case .safetensors: writer = SafeTensorsDirectoryWriter()
        case .vffn: writer = VFFNFileWriter(compress: compress)
        }
        let (checkpoint, summary) = try convertedCheckpoint(emitModeling: emitModeling)
        let output = try AtomicOutput(destination: destination, kind: writer.kind, force: force, inputs: [source.path], dryRun: dryRun)
        if dryRun { return summary }
        let meter = ProgressMeter(ConversionProgress(tensorsTotal: checkpoint.tensorCount, bytesTotal: checkpoint.totalSize), report: progress)
        try writer.write(checkpoint, from: source, to: output.temporary, meter: meter)
        try output.commit()
        return summary
    }

    /// What the Hugging Face outputs hold, and its summary: every source tensor as stored (or
    /// neuron-permuted) in its shard with the gates of that shard's layers, config.json with the
    /// `versatile_ffn` section, the index, the files carried through. No tensor byte is read.
    func convertedCheckpoint(emitModeling: Bool) throws(VFFNError) -> (ConvertedCheckpoint, ConversionSummary) {
        let d = layout.hiddenSize
        let config = emitModeling ? try RemoteCode.addingAutoMap(to: convertedConfig, path: source.configPath) : convertedConfig
        var shards: [ConvertedCheckpoint.Shard] = []
        var weightMap: [(String, String)] = []
        var totalSize = 0, totalParameters = 0, copied = 0, copiedBytes = 0
        let permuted = permutedTensors
        let changes = tensorChanges(permuted: permuted)
        for shard in source.shards {
            let fileName = source.safetensorsName(of: shard)
            var records: [TensorRecord] = []
            for t in shard.tensors {
                records.append(TensorRecord(name: t.name, dtype: t.dtype, shape: t.shape, bytes: try outputBytes(t, in: shard, permuted: permuted)))
            }
            for r in records where changes[r.name] == nil {
                copied += 1
                copiedBytes += r.bytes.count
            }
            for g in layers where source.shard(of: g.site.tensors[0].name) === shard {
                let (n, depth) = gateRows(g)
                records.append(TensorRecord(name: g.expertGateName, dtype: g.dtype, shape: [n, d], bytes: .owned(FloatCodec.encode(g.expertGate, as: g.dtype))))
                records.append(TensorRecord(name: g.depthPredictorName, dtype: g.dtype, shape: [depth, d], bytes: .owned(FloatCodec.encode(g.depthPredictor, as: g.dtype))))
            }
            // transformers refuses safetensors without a "format" entry, so sources that have no
            // safetensors metadata get the one torch-made files carry.
            shards.append(.init(name: fileName, metadata: shard.metadata ?? [("format", "pt")], records: records))
            for r in records {
                weightMap.append((r.name, fileName))
                totalSize += r.bytes.count
                totalParameters += r.shape.reduce(1, *)
            }
        }
        let indexText = source.index.map { Self.indexText($0, weightMap: weightMap, totalSize: totalSize, totalParameters: totalParameters) }
        let auxiliary = source.auxiliaryFiles().filter { !emitModeling || $0 != RemoteCode.fileName }
        let summary = ConversionSummary(layers: layers.count, gateDType: layers.first?.dtype, shards: source.shards.count,
                                        copiedTensors: copied, copiedBytes: copiedBytes, changedTensors: Self.counted(changes),
                                        gateTensors: 2 * layers.count, totalSize: totalSize, auxiliaryFiles: auxiliary,
                                        sourceNotes: source.notes + Self.skippedNote(source.otherWeightFiles()))
        return (ConvertedCheckpoint(shards: shards, config: config, indexText: indexText, auxiliary: auxiliary, emitModeling: emitModeling), summary)
    }

    /// A source index rewritten for the tensors written: its metadata kept, sizes recounted.
    static func indexText(_ index: JSON, weightMap: [(String, String)], totalSize: Int, totalParameters: Int) -> String {
        var metadata: [(String, JSON)] = index["metadata"]?.objectMembers ?? []
        metadata = metadata.filter { $0.0 != "total_size" && $0.0 != "total_parameters" }
        if index["metadata"]?["total_parameters"] != nil { metadata.append(("total_parameters", .int(totalParameters))) }
        metadata.append(("total_size", .int(totalSize)))
        return JSON.object([
            ("metadata", .object(metadata.sorted { $0.0 < $1.0 })),
            ("weight_map", .object(weightMap.sorted { $0.0 < $1.0 }.map { ($0.0, .string($0.1)) })),
        ]).pretty
    }

    /// Source tensors whose written values are not their stored ones, and why: the reader
    /// changed them (dequantized, un-permuted) or the split reordered their neurons.
    func tensorChanges(permuted: [String: (FFNTensor, [Int])]) -> [String: String] {
        var out: [String: String] = [:]
        for shard in source.shards {
            for t in shard.tensors {
                if let c = shard.valueChange(t) { out[t.name] = c }
                if permuted[t.name] != nil { out[t.name] = out[t.name].map { $0 + ", then neuron-permuted" } ?? "neuron-permuted" }
            }
        }
        return out
    }

    /// (count, change) pairs, largest first, for the summary.
    static func counted(_ changes: [String: String]) -> [(count: Int, change: String)] {
        Dictionary(grouping: changes.values, by: { $0 }).map { ($0.value.count, $0.key) }.sorted { ($0.0, $1.1) > ($1.0, $0.1) }
    }

    /// FFN tensors whose neurons are reordered, with the order for their layer.
    var permutedTensors: [String: (FFNTensor, [Int])] {
        var permuted: [String: (FFNTensor, [Int])] = [:]
        if let permutations {
            for (l, site) in layout.sites.enumerated() {
                let order = permutations[l]
                // A layer whose neurons keep their order (another layer is clustered) is copied as is.
                if order == Array(0..<order.count) { continue }
                for t in site.tensors where t.neuronAxis != nil {
                    // Fused halves (Phi-3's gate_up_proj, [gate; up]): each block moves by the same order.
                    let blocks = t.shape[t.neuronAxis!] / order.count
                    permuted[t.name] = (t, (0..<blocks).flatMap { b in order.map { $0 + b * order.count } })
                }
            }
        }
        return permuted
    }

    /// The bytes the output holds for source tensor `t`: as stored, or with its neurons reordered
    /// (made one tensor at a time, when written).
    func outputBytes(_ t: TensorInfo, in shard: any TensorFile, permuted: [String: (FFNTensor, [Int])]) throws(VFFNError) -> TensorBytes {
        if let (f, order) = permuted[t.name] {
            return .pieces(count: t.byteCount, source: PermutedTensor(file: shard, info: t, axis: f.neuronAxis!, order: order))
        }
        // Bytes stored exactly as presented are copied file to file by the kernel, untouched.
        return .source(shard, t)
    }

    static func skippedNote(_ files: [String]) -> [String] {
        guard !files.isEmpty else { return [] }
        let list = files.prefix(4).joined(separator: ", ") + (files.count > 4 ? ", ..." : "")
        return ["\(files.count) weight file(s) in other formats not copied (stale dense copies without gates): \(list)"]
    }

}

/// An FFN tensor with its neurons reordered, made a piece of rows at a time as it is written:
/// neurons on axis 0 (input projections) reorder rows, on axis 1 (the output projection) each
/// row's columns. Source rows come from the mapping, decoded one at a time where the file keeps
/// the matrix in another encoding (a Q8_0 GGUF), or from one decoded copy otherwise.
struct PermutedTensor: PieceSource, @unchecked Sendable {
    let file: any TensorFile
    let info: TensorInfo
    let axis: Int
    let order: [Int]

    func forEachPiece(_ body: (UnsafeRawBufferPointer) throws(VFFNError) -> Void) throws(VFFNError) {
        let size = info.dtype.bitSize / 8
        guard info.shape.count == 2 else {
            // A bias: small, permuted whole.
            let data = try file.bytes(info)
            let out = data.withUnsafeBytes { permuteNeurons($0, shape: info.shape, axis: axis, elementSize: size, permutation: order) }
            return try out.withUnsafeBytes { b in Result { () throws(VFFNError) in try body(b) } }.get()
        }
        let (rows, columns) = (info.shape[0], info.shape[1])
        let rowBytes = columns * size
        let stored = try file.storedMatrix(info).map { Linear(stored: $0, outFeatures: rows, inFeatures: columns) }
        let data = stored == nil ? try file.bytes(info) : nil
        let perPiece = max(1, tensorPieceBytes / max(rowBytes, 1))
        let piece = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, min(perPiece, rows) * rowBytes), alignment: 64)
        defer { piece.deallocate() }
        var filled = 0
        for r in 0..<rows {
            let source = axis == 0 ? order[r] : r
            let to = piece.baseAddress! + filled * rowBytes
            if let stored {
                let values = stored.row(source)
                let encoded = FloatCodec.encode(axis == 0 ? values : order.map { values[$0] }, as: info.dtype)
                encoded.withUnsafeBytes { to.copyMemory(from: $0.baseAddress!, byteCount: rowBytes) }
            } else {
                let from = data!.raw.baseAddress! + source * rowBytes
                if axis == 0 {
                    to.copyMemory(from: from, byteCount: rowBytes)
                } else {
                    for (p, c) in order.enumerated() { (to + p * size).copyMemory(from: from + c * size, byteCount: size) }
                }
            }
            filled += 1
            if filled == perPiece || r == rows - 1 {
                try body(UnsafeRawBufferPointer(rebasing: piece[0..<filled * rowBytes]))
                filled = 0
            }
        }
        withExtendedLifetime(data) {}
    }
}

/// How far a conversion is, for a progress display.
public struct ConversionProgress: Sendable {
    public var tensorsDone = 0
    public let tensorsTotal: Int
    public var bytesDone = 0
    public let bytesTotal: Int
}

/// Adds up progress from the shard writers (any thread) and reports it serially.
final class ProgressMeter: @unchecked Sendable {
    private var state: ConversionProgress
    private let report: @Sendable (ConversionProgress) -> Void
    private let lock = NSLock()

    init(_ state: ConversionProgress, report: @escaping @Sendable (ConversionProgress) -> Void) {
        self.state = state
        self.report = report
    }

    func add(tensors: Int, bytes: Int) {
        lock.lock()
        defer { lock.unlock() }
        state.tensorsDone += tensors
        state.bytesDone += bytes
        report(state)
    }
}

/// The first error thrown by any of several concurrent workers.
final class FirstError: @unchecked Sendable {
    private var stored: VFFNError?
    private let lock = NSLock()

    var error: VFFNError? { lock.lock(); defer { lock.unlock() }; return stored }
    var isSet: Bool { error != nil }

    func record(_ e: any Error) {
        lock.lock()
        defer { lock.unlock() }
        if stored == nil { stored = (e as? VFFNError) ?? .io("", "\(e)") }
    }
}

/// What a conversion wrote (or would write, on a dry run), for the summary `convert` prints.
public struct ConversionSummary: Sendable {
    public let layers: Int
    public let gateDType: DType?
    public let shards: Int
    public let copiedTensors: Int
    public let copiedBytes: Int
    /// Source tensors written with other values than stored, counted by what changed them.
    public let changedTensors: [(count: Int, change: String)]
    public let gateTensors: Int
    public let totalSize: Int
    public let auxiliaryFiles: [String]
    /// What the reader changed to present the source's tensors (e.g. Q8_0 written as F32).
    public let sourceNotes: [String]
}

import Foundation
import VFFNFormats
import VFFNModels

/// The outcome of `verify`: per-layer identities and routing, plus whole-checkpoint checks.
public struct VerificationReport: Sendable {
    /// One whole-checkpoint check and what it found.
    public struct Check: Sendable {
        public let name: String
        public let passed: Bool
        public let detail: String
    }

    /// One layer's identities, routing and verdict.
    public struct Layer: Sendable {
        public let layer: Int
        /// max |sum_e f_e(h) - (N-1) b_out - f(h)| over the probe inputs.
        public let partitionMaxAbs: Float
        /// The same, relative to max |f(h)|.
        public let partitionRelative: Float
        /// max |h_versatile(D=1) - h_dense| of this layer's output on the probe tokens.
        public let denseEquivalenceMaxAbs: Float
        public let routing: RoutingStats
        public let finite: Bool
        public let passed: Bool
    }

    public let settings: VersatileFFNSettings
    public let hasOutputBias: Bool
    public let probeTokens: [Int]
    public let checks: [Check]
    public let layers: [Layer]
    /// How far the converted model starts from the dense one on the probe tokens.
    public let start: StartQuality

    public var passed: Bool { checks.allSatisfy(\.passed) && layers.allSatisfy(\.passed) }
}

/// Proves a converted checkpoint: tensors against the source, the partition identity, dense equivalence at depth 1, the lossless inverse, finiteness, and the start distance (`vffn-convert verify`).
public enum Verifier {
    /// Relative error allowed between the summed sub-experts and the dense FFN: f32 rounding of
    /// a reordered sum is ~1e-7 relative; anything near 1e-5 means the slices are wrong.
    public static let partitionTolerance: Float = 1e-5
    public static let probeRows = 16
    /// Relative difference allowed between the permuted and the source dense output.
    public static let permutationTolerance: Float = 1e-5
    /// Largest difference allowed between a calibrated depth fraction and its target.
    public static let calibrationTolerance = 0.05

    /// Re-runs the calibration tokens through the dense model and the converted depth predictors:
    /// each layer's depth histogram must be the target recorded at conversion.
    static func calibratedDepth(_ model: any LanguageModel, calibration: JSON, path: String) throws(VFFNError) -> VerificationReport.Check {
        guard let tokens = calibration["tokens"]?.arrayValue?.compactMap(\.intValue), !tokens.isEmpty,
              let target = calibration["target"]?.arrayValue?.compactMap(\.doubleValue) else {
            throw .badInput(path, "versatile_ffn.depth_calibration needs \"tokens\" and \"target\"")
        }
        let inputs = try model.forward(tokens, mode: .dense, trace: true).ffnInputs
        var worst = 0.0, histograms: [String] = []
        // The layers calibrated (all upcycled ones, in checkpoints that do not say).
        let calibrated = calibration["layers"]?.arrayValue.map { Set($0.compactMap(\.intValue)) }
        for (i, block) in model.versatileLayers!.enumerated() {
            guard let layer = block, calibrated?.contains(i) ?? true else { continue }
            // A layer of another depth than the recorded target was calibrated to a uniform one.
            let target = layer.maxDepth == target.count ? target : [Double](repeating: 1 / Double(layer.maxDepth), count: layer.maxDepth)
            let counts = InformedInit.depthHistogram(inputs[i], predictor: layer.depthPredictor.values, depth: layer.maxDepth)
            for (c, t) in zip(counts, target) { worst = max(worst, abs(Double(c) / Double(tokens.count) - t)) }
            histograms.append(counts.map(String.init).joined(separator: " "))
        }
        return .init(name: "calibrated depth histogram", passed: worst <= calibrationTolerance,
                     detail: "\(tokens.count) calibration tokens, target \(target.map { String(format: "%.2f", $0) }.joined(separator: " ")); per layer \(histograms.joined(separator: " | ")); largest deviation \(String(format: "%.3f", worst))")
    }

    /// `maxKL`: fail when the mean KL(dense || VersatileFFN) of the next-token distributions on
    /// the probe tokens exceeds it (causal LMs only).
    public static func verify(destination: String, source: String? = nil, probeTokens: [Int]? = nil, seed: UInt64 = 0,
                              maxKL: Double? = nil) throws(VFFNError) -> VerificationReport {
        let dst = try Checkpoint(path: destination)
        guard let settings = try VersatileFFNSettings.read(from: dst.config, path: destination + "/config.json") else {
            throw .badInput(destination + "/config.json", "has no \"versatile_ffn\" section; not a converted checkpoint")
        }
        let section = dst.config[VersatileFFNSettings.key]!
        let permuted = section["neuron_permutation"]?.boolValue == true
        // With a neuron permutation the FFN tensors are reordered on purpose: the dense forward
        // pass below proves the function unchanged instead of their bytes.
        // Only the layers whose recorded order moves neurons (all, in checkpoints that record none).
        let orders = section["neuron_order"]?.arrayValue
        let reordered = permuted ? Set(try Architectures.lookup(dst).ffnLayout(dst).sites.enumerated().flatMap { l, site in
            orders.map { l < $0.count && $0[l].isNull } == true ? [] : site.tensors.filter { $0.neuronAxis != nil }.map(\.name)
        }) : []
        let sourceCheckpoint = try source.map { (p) throws(VFFNError) in try Checkpoint(path: p) }
        // The byte comparison reads both checkpoints and waits on the page cache or the disk; it
        // runs beside the forward passes, which compute (a third of verify's time at 8B).
        let identical = BackgroundResult<Result<VerificationReport.Check, VFFNError>>()
        if let sourceCheckpoint {
            identical.start {
                do throws(VFFNError) {
                    return .success(try denseTensorsIdentical(source: sourceCheckpoint, destination: dst, settings: settings, reordered: reordered))
                } catch { return .failure(error) }
            }
        }
        do throws(VFFNError) {
            return try forwardChecks(dst, settings: settings, section: section, permuted: permuted, sourceCheckpoint: sourceCheckpoint,
                                     probeTokens: probeTokens, seed: seed, maxKL: maxKL, identical: identical)
        } catch {
            // The comparison started first: its error is the one a sequential verify would give.
            if case let .failure(comparison)? = identical.wait() { throw comparison }
            throw error
        }
    }

    /// Everything of `verify` after the byte comparison started; it is waited for at the end.
    static func forwardChecks(_ dst: Checkpoint, settings: VersatileFFNSettings, section: JSON, permuted: Bool, sourceCheckpoint: Checkpoint?,
                              probeTokens: [Int]?, seed: UInt64, maxKL: Double?,
                              identical: BackgroundResult<Result<VerificationReport.Check, VFFNError>>) throws(VFFNError) -> VerificationReport {
        var checks: [VerificationReport.Check] = []
        let model = try Architectures.load(dst)
        guard let versatile = model.versatileLayers else { preconditionFailure("settings read but no gates loaded") }
        if maxKL != nil && model.outputKind != .logits {
            throw .usage("--max-kl compares next-token distributions; \(model.modelType) returns hidden states (its start distance is a cosine, which verify prints)")
        }
        let gatesFinite = versatile.allSatisfy { $0.map { $0.expertGate.isFinite && $0.depthPredictor.isFinite } ?? true }
        checks.append(.init(name: "gates finite", passed: gatesFinite,
                            detail: gatesFinite ? "every expert_gate and depth_predictor value is finite" : "a gate tensor holds NaN or Inf"))

        let tokens = probeTokens ?? defaultProbeTokens(vocabSize: model.vocabSize, seed: seed, count: min(32, model.maxTokens ?? 32))
        let dense = try model.forward(tokens, mode: .dense, trace: true)
        let depthOne = try model.forward(tokens, mode: .versatile(depthLimit: 1), trace: true)
        let full = try model.forward(tokens, mode: .versatile(), trace: true)
        let outputDiff = depthOne.output.maxAbsDifference(dense.output)
        let denseFinite = dense.output.isFinite
        checks.append(.init(name: "dense forward finite", passed: denseFinite,
                            detail: denseFinite ? "dense \(model.outputKind.rawValue) finite on \(tokens.count) probe tokens" : "dense forward produced NaN or Inf: the weights themselves are bad"))
        checks.append(.init(name: "dense equivalence (max depth 1)", passed: outputDiff == 0 && denseFinite,
                            detail: "max |\(model.outputKind.rawValue) difference| = \(format(outputDiff))"))
        if permuted {
            if let sourceCheckpoint {
                let original = try Architectures.load(sourceCheckpoint).forward(tokens, mode: .dense, trace: false).output
                let diff = dense.output.maxAbsDifference(original)
                let relative = diff / max(original.maxAbs, .leastNormalMagnitude)
                checks.append(.init(name: "dense function unchanged by the neuron permutation", passed: relative <= permutationTolerance,
                                    detail: "max |\(model.outputKind.rawValue) difference| vs the source = \(format(diff)) (\(format(relative)) relative; float rounding of reordered sums)"))
            } else {
                checks.append(.init(name: "dense function unchanged by the neuron permutation", passed: true,
                                    detail: "not checked: pass --source to compare the dense forward pass with the source's"))
            }
        }
        if let calibration = section["depth_calibration"] {
            checks.append(try calibratedDepth(model, calibration: calibration, path: dst.configPath))
        }
        let fullFinite = full.output.isFinite
        checks.append(.init(name: "VersatileFFN forward finite", passed: fullFinite,
                            detail: fullFinite ? "\(model.outputKind.rawValue) finite, max |value| \(format(full.output.maxAbs))" : "VersatileFFN forward produced NaN or Inf"))

        let start = StartQuality.compare(dense: dense, versatile: full, tokens: tokens, kind: model.outputKind)
        checks.append(startCheck(start, maxKL: maxKL))

        var rng = Xoshiro256StarStar(seed: seed, stream: 0xFFFF)
        var layers: [VerificationReport.Layer] = []
        for (i, sub) in model.ffnSublayers.enumerated() {
            let h = Matrix(rows: probeRows, cols: model.hiddenSize,
                           data: (0..<probeRows * model.hiddenSize).map { _ in Float(rng.truncatedNormal(limit: 4)) })
            // A dense layer has no partition; its D=1 row must still be exact.
            let (abs, rel) = versatile[i].map { partitionError(sub.ffn, experts: $0.numExperts, probe: h) } ?? (0, 0)
            let eqDiff = depthOne.layerOutputs[i].maxAbsDifference(dense.layerOutputs[i])
            let finite = full.layerOutputs[i].isFinite
            layers.append(.init(layer: i, partitionMaxAbs: abs, partitionRelative: rel, denseEquivalenceMaxAbs: eqDiff,
                                routing: full.routing[i], finite: finite,
                                passed: rel <= partitionTolerance && eqDiff == 0 && finite))
        }
        if let result = identical.wait() { checks.insert(try result.get(), at: 0) }
        if let sourceCheckpoint { checks.insert(try inverseCheck(dst, source: sourceCheckpoint), at: 1) }
        let bias = model.ffnSublayers.first?.ffn.outputBias != nil
        return VerificationReport(settings: settings, hasOutputBias: bias, probeTokens: tokens, checks: checks, layers: layers, start: start)
    }

    /// `strip` run in memory: without the gates and the section, with the neuron order undone,
    /// the checkpoint must be the source (the other tensors' bytes are the first check's).
    static func inverseCheck(_ dst: Checkpoint, source: Checkpoint) throws(VFFNError) -> VerificationReport.Check {
        let plan = try StripPlan(converted: dst)
        let (tensors, bytes, differences) = try plan.differences(from: source, restoredOnly: true)
        let restored = plan.restoredOrder.count
        let detail = differences.isEmpty
            ? "without the \(plan.gateTensors.count) gate tensors and the versatile_ffn section, \(tensors) tensors are the source's"
                + (restored > 0 ? " (\(restored) byte-identical once their neuron order is undone, \(bytes) bytes)" : "") + " and config.json is the source's"
            : differences.joined(separator: "; ")
        return .init(name: "lossless inverse (strip)", passed: differences.isEmpty, detail: detail)
    }

    /// The logits-level distance from the dense model: information unless `maxKL` sets a bound.
    static func startCheck(_ s: StartQuality, maxKL: Double?) -> VerificationReport.Check {
        func f(_ x: Double) -> String { String(format: "%.4g", x) }
        if let kl = s.kl {
            var detail = "KL(dense || VersatileFFN) per token mean \(f(kl.mean)), median \(f(kl.median)), p99 \(f(kl.p99)) nats; top-1 agreement \(f(s.top1Agreement ?? 0))"
            if let a = s.denseCrossEntropy, let b = s.versatileCrossEntropy { detail += "; next-token cross-entropy \(f(a)) -> \(f(b))" }
            detail += maxKL.map { kl.mean <= $0 ? " (at most --max-kl \(f($0)))" : " (above --max-kl \(f($0)))" } ?? " (no bound: --max-kl X fails above X)"
            return .init(name: "start distance", passed: maxKL.map { kl.mean <= $0 } ?? true, detail: detail)
        }
        let c = s.tokenCosine
        return .init(name: "start distance", passed: true,
                     detail: "cosine of last hidden states per token mean \(f(c?.mean ?? 0)), min \(f(c?.min ?? 0)); of mean-pooled \(f(s.pooledCosine ?? 0))")
    }

    /// The partition identity on probe inputs: returns (max abs error, relative to max |f(h)|).
    public static func partitionError(_ f: any FeedForward, experts n: Int, probe h: Matrix) -> (Float, Float) {
        let whole = f(h)
        var sum = Matrix(zeros: h.rows, whole.cols)
        for e in 0..<n { sum = sum + f.subExpert(e, of: n)(h) }
        if let b = f.outputBias {
            for r in 0..<sum.rows { for c in 0..<sum.cols { sum.data[r * sum.cols + c] -= Float(n - 1) * b[c] } }
        }
        let err = sum.maxAbsDifference(whole)
        let scale = whole.maxAbs
        return (err, scale > 0 ? err / scale : err)
    }

    /// Every tensor of SRC is in DST with the same dtype, shape and bytes; DST adds exactly the
    /// gate tensors its config names.
    static func denseTensorsIdentical(source: Checkpoint, destination: Checkpoint, settings: VersatileFFNSettings,
                                      reordered: Set<String> = []) throws(VFFNError) -> VerificationReport.Check {
        var mismatches: [String] = []
        var bytes = 0, permuted = 0
        let names = source.tensorNames
        for (index, name) in names.enumerated() {
            // Ask for the next tensor's source bytes now: the disk reads them while this one is
            // compared, instead of page fault by page fault.
            // Only where the bytes are mapped as stored: a tensor that must be decoded is not read twice.
            if index + 1 < names.count, let file = source.shard(of: names[index + 1]), let info = file.info(names[index + 1]),
               file.storedRegion(info) != nil {
                try file.bytes(info).withUnsafeBytes { advise($0, willNeed: true) }
            }
            if reordered.contains(name) {
                // Reordered on purpose: dtype and shape must match; the dense forward pass below
                // checks the values.
                guard let a = source.info(name), let b = destination.info(name), a.dtype == b.dtype, a.shape == b.shape else {
                    mismatches.append("\(name): missing or reshaped"); continue
                }
                permuted += 1
                continue
            }
            let a = source.info(name)!
            guard let b = destination.info(name) else { mismatches.append("\(name): missing"); continue }
            guard a.dtype == b.dtype, a.shape == b.shape else {
                mismatches.append("\(name): \(a.dtype)\(a.shape) became \(b.dtype)\(b.shape)"); continue
            }
            // The source a piece at a time (a Q8_0 embedding dequantized whole would be 1 GB).
            let file = source.shard(of: name)!, y = try destination.bytes(name)!
            let mapped = file.storedRegion(a) != nil
            var at = 0, same = true
            try withExtendedLifetime(y) { () throws(VFFNError) in
                try file.read(a, chunkBytes: tensorPieceBytes) { piece in
                    if same, piece.count > 0 { same = memcmp(piece.baseAddress!, y.raw.baseAddress! + at, piece.count) == 0 }
                    // The source is read once here; the forward passes read the destination three
                    // times. Marking the source's pages cold lets the page cache keep the destination
                    // when both do not fit (an 8B pair is 32 GB): without it verify re-read 29 GB from disk.
                    if mapped { advise(piece, willNeed: false) }
                    at += piece.count
                }
            }
            if !same { mismatches.append("\(name): bytes differ") }
            bytes += a.byteCount
        }
        let gateNames = Set(settings.gateTensors.flatMap { [$0.expertGate, $0.depthPredictor] })
        for name in destination.tensorNames where !source.contains(name) && !gateNames.contains(name) {
            mismatches.append("\(name): not in the source and not a gate")
        }
        let passed = mismatches.isEmpty
        let detail = passed
            ? "\(source.tensorNames.count - permuted) tensors, \(bytes) bytes identical to the source" + (permuted > 0 ? "; \(permuted) FFN tensors neuron-permuted" : "")
            : "\(mismatches.count) differ: " + mismatches.prefix(3).joined(separator: "; ") + (mismatches.count > 3 ? "; ..." : "")
        return .init(name: "dense tensors bit-identical", passed: passed, detail: detail)
    }

    /// madvise over the whole pages of `bytes`: MADV_WILLNEED (read ahead now) or MADV_COLD
    /// (reclaim first when memory is short; kernels before 5.4 ignore it). Hints only.
    static func advise(_ bytes: UnsafeRawBufferPointer, willNeed: Bool) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = (Int(bitPattern: base) + page - 1) / page * page, end = (Int(bitPattern: base) + bytes.count) / page * page
        guard end > start, let p = UnsafeMutableRawPointer(bitPattern: start) else { return }
        _ = madvise(p, end - start, willNeed ? MADV_WILLNEED : 20)   // 20: MADV_COLD, which Glibc's module does not name
    }

    /// Deterministic probe token ids spread over the vocabulary.
    public static func defaultProbeTokens(vocabSize: Int, seed: UInt64, count: Int = 32) -> [Int] {
        var rng = Xoshiro256StarStar(seed: seed, stream: 0xFFFE)
        return (0..<count).map { _ in Int(rng.next() % UInt64(vocabSize)) }
    }

    static func format(_ v: Float) -> String { String(format: "%.2e", Double(v)) }
}

extension VerificationReport {
    /// The human-readable report: whole-checkpoint checks, then one row per layer.
    public var table: String {
        let dense = layers.filter { $0.routing.depthCounts.isEmpty }.count
        var out = "VersatileFFN: \(settings.numExperts) sub-experts, top-\(settings.topK), max depth \(settings.maxDepth)"
            + (dense > 0 || !settings.isUniform(layers: layers.count) ? " (by default; \(layers.count - dense) layers upcycled, \(dense) dense)" : "")
            + "; \(probeTokens.count) probe tokens\n\n"
        for c in checks { out += "  [\(c.passed ? "pass" : "FAIL")] \(c.name): \(c.detail)\n" }
        let identity = hasOutputBias ? "sum f_e = f + (N-1)b" : "sum f_e = f"
        out += "\n"
        let header = ["layer", "\(identity) abs", "rel", "D=1 vs dense", "depth histogram L=1..\(settings.maxDepth)", "sub-expert load", "status"]
        var rows: [[String]] = []
        for l in layers {
            if l.routing.depthCounts.isEmpty {
                rows.append([String(l.layer), "dense layer", "-", Verifier.format(l.denseEquivalenceMaxAbs), "(no gates)", "-", l.passed ? "pass" : "FAIL"])
                continue
            }
            rows.append([String(l.layer), Verifier.format(l.partitionMaxAbs), Verifier.format(l.partitionRelative),
                         Verifier.format(l.denseEquivalenceMaxAbs),
                         l.routing.depthCounts.map(String.init).joined(separator: " "),
                         l.routing.expertLoad.map(String.init).joined(separator: " "),
                         l.passed ? "pass" : "FAIL"])
        }
        out += textTable(header, rows)
        out += "\n" + (passed ? "verify: all checks passed\n" : "verify: FAILED\n")
        return out
    }
}

extension VerificationReport {
    /// Everything the table shows, for scripts (`verify --json`).
    public var json: JSON {
        func number(_ v: Float) -> JSON { v.isFinite ? .number(String(format: "%.6e", Double(v))) : .string(String(describing: v)) }
        return .object([
            ("passed", .bool(passed)),
            ("num_experts", .int(settings.numExperts)), ("top_k", .int(settings.topK)), ("max_depth", .int(settings.maxDepth)),
            ("probe_tokens", .array(probeTokens.map { .int($0) })),
            ("partition_identity", .string(hasOutputBias ? "sum f_e = f + (N-1)b" : "sum f_e = f")),
            ("checks", .array(checks.map { .object([("name", .string($0.name)), ("passed", .bool($0.passed)), ("detail", .string($0.detail))]) })),
            ("start", start.json),
            ("layers", .array(layers.map { l in
                .object([("layer", .int(l.layer)), ("partition_max_abs", number(l.partitionMaxAbs)),
                         ("partition_relative", number(l.partitionRelative)), ("dense_equivalence_max_abs", number(l.denseEquivalenceMaxAbs)),
                         ("depth_histogram", .array(l.routing.depthCounts.map { .int($0) })),
                         ("expert_load", .array(l.routing.expertLoad.map { .int($0) })),
                         ("dense", .bool(l.routing.depthCounts.isEmpty)), ("finite", .bool(l.finite)), ("passed", .bool(l.passed))])
            })),
        ])
    }
}

/// A value computed on a thread of its own while the caller goes on; `wait` returns it (nil if
/// never started), as often as it is called.
final class BackgroundResult<T>: @unchecked Sendable {
    private var value: T?
    private var started = false
    private var finished = false
    private let done = DispatchSemaphore(value: 0)

    func start(_ body: @escaping @Sendable () -> T) {
        started = true
        Thread.detachNewThread { [self] in
            value = body()
            done.signal()
        }
    }

    func wait() -> T? {
        guard started else { return nil }
        if !finished {
            done.wait()
            finished = true
        }
        return value
    }
}

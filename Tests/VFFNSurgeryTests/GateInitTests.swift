import Foundation
import Testing
import TestSupport
import VFFNFormats
import VFFNModels
@testable import VFFNSurgery

/// Informed gate initializations: each is harmless to the dense function and does what it says.
@Suite struct GateInitTests {
    func convert(_ fixture: String, _ options: GateOptions, seed: UInt64 = 0) throws -> (UpcyclePlan, String) {
        let plan = try UpcyclePlan(source: Checkpoint(path: Fixtures.path(fixture)), experts: 8, topK: 2, maxDepth: 4, seed: seed, options: options)
        let dst = makeTemporaryDirectory() + "/dst"
        try plan.write(to: dst)
        return (plan, dst)
    }

    func denseOutput(_ path: String, _ tokens: [Int] = Fixtures.tokens) throws -> Matrix {
        try Architectures.load(Checkpoint(path: path)).forward(tokens, mode: .dense, trace: false).output
    }

    /// Clustering permutes the FFN's neurons (rows of the input projections and their biases,
    /// columns of the output projection; Conv1D the other way round): the dense model computes
    /// the same function up to float rounding, and every moved tensor is exactly a permutation.
    @Test(arguments: ["llama-gqa-sharded", "qwen3-tiny", "smollm3-bf16-4x", "granite-bf16-4x", "olmo-clip-bf16-4x", "starcoder2-tiny", "phi3-longrope", "phi3-bf16-4x", "olmo2-bf16-4x", "gemma-tiny", "gemma2-bf16-4x", "gemma3-bf16-4x", "olmo3-bf16-4x",
                      "gpt-neox-tiny", "gpt-neox-bf16-4x", "phi-tiny", "cohere-bf16-4x", "cohere2-tiny", "gpt2-tiny", "bert-tiny",
                      "gguf/llama-gqa-q8_0.gguf", "llama-bin-deflated", "bert-tiny-bin"])
    func neuronPermutationKeepsTheDenseFunction(fixture: String) throws {
        let (plan, dst) = try convert(fixture, GateOptions(split: .cluster))
        let a = try denseOutput(dst), b = try denseOutput(Fixtures.path(fixture))
        let relative = a.maxAbsDifference(b) / b.maxAbs
        #expect(relative < 1e-5, "\(relative)")
        let perms = try #require(plan.permutations)
        let src = try Checkpoint(path: Fixtures.path(fixture)), out = try Checkpoint(path: dst)
        for (l, site) in plan.layout.sites.enumerated() {
            let perm = perms[l]
            #expect(perm.sorted() == Array(0..<perm.count))
            #expect(perm != Array(0..<perm.count), "layer \(l) kept the identity order")
            for t in site.tensors {
                let before = FloatCodec.decode(try src.bytes(t.name)!, as: src.info(t.name)!.dtype)
                let after = FloatCodec.decode(try out.bytes(t.name)!, as: out.info(t.name)!.dtype)
                guard let axis = t.neuronAxis else { #expect(before == after); continue }
                // A fused gate_up_proj ([gate; up], Phi-3) holds two blocks of I neurons: each is
                // permuted by the same order, so a sub-expert's gate and up rows stay together.
                let n = t.shape[axis], inner = t.shape[(axis + 1)...].reduce(1, *), outer = t.shape[..<axis].reduce(1, *)
                let I = perm.count
                #expect(n % I == 0)
                for o in 0..<outer { for p in 0..<n { for i in 0..<inner {
                    #expect(after[(o * n + p) * inner + i] == before[(o * n + p / I * I + perm[p % I]) * inner + i])
                } } }
            }
        }
        let report = try Verifier.verify(destination: dst, source: Fixtures.path(fixture))
        #expect(report.passed, "\(report.table)")
        #expect(report.checks.contains { $0.name == "dense function unchanged by the neuron permutation" && $0.passed })
        let section = out.config["versatile_ffn"]!
        #expect(section["neuron_permutation"]?.boolValue == true && section["split_method"]?.stringValue == "balanced_kmeans_cosine")
    }

    @Test func balancedKMeansFindsObviousClustersOfEqualSize() {
        // Eight vectors near +x, eight near +y, eight near -x, eight near -y, interleaved.
        var data: [Float] = []
        for i in 0..<32 {
            let jitter = Float(i) * 0.001
            switch i % 4 {
            case 0: data += [1, jitter]
            case 1: data += [jitter, 1]
            case 2: data += [-1, jitter]
            default: data += [jitter, -1]
            }
        }
        var rng = Xoshiro256StarStar(seed: 3, stream: 0)
        let clusters = BalancedKMeans.clusters(Matrix(rows: 32, cols: 2, data: data), k: 4, rng: &rng)
        #expect(clusters.map(\.count) == [8, 8, 8, 8])
        #expect(Set(clusters.map { Set($0.map { $0 % 4 }) }) == Set([[0], [1], [2], [3]]))
        #expect(clusters.map { $0[0] } == [0, 1, 2, 3])
    }

    @Test func optionsAreDeterministicUnderASeed() throws {
        let options = GateOptions(split: .cluster, routerInit: .centroid, depthInit: .calibrated)
        let (_, a) = try convert("qwen2-bf16-tied", options, seed: 5)
        let (_, b) = try convert("qwen2-bf16-tied", options, seed: 5)
        for f in try FileManager.default.contentsOfDirectory(atPath: a) where f != AtomicOutput.markerName {
            #expect(FileManager.default.contents(atPath: a + "/" + f) == FileManager.default.contents(atPath: b + "/" + f), "\(f)")
        }
    }

    /// Centroid routing sends tokens to the slices that respond most to them, so the chosen
    /// top-k slices reproduce more of the dense FFN than random routing's ~k/N; clustering the
    /// neurons first makes the slices coherent and helps further.
    @Test(arguments: ["llama-gqa-sharded", "qwen2-bf16-tied", "qwen3-bf16-4x", "gpt2-tiny", "bert-tiny"])
    func centroidRoutingCapturesMoreOfTheDenseFFN(fixture: String) throws {
        func energy(_ options: GateOptions) throws -> Double {
            let model = try Architectures.load(Checkpoint(path: convert(fixture, options).1))
            let layers = try StartQuality.measure(model, tokens: Fixtures.tokens, configPath: fixture).layers
            return layers.map(\.energyCaptured).reduce(0, +) / Double(layers.count)
        }
        let random = try energy(GateOptions()), centroid = try energy(GateOptions(routerInit: .centroid))
        let clustered = try energy(GateOptions(split: .cluster, routerInit: .centroid))
        #expect(random > 0.05 && random < 0.4, "random routing keeps about k/N = 0.25: \(random)")
        #expect(centroid > random + 0.05, "centroid \(centroid) vs random \(random)")
        #expect(clustered > random + 0.1, "clustered + centroid \(clustered) vs random \(random)")
    }

    @Test func energyCapturedByHand() throws {
        // With top-k = N every neuron is kept: the chosen slices are the whole FFN.
        let (_, dst) = try convert("mistral-f16", GateOptions())
        let model = try Architectures.load(Checkpoint(path: dst))
        let layer = model.versatileLayers![0]!
        let all = VersatileFFNLayer(sublayer: layer.sublayer, expertGate: layer.expertGate, depthPredictor: layer.depthPredictor, topK: 8)
        let x = try model.forward(Fixtures.tokens, mode: .dense, trace: true).ffnInputs[0]
        #expect(abs(Statistics.energyCaptured(all, x: x) - 1) < 1e-5)
    }

    @Test func shallowDepthSendsEveryTokenThroughOneLoop() throws {
        let (_, dst) = try convert("gpt2-noprefix-f16", GateOptions(depthInit: .shallow))
        for s in try StartQuality.measure(Architectures.load(Checkpoint(path: dst)), tokens: Fixtures.tokens, configPath: dst).layers {
            #expect(s.depthCounts == [Fixtures.tokens.count, 0, 0, 0])
        }
        #expect(try Checkpoint(path: dst).config["versatile_ffn"]?["depth_init"]?.stringValue == "shallow")
    }

    /// The calibrated predictor puts the calibration tokens at the target depths: exactly (to
    /// the token) when there are no more tokens than hidden dimensions, and still after its rows
    /// are rounded to bf16 (olmo3-bf16-4x missed the target by 0.075 before they were centred).
    @Test(arguments: ["llama-gqa-sharded", "mistral-f16", "qwen3-tiny", "smollm3-tiny", "granite-tiny", "olmo-tiny", "starcoder2-bf16-4x", "phi3-longrope", "olmo2-tiny", "gemma-bf16-4x", "gemma2-tiny", "gemma3-tiny", "olmo3-tiny", "olmo3-bf16-4x",
                      "gpt-neox-bf16-4x", "phi-tiny", "cohere-tiny", "cohere2-bf16-4x", "gpt2-tiny", "bert-noprefix-bf16"])
    func calibratedDepthHitsTheTargetHistogram(fixture: String) throws {
        let target = [0.4, 0.3, 0.2, 0.1]
        let (plan, dst) = try convert(fixture, GateOptions(depthInit: .calibrated, depthTarget: target))
        let c = try #require(plan.calibration)
        #expect(c.tokens.count == 32)
        for layer in c.layers {
            for (count, t) in zip(layer.histogram, target) { #expect(abs(Double(count) - t * 32) <= 1, "\(layer.histogram)") }
        }
        let report = try Verifier.verify(destination: dst, source: Fixtures.path(fixture))
        #expect(report.checks.contains { $0.name == "calibrated depth histogram" && $0.passed }, "\(report.table)")
        #expect(report.passed)
    }

    /// More calibration tokens (84) than hidden dimensions (32): no direction projects every
    /// input to 1, so the fit sorts inputs by angle in a plane instead (the normal fan of a
    /// circumscribed polygon), and still reaches the target.
    @Test(arguments: ["mistral-f16", "llama-gqa-sharded", "qwen2-bf16-tied"])
    func calibratedDepthWithMoreTokensThanDimensions(fixture: String) throws {
        let tokens = Array(stride(from: 0, to: 250, by: 3))
        let (plan, dst) = try convert(fixture, GateOptions(depthInit: .calibrated, calibrationTokens: tokens, depthTarget: [0.4, 0.3, 0.2, 0.1]))
        let want = [34, 25, 17, 8]
        for layer in try #require(plan.calibration).layers {
            for (count, w) in zip(layer.histogram, want) { #expect(abs(count - w) <= 1, "\(layer.histogram)") }
        }
        #expect(try Verifier.verify(destination: dst).passed)
    }

    @Test func depthTargetsThatCannotBeMet() throws {
        for (target, message) in [([0.5, 0.5], "--depth-target has 2 fractions for --max-depth 4"),
                                  ([0.5, 0.5, 0.5, -0.5], "--depth-target fractions must be non-negative and sum to 1 (they sum to 1.0)"),
                                  ([0.1, 0.1, 0.1, 0.1], "--depth-target fractions must be non-negative and sum to 1 (they sum to 0.4)")] {
            #expect { try convert("mistral-f16", GateOptions(depthInit: .calibrated, depthTarget: target)) } throws: {
                ($0 as? VFFNError)?.message == message
            }
        }
    }
}

import Foundation
import Testing
import TestSupport
import VFFNFormats
@testable import VFFNModels
@testable import VFFNSurgery

/// Partial and per-layer surgery: layers left dense, per-layer N, k and D, and the plan file.
@Suite struct PlanTests {
    let tokens = [1, 5, 17, 42, 99, 3, 64, 7, 120, 33, 250, 0]

    @Test func aLayerLeftDenseRunsAsTheDenseModelsAndTheRestAsPlanned() throws {
        let source = try Checkpoint(path: Fixtures.path("llama-gqa-sharded"))
        let dir = makeTemporaryDirectory()
        let plans: [LayerPlan?] = [nil, LayerPlan(numExperts: 4, topK: 3, maxDepth: 2, split: .cluster)]
        let plan = try UpcyclePlan(source: source, layers: plans, seed: 1)
        #expect(!plan.isUniform && plan.layers.count == 1 && plan.layers[0].site.layer == 1)
        try plan.write(to: dir + "/vffn")
        let converted = try Checkpoint(path: dir + "/vffn")
        #expect(!converted.contains("model.layers.0.mlp.expert_gate.weight") && converted.info("model.layers.1.mlp.expert_gate.weight")?.shape == [4, 32])
        let section = converted.config["versatile_ffn"]!
        #expect(section["gate_tensors"]?.arrayValue?.count == 1)
        // The section's defaults are the first upcycled layer's; its entry needs no overrides.
        #expect(section["num_experts"]?.intValue == 4 && section["gate_tensors"]?.arrayValue?[0]["num_experts"] == nil)
        #expect(section["plan"]?.arrayValue?.first?["max_depth"]?.intValue == 2 && section["plan"]?.arrayValue?.first?["split"]?.stringValue == "cluster")

        let model = try Architectures.load(converted)
        #expect(model.versatileLayers?[0] == nil && model.versatileLayers?[1]?.numExperts == 4 && model.versatileLayers?[1]?.topK == 3)
        let dense = try model.forward(tokens, mode: .dense, trace: true), versatile = try model.forward(tokens, mode: .versatile(), trace: true)
        // Layer 0 has no gates: exactly the dense model's output there.
        #expect(dense.layerOutputs[0].data == versatile.layerOutputs[0].data)
        #expect(dense.layerOutputs[1].data != versatile.layerOutputs[1].data)
        #expect(versatile.routing[0].depthCounts.isEmpty && versatile.routing[1].depthCounts.count == 2)

        let report = try Verifier.verify(destination: dir + "/vffn", source: source.path)
        #expect(report.passed, "\(report.table)")
        #expect(report.table.contains("dense layer") && report.table.contains("1 layers upcycled, 1 dense"))
        let q = try StartQuality.measure(model, tokens: tokens, configPath: "c")
        #expect(q.layers[0].dense && q.layers[0].residualChange == 0 && !q.layers[1].dense)
        // Undone exactly, and refused by OLMo's layout.
        #expect(try StripPlan(converted: converted).differences(from: source).differences.isEmpty)
        #expect(throws: VFFNError.self) { try plan.write(to: dir + "/olmo", format: .olmo) }
    }

    func planError(_ json: String, layers: Int = 2) -> String {
        let base = LayerPlan(numExperts: 8, topK: 2, maxDepth: 4)
        guard let parsed = try? JSON.parse(json) else { return "not JSON" }
        do { _ = try PlanFile.read(parsed, path: "plan.json", layers: layers, defaults: base); return "accepted" } catch { return error.description }
    }

    @Test func planFilesAreReadAndCheckedWithOneLinePerError() throws {
        let base = LayerPlan(numExperts: 8, topK: 2, maxDepth: 4)
        let read = try PlanFile.read(try JSON.parse(#"{"defaults": {"max_depth": 3, "router_init": "centroid"}, "layers": {"0-1": {}, "3": {"num_experts": 4, "depth_init": "shallow"}}}"#),
                                     path: "p", layers: 4, defaults: base)
        #expect(read[0] == LayerPlan(numExperts: 8, topK: 2, maxDepth: 3, routerInit: .centroid) && read[1] == read[0] && read[2] == nil)
        #expect(read[3] == LayerPlan(numExperts: 4, topK: 2, maxDepth: 3, routerInit: .centroid, depthInit: .shallow))
        #expect(try PlanFile.read(try JSON.parse("{}"), path: "p", layers: 3, defaults: base) == [base, base, base])
        for (json, message) in [
            (#"{"layer": {}}"#, "plan.json: unknown key \"layer\" (a plan has \"defaults\" and \"layers\")"),
            (#"{"layers": {"0": {"experts": 4}}}"#, "plan.json: layers \"0\": unknown key \"experts\" (known: num_experts, top_k, max_depth, split, router_init, depth_init)"),
            (#"{"layers": {"2": {}}}"#, "plan.json: layers \"2\": layer 2 is out of range; the model has 2 layers (0-1)"),
            (#"{"layers": {"0-1": {}, "1": {}}}"#, "plan.json: layer 1 is in two entries of \"layers\""),
            (#"{"layers": {"a-b": {}}}"#, "plan.json: layers \"a-b\": \"a-b\" is not a layer or a range such as 0-11"),
            (#"{"defaults": {"split": "kmeans"}}"#, "plan.json: defaults.split must be one of contiguous, cluster"),
            (#"{"defaults": {"top_k": "2"}}"#, "plan.json: defaults.top_k is not an integer"),
            (#"[1]"#, "plan.json: a plan is a JSON object with \"defaults\" and \"layers\""),
        ] {
            #expect(planError(json) == message)
        }
        #expect(throws: VFFNError.self) { try PlanFile.layers("0-1,1", count: 4) }
        #expect(try PlanFile.layers("3,0-1", count: 4) == [0, 1, 3])
        // N must divide I, per layer.
        do {
            _ = try UpcyclePlan(source: Checkpoint(path: Fixtures.path("llama-gqa-sharded")), layers: [LayerPlan(numExperts: 5, topK: 2, maxDepth: 2), nil])
            Issue.record("N 5 accepted")
        } catch {
            #expect(error.message == "layer 0: num_experts 5 does not divide the FFN intermediate size 64")
        }
        do {
            _ = try UpcyclePlan(source: Checkpoint(path: Fixtures.path("llama-gqa-sharded")), layers: [nil, nil])
            Issue.record("an all-dense plan accepted")
        } catch { #expect(error.message == "the plan upcycles no layer; every layer would stay dense") }
    }
}

/// The caller's own slicing and gate values.
@Suite struct CustomSurgeryTests {
    struct Constant: GateInitializing {
        let value: Float
        let rows: Int?
        func gates(_ c: GateContext) throws(VFFNError) -> (expertGate: [Float]?, depthPredictor: [Float]?) {
            ([Float](repeating: value, count: (rows ?? c.plan.numExperts) * c.hiddenSize), nil)
        }
    }

    struct ReadsInputs: GateInitializing {
        var needsActivations: Bool { true }
        func gates(_ c: GateContext) throws(VFFNError) -> (expertGate: [Float]?, depthPredictor: [Float]?) {
            // Row 0 of the depth predictor: the mean FFN input, so its values are the layer's own.
            let x = c.ffnInputs!
            var rows = [Float](repeating: 0, count: c.plan.maxDepth * c.hiddenSize)
            for t in 0..<x.rows { for j in 0..<c.hiddenSize { rows[j] += x.data[t * c.hiddenSize + j] / Float(x.rows) } }
            return (nil, rows)
        }
    }

    @Test func aGivenNeuronOrderIsCheckedRecordedVerifiedAndUndone() throws {
        let source = try Checkpoint(path: Fixtures.path("llama-gqa-sharded"))
        let reversed = Array((0..<64).reversed())
        let dir = makeTemporaryDirectory()
        let plan = try UpcyclePlan(source: source, experts: 4, topK: 2, maxDepth: 2, options: GateOptions(routerInit: .centroid, neuronOrders: [1: reversed]))
        #expect(plan.permutations?[1] == reversed && plan.permutations?[0] == Array(0..<64))
        try plan.write(to: dir + "/vffn")
        let converted = try Checkpoint(path: dir + "/vffn")
        #expect(converted.config["versatile_ffn"]?["split_method"]?.stringValue == "given by the caller")
        let report = try Verifier.verify(destination: dir + "/vffn", source: source.path)
        #expect(report.passed, "\(report.table)")
        #expect(report.checks.contains { $0.name == "dense function unchanged by the neuron permutation" && $0.passed })
        #expect(report.checks.contains { $0.name == "lossless inverse (strip)" && $0.passed })
        let downName = "model.layers.1.mlp.down_proj.weight"
        #expect(Array(try converted.bytes(downName)!) != Array(try source.bytes(downName)!))
        for (order, message) in [([Int](repeating: 0, count: 64), "the neuron order of layer 1 is not a permutation of 0..<64 (0 is out of range or repeated)"),
                                 (Array(0..<10), "the neuron order of layer 1 orders 10 neurons, the FFN has 64")] {
            do { _ = try UpcyclePlan(source: source, experts: 4, topK: 2, maxDepth: 2, options: GateOptions(neuronOrders: [1: order])); Issue.record("accepted") } catch {
                #expect(error.message == message)
            }
        }
    }

    @Test func aGateInitializerSetsTheValuesAndIsChecked() throws {
        let source = try Checkpoint(path: Fixtures.path("llama-gqa-sharded"))
        let plan = try UpcyclePlan(source: source, experts: 4, topK: 2, maxDepth: 2, options: GateOptions(initializer: Constant(value: 0.25, rows: nil)))
        #expect(plan.layers.allSatisfy { $0.expertGate.allSatisfy { $0 == 0.25 } && $0.depthPredictor.contains { $0 != 0 } })
        do { _ = try UpcyclePlan(source: source, experts: 4, topK: 2, maxDepth: 2, options: GateOptions(initializer: Constant(value: 1, rows: 3))); Issue.record("accepted") } catch {
            #expect(error.message == "layer 0: the initializer's expert_gate has 96 values, [4, 32] needs 128")
        }
        let reads = try UpcyclePlan(source: source, experts: 4, topK: 2, maxDepth: 2, options: GateOptions(calibrationTokens: [1, 2, 3, 4], initializer: ReadsInputs()))
        let model = try Architectures.load(source)
        let x = try model.forward([1, 2, 3, 4], mode: .dense, trace: true).ffnInputs[1]
        let mean = (0..<32).map { j in (0..<4).reduce(Float(0)) { $0 + x.data[$1 * 32 + j] / 4 } }
        #expect(Array(reads.layers[1].depthPredictor.prefix(32)) == mean)
    }
}

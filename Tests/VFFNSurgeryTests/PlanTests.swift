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

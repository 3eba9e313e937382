import Foundation
import Testing
import TestSupport
import VFFNFormats
@testable import VFFNSurgery

/// `strip` undoes a conversion: every tensor of the result is the source's, byte for byte.
@Suite struct StripTests {
    /// Every tensor of `a` and `b`: the same names, dtypes, shapes and bytes.
    func identicalTensors(_ a: Checkpoint, _ b: Checkpoint) throws -> [String] {
        var bad: [String] = []
        if Set(a.tensorNames) != Set(b.tensorNames) { bad.append("names: \(Set(a.tensorNames).symmetricDifference(b.tensorNames).sorted().prefix(4))") }
        for name in a.tensorNames where b.info(name) != nil {
            let x = a.info(name)!, y = b.info(name)!
            if x.dtype != y.dtype || x.shape != y.shape { bad.append("\(name): \(x.dtype)\(x.shape) vs \(y.dtype)\(y.shape)"); continue }
            if Array(try a.bytes(name)!) != Array(try b.bytes(name)!) { bad.append("\(name): bytes") }
        }
        return bad
    }

    // Llama (GQA, 4 shards), GPT-2 (Conv1D: neurons on the other axis), BERT (biases), Phi-3
    // (fused gate_up), GPT-NeoX (parallel), a multimodal wrapper, torch .bin shards.
    @Test(arguments: ["llama-gqa-sharded", "gpt2-tiny", "bert-tiny", "phi3-bf16-4x", "gpt-neox-tiny", "gemma3-vlm-4x", "gpt2-bin-sharded"])
    func stripGivesTheSourceBack(_ fixture: String) throws {
        let source = try Checkpoint(path: Fixtures.path(fixture))
        let dir = makeTemporaryDirectory()
        let plan = try UpcyclePlan(source: source, experts: 4, topK: 2, maxDepth: 3, seed: 5,
                                   options: GateOptions(split: .cluster, routerInit: .centroid, depthInit: .shallow))
        #expect(plan.permutations != nil)
        try plan.write(to: dir + "/vffn", emitModeling: true)
        let converted = try Checkpoint(path: dir + "/vffn")
        #expect(try !identicalTensors(source, converted).isEmpty, "the cluster split moved no neuron")
        let strip = try StripPlan(converted: converted)
        #expect(strip.trainedNote == nil && strip.gateTensors.count == 2 * plan.layers.count && !strip.restoredOrder.isEmpty)
        #expect(try strip.differences(from: source).differences.isEmpty)
        try strip.write(to: dir + "/dense")
        let dense = try Checkpoint(path: dir + "/dense")
        let bad = try identicalTensors(source, dense)
        #expect(bad.isEmpty, "\(fixture): \(bad.prefix(4))")
        #expect(dense.config == source.config, "\(fixture): config")
        #expect(dense.index?["weight_map"] == source.index?["weight_map"] || source.format != .safetensors)
        #expect(!FileManager.default.fileExists(atPath: dir + "/dense/" + RemoteCode.fileName))
        // And into one .vffn file.
        try strip.write(to: dir + "/dense.vffn", format: .vffn)
        #expect(try identicalTensors(source, Checkpoint(path: dir + "/dense.vffn")).isEmpty)
    }

    @Test func neuronOrdersAreRecordedCompactlyAndChecked() throws {
        let clusters = [[0, 3, 5], [1, 2, 7], [4, 6, 8]]
        let order = clusters.flatMap { $0 }
        let json = NeuronOrder.json(order, experts: 3)
        #expect(json == .string("011020212"))
        #expect(try NeuronOrder.read(json, neurons: 9, experts: 3, what: "o") == order)
        // An order of another shape is written as positions.
        let other = [8, 7, 6, 5, 4, 3, 2, 1, 0]
        #expect(NeuronOrder.json(other, experts: 3) == .array(other.map { .int($0) }))
        #expect(try NeuronOrder.read(.array(other.map { .int($0) }), neurons: 9, experts: 3, what: "o") == other)
        #expect(NeuronOrder.inverse(order)[5] == 2)
        for (bad, message) in [(JSON.array([.int(0), .int(0), .int(1)]), "o is not a permutation of 0..<3 (0 is out of range or repeated)"),
                               (.string("01"), "o assigns 2 neurons, the FFN has 3"), (.string("0z1"), "o: \"z\" is not a sub-expert index below 3"),
                               (.int(3), "o is neither a string of sub-expert indices nor an array of neuron positions")] {
            do { _ = try NeuronOrder.read(bad, neurons: 3, experts: 3, what: "o"); Issue.record("read \(bad)") } catch { #expect(error.message == message) }
        }
    }

    func rewriteConfig(_ dir: String, _ edit: (JSON) -> JSON) throws {
        let config = try JSON.parse(FileManager.default.contents(atPath: dir + "/config.json")!)
        writeFile(dir + "/config.json", edit(config).pretty)
    }

    @Test func trainedMissingAndTamperedOrders() throws {
        let source = try Checkpoint(path: Fixtures.path("llama-gqa-sharded"))
        let dir = makeTemporaryDirectory()
        try UpcyclePlan(source: source, experts: 4, topK: 2, maxDepth: 3, options: GateOptions(split: .cluster)).write(to: dir + "/vffn")
        let section = { (c: JSON) in c["versatile_ffn"]! }
        // A trainer's save records its step: the result is the trained dense model, said so.
        try rewriteConfig(dir + "/vffn") { $0.setting("versatile_ffn", to: section($0).setting("depth_temperature_step", to: .int(300))) }
        #expect(try StripPlan(converted: Checkpoint(path: dir + "/vffn")).trainedNote?.hasPrefix("its config records training (depth temperature step 300)") == true)
        // A swapped pair of neurons: the inverse no longer gives the source.
        try rewriteConfig(dir + "/vffn") { c in
            var orders = section(c)["neuron_order"]!.arrayValue!
            var s = Array(orders[0].stringValue!.unicodeScalars)
            if let i = s.indices.first(where: { s[$0] != s[0] }) { s.swapAt(0, i) }
            orders[0] = .string(String(String.UnicodeScalarView(s)))
            return c.setting("versatile_ffn", to: section(c).setting("neuron_order", to: .array(orders)))
        }
        let tampered = try StripPlan(converted: Checkpoint(path: dir + "/vffn")).differences(from: source).differences
        #expect(tampered.first?.hasSuffix("bytes differ after the neuron order is undone") == true, "\(tampered)")
        try rewriteConfig(dir + "/vffn") { c in c.setting("versatile_ffn", to: section(c).removing("neuron_order")) }
        do { _ = try StripPlan(converted: Checkpoint(path: dir + "/vffn")); Issue.record("stripped without the order") } catch {
            #expect(error.message == "records a neuron permutation but not the order (converted before vffn-convert recorded it), so it cannot be undone")
        }
        do { _ = try StripPlan(converted: source); Issue.record("stripped a dense checkpoint") } catch {
            #expect(error.message == "has no \"versatile_ffn\" section; not a converted checkpoint, nothing to strip")
        }
    }
}

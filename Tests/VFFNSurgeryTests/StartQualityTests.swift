import Foundation
import Testing
import TestSupport
import VFFNFormats
@testable import VFFNModels
@testable import VFFNSurgery

/// The start-distance figures against hand-computed cases and against goldens written by
/// transformers (dense) and the generator's independent PyTorch VersatileFFN (converted).
@Suite struct StartQualityTests {
    func result(_ output: Matrix) -> ForwardResult {
        ForwardResult(output: output, layerOutputs: [output], ffnInputs: [], routing: [RoutingStats(depthCounts: [1, 1], expertLoad: [2], tokenDepths: [1, 2])])
    }

    /// Two classes: p = (1/2, 1/2) against q = (3/4, 1/4). KL = ln(4/3)/2; the next token is 1, so
    /// the cross-entropies are ln 2 and ln 4; the argmax ties to index 0 in p and is 0 in q.
    @Test func twoClassesByHand() {
        let dense = Matrix(rows: 2, cols: 2, data: [0, 0, 0, 0])
        let converted = Matrix(rows: 2, cols: 2, data: [Float(log(3.0)), 0, Float(log(3.0)), 0])
        let q = StartQuality.compare(dense: result(dense), versatile: result(converted), tokens: [0, 1], kind: .logits)
        #expect(abs(q.kl!.mean - log(4.0 / 3.0) / 2) < 1e-6)
        #expect(abs(q.denseCrossEntropy! - log(2.0)) < 1e-6)
        #expect(abs(q.versatileCrossEntropy! - log(4.0)) < 1e-6)
        #expect(q.top1Agreement == 1)
        // |(ln 3, 0, ln 3, 0)| / |0| is undefined: a zero dense stream reports 0.
        #expect(q.layers[0].residualChange == 0)
        #expect(q.totalDepths == [1, 2])
        let same = StartQuality.compare(dense: result(converted), versatile: result(converted), tokens: [0, 1], kind: .logits)
        #expect(same.kl!.max == 0 && same.top1Agreement == 1 && same.denseCrossEntropy == same.versatileCrossEntropy)
    }

    /// Encoders: (1, 0) against (1, 1) is cos 45 degrees; pooled (2, 0) against (1, 1) too.
    @Test func encoderCosinesByHand() {
        let dense = Matrix(rows: 2, cols: 2, data: [1, 0, 1, 0]), converted = Matrix(rows: 2, cols: 2, data: [1, 1, 0, 0])
        let q = StartQuality.compare(dense: result(dense), versatile: result(converted), tokens: [3, 4], kind: .hiddenStates)
        #expect(abs(q.tokenCosine!.max - 0.5.squareRoot()) < 1e-9 && q.tokenCosine!.min == 0)
        #expect(abs(q.pooledCosine! - 0.5.squareRoot()) < 1e-9)
        #expect(abs(q.layers[0].residualChange - 1) < 1e-9)   // |(0,1,-1,0)| / |(1,0,1,0)|
    }

    static func logSoftmax(_ row: ArraySlice<Float>) -> [Double] {
        let m = Double(row.max()!), s = row.reduce(0.0) { $0 + exp(Double($1) - m) }
        return row.map { Double($0) - m - log(s) }
    }

    @Test func causalFiguresMatchTheGoldens() throws {
        let tokens = try JSON.parse(FileManager.default.contents(atPath: Fixtures.path("goldens/tokens.json"))!)["tokens"]!.arrayValue!.compactMap(\.intValue)
        let model = try Architectures.load(Checkpoint(path: Fixtures.path("llama-gqa-vffn")))
        let q = try StartQuality.measure(model, tokens: tokens, configPath: "config.json")
        let dense = try Fixtures.golden("llama-gqa-sharded-dense-logits.npy"), converted = try Fixtures.golden("llama-gqa-vffn-logits.npy")
        let vocab = dense.shape[1]
        var kl = 0.0, ceD = 0.0, ceV = 0.0, agree = 0
        for t in 0..<tokens.count {
            let p = Self.logSoftmax(dense.values[t * vocab..<(t + 1) * vocab]), r = Self.logSoftmax(converted.values[t * vocab..<(t + 1) * vocab])
            kl += zip(p, r).reduce(0.0) { $0 + exp($1.0) * ($1.0 - $1.1) }
            if p.firstIndex(of: p.max()!) == r.firstIndex(of: r.max()!) { agree += 1 }
            if t + 1 < tokens.count { ceD -= p[tokens[t + 1]]; ceV -= r[tokens[t + 1]] }
        }
        kl /= Double(tokens.count)
        #expect(abs(q.kl!.mean - kl) < 1e-4 * max(1, kl), "\(q.kl!.mean) vs \(kl)")
        #expect(abs(q.denseCrossEntropy! - ceD / Double(tokens.count - 1)) < 1e-4)
        #expect(abs(q.versatileCrossEntropy! - ceV / Double(tokens.count - 1)) < 1e-4)
        #expect(q.top1Agreement == Double(agree) / Double(tokens.count))
        #expect(kl > 1e-3, "the fixture's random gates move the logits")
        #expect(q.layers.count == 2 && q.layers.allSatisfy { $0.energyCaptured > 0 && $0.energyCaptured <= 1 && $0.residualChange > 0 })
    }

    @Test func encoderFiguresMatchTheGoldens() throws {
        let tokens = try JSON.parse(FileManager.default.contents(atPath: Fixtures.path("goldens/tokens.json"))!)["tokens"]!.arrayValue!.compactMap(\.intValue)
        let model = try Architectures.load(Checkpoint(path: Fixtures.path("bert-tiny-vffn")))
        let q = try StartQuality.measure(model, tokens: tokens, configPath: "config.json")
        let dense = try Fixtures.golden("bert-tiny-dense-hidden.npy"), converted = try Fixtures.golden("bert-tiny-vffn-hidden.npy")
        let d = dense.shape[1]
        var mean = 0.0
        for t in 0..<tokens.count {
            mean += StartQuality.cosine(Array(dense.values[t * d..<(t + 1) * d]), Array(converted.values[t * d..<(t + 1) * d]))
        }
        mean /= Double(tokens.count)
        #expect(abs(q.tokenCosine!.mean - mean) < 1e-5, "\(q.tokenCosine!.mean) vs \(mean)")
        #expect(q.tokenCosine!.mean < 0.9999)
    }

    @Test func reportPageIsSelfContained() throws {
        let model = try Architectures.load(Checkpoint(path: Fixtures.path("llama-gqa-vffn")))
        let tokens = [1, 5, 17, 42, 99, 3]
        let q = try StartQuality.measure(model, tokens: tokens, configPath: "config.json")
        let config = try Checkpoint(path: Fixtures.path("llama-gqa-vffn")).config
        let one = MeasuredConversion(path: "a", config: config, quality: q), two = MeasuredConversion(path: "b <&>", config: config, quality: q)
        let page = QualityReportPage.html([one, two], pieces: ["<s>", " the", "&", " \"q\"", "\n", "x"])
        for banned in ["<script", "http:", "https:", "url(", "@import", "<link", "<img", "<iframe", "src=", "href="] {
            #expect(!page.lowercased().contains(banned), "\(banned)")
        }
        #expect(page.hasPrefix("<!DOCTYPE html>") && page.hasSuffix("</html>\n"))
        #expect(page.components(separatedBy: "<svg").count - 1 == 2 * 3 + 2)          // per conversion 2 heatmaps + lines; 2 comparison bars
        #expect(page.components(separatedBy: "</svg>").count == page.components(separatedBy: "<svg").count)
        #expect(page.components(separatedBy: "<span style=").count - 1 == 2 * tokens.count)
        #expect(page.contains("b &lt;&amp;&gt;") && page.contains("&quot;q&quot;") && !page.contains("b <&>"))
        #expect(page.contains("<title>layer 1, L=3: \(q.layers[1].depthCounts[2])</title>"))
    }
}

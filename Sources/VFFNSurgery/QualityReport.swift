import Foundation
import VFFNFormats
import VFFNModels

/// One converted checkpoint measured on the text: the settings its config.json records and how
/// far it starts from the dense model (`vffn-convert stats A B C ...`).
public struct MeasuredConversion: Sendable {
    public let path: String
    public let numExperts, topK, maxDepth: Int
    public let split, routerInit, depthInit: String
    public let quality: StartQuality

    public init(path: String, config: JSON, quality: StartQuality) {
        let s = config[VersatileFFNSettings.key]
        self.path = path
        numExperts = s?["num_experts"]?.intValue ?? 0
        topK = s?["top_k"]?.intValue ?? 0
        maxDepth = s?["max_depth"]?.intValue ?? 0
        split = s?["neuron_permutation"]?.boolValue == true ? "cluster" : "contiguous"
        routerInit = s?["router_init"]?.stringValue ?? "random"
        depthInit = s?["depth_init"]?.stringValue ?? "random"
        self.quality = quality
    }

    public var settingsDescription: String { "N \(numExperts) k \(topK) D \(maxDepth), \(split), router \(routerInit), depth \(depthInit)" }

    var json: JSON {
        .object([("checkpoint", .string(path)), ("num_experts", .int(numExperts)), ("top_k", .int(topK)), ("max_depth", .int(maxDepth)),
                 ("split", .string(split)), ("router_init", .string(routerInit)), ("depth_init", .string(depthInit)),
                 ("start", quality.json)])
    }
}

func fixed(_ x: Double, _ digits: Int = 3) -> String { x.isNaN ? "-" : String(format: "%.\(digits)f", x) }

extension StartQuality {
    /// The figures `stats` prints for one checkpoint: the model-level distance, then per layer.
    public var table: String {
        var out = ""
        if let a = denseCrossEntropy, let b = versatileCrossEntropy {
            out += "  next-token cross-entropy: dense \(fixed(a)) (perplexity \(fixed(exp(a), 2))), VersatileFFN \(fixed(b)) (perplexity \(fixed(exp(b), 2)))\n"
        }
        if let kl {
            out += "  KL(dense || VersatileFFN) per token: mean \(fixed(kl.mean, 4)), median \(fixed(kl.median, 4)), p99 \(fixed(kl.p99, 4)), max \(fixed(kl.max, 4)) nats\n"
        }
        if let top1Agreement { out += "  top-1 agreement: \(fixed(top1Agreement))\n" }
        if let tokenCosine {
            out += "  cosine of last hidden states per token: mean \(fixed(tokenCosine.mean, 4)), median \(fixed(tokenCosine.median, 4)), min \(fixed(tokenCosine.min, 4))\n"
        }
        if let pooledCosine { out += "  cosine of mean-pooled embeddings: \(fixed(pooledCosine, 4))\n" }
        let depth = layers.first(where: { !$0.dense }).map { "depth histogram L=1..\($0.depthCounts.count)" } ?? "depth histogram"
        out += "\n" + textTable(["layer", "residual change", depth, "sub-expert load", "energy captured"], layers.map { l in
            l.dense ? [String(l.layer), fixed(l.residualChange, 4), "dense layer", "-", "-"]
                : [String(l.layer), fixed(l.residualChange, 4), l.depthCounts.map(String.init).joined(separator: " "),
                   l.expertLoad.map(String.init).joined(separator: " "), fixed(l.energyCaptured)]
        })
        return out + "  mean energy captured: " + fixed(meanEnergyCaptured) + "\n"
    }
}

extension Array where Element == MeasuredConversion {
    /// One row per checkpoint: the comparison of inits `stats A B C` prints.
    public var comparisonTable: String {
        guard let kind = first?.quality.outputKind else { return "" }
        let header: [String], rows: [[String]]
        switch kind {
        case .logits:
            header = ["checkpoint", "N k D", "split", "router", "depth", "cross-entropy dense -> VFFN", "KL mean", "KL p99", "top-1", "energy", "residual (last)"]
            rows = map { m in
                let q = m.quality
                return [m.path, "\(m.numExperts) \(m.topK) \(m.maxDepth)", m.split, m.routerInit, m.depthInit,
                        "\(fixed(q.denseCrossEntropy ?? .nan)) -> \(fixed(q.versatileCrossEntropy ?? .nan))",
                        fixed(q.kl?.mean ?? .nan, 4), fixed(q.kl?.p99 ?? .nan, 4), fixed(q.top1Agreement ?? .nan),
                        fixed(q.meanEnergyCaptured), fixed(q.layers.last?.residualChange ?? .nan, 4)]
            }
        case .hiddenStates:
            header = ["checkpoint", "N k D", "split", "router", "depth", "cosine mean", "cosine min", "pooled cosine", "energy", "residual (last)"]
            rows = map { m in
                let q = m.quality
                return [m.path, "\(m.numExperts) \(m.topK) \(m.maxDepth)", m.split, m.routerInit, m.depthInit,
                        fixed(q.tokenCosine?.mean ?? .nan, 4), fixed(q.tokenCosine?.min ?? .nan, 4), fixed(q.pooledCosine ?? .nan, 4),
                        fixed(q.meanEnergyCaptured), fixed(q.layers.last?.residualChange ?? .nan, 4)]
            }
        }
        return textTable(header, rows)
    }

    public var json: JSON { .object([("checkpoints", .array(map(\.json)))]) }
}

/// Which tokens go deep: the text's tokens grouped by their chosen loop count, in one layer or
/// summed over all of them, each distinct piece with how often it appears.
public enum TokensByDepth {
    public static func table(_ q: StartQuality, layer: Int?, pieces: [String]) -> String {
        let depths = layer.map { q.layers[$0].tokenDepths } ?? q.totalDepths
        let scope = layer.map { "layer \($0)" } ?? "summed over \(q.layers.count) layers"
        var groups: [Int: [String: Int]] = [:]
        for (t, d) in depths.enumerated() where t < pieces.count { groups[d, default: [:]][pieces[t], default: 0] += 1 }
        var out = "tokens by chosen depth (\(scope)):\n"
        for d in groups.keys.sorted() {
            let g = groups[d]!
            let listed = g.sorted { ($0.value, $1.key) > ($1.value, $0.key) }.prefix(40)
                .map { String(reflecting: $0.key) + ($0.value > 1 ? "x\($0.value)" : "") }
            let total = g.values.reduce(0, +)
            out += "  \(d) loop\(d == 1 ? "" : "s") (\(total) token\(total == 1 ? "" : "s")): " + listed.joined(separator: " ")
                + (g.count > 40 ? " ... (\(g.count - 40) more)" : "") + "\n"
        }
        return out
    }

    public static func json(_ q: StartQuality, layer: Int?, pieces: [String]) -> JSON {
        let depths = layer.map { q.layers[$0].tokenDepths } ?? q.totalDepths
        return .array(depths.enumerated().map { t, d in
            .object([("token", .int(q.tokens[t])), ("piece", .string(t < pieces.count ? pieces[t] : "")), ("depth", .int(d))])
        })
    }
}

/// One self-contained HTML page of the measurements: inline SVG and CSS, no scripts, fonts,
/// images or links, so it opens anywhere and sends nothing anywhere.
public enum QualityReportPage {
    static func escape(_ s: String) -> String {
        var out = ""
        for c in s.unicodeScalars {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default:
                if c.value < 0x20 && c != "\n" && c != "\t" { out += "&#x\(String(c.value, radix: 16));" } else { out.unicodeScalars.append(c) }
            }
        }
        return out
    }

    /// White to deep blue.
    static func color(_ v: Double) -> String {
        let x = max(0, min(1, v.isNaN ? 0 : v))
        let r = Int(255 - 225 * x), g = Int(255 - 165 * x), b = Int(255 - 75 * x)
        return "rgb(\(r),\(g),\(b))"
    }

    /// A heatmap: one row per layer, one column per bucket, shaded by the row's share.
    static func heatmap(title: String, rows: [[Int]], columnLabel: (Int) -> String) -> String {
        let cell = 26, left = 64, top = 40
        let cols = rows.map(\.count).max() ?? 0
        let width = max(left + cols * cell + 20, left + 7 * title.count), height = top + rows.count * cell + 30
        var svg = "<svg class=\"heatmap\" width=\"\(width)\" height=\"\(height)\" viewBox=\"0 0 \(width) \(height)\" role=\"img\"><title>\(escape(title))</title>"
        svg += "<text x=\"\(left)\" y=\"16\" class=\"h\">\(escape(title))</text>"
        for c in 0..<cols { svg += "<text x=\"\(left + c * cell + cell / 2)\" y=\"\(top - 6)\" text-anchor=\"middle\">\(escape(columnLabel(c)))</text>" }
        for (r, row) in rows.enumerated() {
            let total = max(1, row.reduce(0, +))
            svg += "<text x=\"\(left - 8)\" y=\"\(top + r * cell + cell / 2 + 4)\" text-anchor=\"end\">layer \(r)</text>"
            for (c, v) in row.enumerated() {
                let share = Double(v) / Double(total)
                svg += "<rect x=\"\(left + c * cell)\" y=\"\(top + r * cell)\" width=\"\(cell - 1)\" height=\"\(cell - 1)\" fill=\"\(color(share))\"><title>layer \(r), \(escape(columnLabel(c))): \(v)</title></rect>"
                svg += "<text x=\"\(left + c * cell + cell / 2)\" y=\"\(top + r * cell + cell / 2 + 4)\" text-anchor=\"middle\" class=\"\(share > 0.5 ? "light" : "dark")\">\(v)</text>"
            }
        }
        return svg + "</svg>"
    }

    /// Lines over the layers, one per named series, on a shared 0...max axis.
    static func lines(title: String, series: [(String, [Double], String)]) -> String {
        let w = 520, h = 220, left = 48, right = 150, top = 30, bottom = 30
        let n = series.map(\.1.count).max() ?? 0
        let peak = max(1e-9, series.flatMap(\.1).filter { !$0.isNaN }.max() ?? 1)
        func x(_ i: Int) -> Double { Double(left) + (n > 1 ? Double(i) / Double(n - 1) : 0.5) * Double(w - left - right) }
        func y(_ v: Double) -> Double { Double(h - bottom) - (v.isNaN ? 0 : v / peak) * Double(h - top - bottom) }
        var svg = "<svg class=\"lines\" width=\"\(w)\" height=\"\(h)\" viewBox=\"0 0 \(w) \(h)\" role=\"img\"><title>\(escape(title))</title>"
        svg += "<text x=\"\(left)\" y=\"16\" class=\"h\">\(escape(title))</text>"
        svg += "<line x1=\"\(left)\" y1=\"\(h - bottom)\" x2=\"\(w - right)\" y2=\"\(h - bottom)\" stroke=\"#888\"/>"
        svg += "<line x1=\"\(left)\" y1=\"\(top)\" x2=\"\(left)\" y2=\"\(h - bottom)\" stroke=\"#888\"/>"
        svg += "<text x=\"\(left - 6)\" y=\"\(top + 4)\" text-anchor=\"end\">\(fixed(peak, 2))</text><text x=\"\(left - 6)\" y=\"\(h - bottom + 4)\" text-anchor=\"end\">0</text>"
        for i in 0..<n { svg += "<text x=\"\(String(format: "%.1f", x(i)))\" y=\"\(h - bottom + 16)\" text-anchor=\"middle\">\(i)</text>" }
        for (k, (name, values, stroke)) in series.enumerated() {
            let points = values.enumerated().map { String(format: "%.1f,%.1f", x($0.offset), y($0.element)) }.joined(separator: " ")
            svg += "<polyline points=\"\(points)\" fill=\"none\" stroke=\"\(stroke)\" stroke-width=\"2\"/>"
            for (i, v) in values.enumerated() {
                svg += "<circle cx=\"\(String(format: "%.1f", x(i)))\" cy=\"\(String(format: "%.1f", y(v)))\" r=\"3\" fill=\"\(stroke)\"><title>\(escape(name)), layer \(i): \(fixed(v, 4))</title></circle>"
            }
            svg += "<text x=\"\(w - right + 10)\" y=\"\(top + 14 + 18 * k)\" fill=\"\(stroke)\">\(escape(name))</text>"
        }
        return svg + "</svg>"
    }

    /// Horizontal bars, one per checkpoint.
    static func bars(title: String, items: [(String, Double)]) -> String {
        let rowHeight = 24, left = 320, barWidth = 300, top = 30
        let h = top + items.count * rowHeight + 10, w = left + barWidth + 90
        let peak = max(1e-9, items.map(\.1).filter { !$0.isNaN }.max() ?? 1)
        var svg = "<svg class=\"bars\" width=\"\(w)\" height=\"\(h)\" viewBox=\"0 0 \(w) \(h)\" role=\"img\"><title>\(escape(title))</title>"
        svg += "<text x=\"4\" y=\"16\" class=\"h\">\(escape(title))</text>"
        for (i, (name, v)) in items.enumerated() {
            let y = top + i * rowHeight
            let len = v.isNaN ? 0 : Int(Double(barWidth) * v / peak)
            svg += "<text x=\"\(left - 8)\" y=\"\(y + 16)\" text-anchor=\"end\">\(escape(name))</text>"
            svg += "<rect x=\"\(left)\" y=\"\(y + 4)\" width=\"\(max(1, len))\" height=\"\(rowHeight - 8)\" fill=\"rgb(60,110,200)\"><title>\(escape(name)): \(fixed(v, 4))</title></rect>"
            svg += "<text x=\"\(left + len + 6)\" y=\"\(y + 16)\">\(fixed(v, 4))</text>"
        }
        return svg + "</svg>"
    }

    /// The page: `conversions` measured on the same tokens, whose decoded pieces are `pieces`
    /// (empty when the checkpoint has no tokenizer: the ids are shown instead).
    public static func html(_ conversions: [MeasuredConversion], pieces: [String]) -> String {
        var body = ""
        if conversions.count > 1 {
            let logits = conversions[0].quality.outputKind == .logits
            body += "<section><h2>Inits compared</h2><pre>\(escape(conversions.comparisonTable))</pre>"
            body += bars(title: logits ? "mean KL(dense || VersatileFFN) per token, nats (lower starts closer)" : "1 - mean token cosine (lower starts closer)",
                         items: conversions.map { m in
                             ((m.path as NSString).lastPathComponent + " (" + m.routerInit + ", " + m.depthInit + ", " + m.split + ")",
                              logits ? m.quality.kl?.mean ?? .nan : 1 - (m.quality.tokenCosine?.mean ?? .nan))
                         })
            body += bars(title: "mean energy captured by the chosen sub-experts", items: conversions.map { (($0.path as NSString).lastPathComponent, $0.quality.meanEnergyCaptured) })
            body += "</section>"
        }
        for m in conversions {
            let q = m.quality
            let maxDepth = q.layers.map(\.depthCounts.count).max() ?? 0
            body += "<section><h2>\(escape(m.path))</h2><p>\(escape(m.settingsDescription)); \(q.tokens.count) tokens</p><pre>\(escape(q.table))</pre>"
            body += "<div class=\"row\">"
            body += heatmap(title: "chosen loop count, tokens per layer", rows: q.layers.map(\.depthCounts)) { "L=\($0 + 1)" }
            body += heatmap(title: "sub-expert load, top-k picks per layer", rows: q.layers.map(\.expertLoad)) { "e\($0)" }
            body += "</div>"
            body += lines(title: "per layer", series: [("energy captured", q.layers.map(\.energyCaptured), "rgb(30,120,60)"),
                                                       ("residual change", q.layers.map(\.residualChange), "rgb(200,60,40)")])
            let total = q.totalDepths
            if !total.isEmpty {
                let low = q.layers.filter { !$0.dense }.count, high = q.layers.reduce(0) { $0 + $1.depthCounts.count }
                _ = maxDepth
                body += "<h3>The text, each token shaded by its loops summed over the layers (\(low) light ... \(high) dark)</h3><p class=\"text\">"
                for (t, d) in total.enumerated() {
                    let piece = t < pieces.count ? pieces[t] : "[\(q.tokens[t])]"
                    let share = high > low ? Double(d - low) / Double(high - low) : 0
                    let perLayer = q.layers.map { String($0.tokenDepths[t]) }.joined(separator: " ")
                    body += "<span style=\"background:\(color(share))\" class=\"\(share > 0.6 ? "light" : "dark")\" title=\"\(escape("token \(q.tokens[t]): \(d) loops (per layer \(perLayer))"))\">\(escape(piece))</span>"
                }
                body += "</p>"
            }
            body += "</section>"
        }
        return """
        <!DOCTYPE html>
        <html lang="en"><head><meta charset="utf-8"><title>vffn-convert stats: how far the converted model starts from the dense one</title>
        <style>
        body { font-family: sans-serif; margin: 24px; color: #222; background: #fff; }
        pre { background: #f4f4f4; padding: 8px; overflow-x: auto; font-size: 12px; }
        svg { margin: 8px 16px 8px 0; font-size: 11px; } svg .h { font-size: 13px; font-weight: bold; }
        svg text.light, span.light { fill: #fff; color: #fff; } svg text.dark { fill: #222; }
        .row { display: flex; flex-wrap: wrap; } .text { white-space: pre-wrap; line-height: 1.9; font-family: monospace; }
        .text span { border-radius: 2px; }
        </style></head><body>
        <h1>How far the converted model starts from the dense one</h1>
        \(body)
        </body></html>

        """
    }
}

import VFFNFormats

/// The plan file `convert --plan` reads, and the layer lists `--layers` takes.
///
///     {
///       "defaults": {"num_experts": 8, "top_k": 2, "max_depth": 4,
///                    "split": "contiguous", "router_init": "random", "depth_init": "random"},
///       "layers": {"0-11": {}, "20": {"num_experts": 4}, "22": {"max_depth": 2, "depth_init": "shallow"}}
///     }
///
/// Every key is optional. `defaults` falls back to the command line's settings; `layers` maps
/// layer lists ("3", "0-11", "0-11,20") to overrides of the defaults, and the layers it does not
/// name stay dense. Without `layers`, every layer is upcycled with the defaults.
public enum PlanFile {
    static let settingKeys = ["num_experts", "top_k", "max_depth", "split", "router_init", "depth_init"]

    /// The layers of a list such as "0-11,20,22", checked against the model's `count` layers.
    public static func layers(_ spec: String, count: Int, what: String = "--layers") throws(VFFNError) -> [Int] {
        var out: [Int] = []
        for part in spec.split(separator: ",", omittingEmptySubsequences: false) {
            let p = part.trimmingCharacters(in: .whitespaces)
            let ends = p.split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(ends.count), let lo = Int(ends[0]), let hi = Int(ends.last!), lo >= 0, lo <= hi else {
                throw .usage("\(what): \"\(p)\" is not a layer or a range such as 0-11")
            }
            guard hi < count else { throw .usage("\(what): layer \(hi) is out of range; the model has \(count) layers (0-\(count - 1))") }
            for l in lo...hi {
                guard !out.contains(l) else { throw .usage("\(what): layer \(l) is listed twice") }
                out.append(l)
            }
        }
        return out.sorted()
    }

    /// Each layer's plan (nil: dense) from the plan file's JSON.
    public static func read(_ json: JSON, path: String, layers count: Int, defaults base: LayerPlan) throws(VFFNError) -> [LayerPlan?] {
        func fail(_ message: String) -> VFFNError { .badInput(path, message) }
        guard let top = json.objectMembers else { throw fail("a plan is a JSON object with \"defaults\" and \"layers\"") }
        for (k, _) in top where k != "defaults" && k != "layers" { throw fail("unknown key \"\(k)\" (a plan has \"defaults\" and \"layers\")") }
        func apply(_ o: JSON, to plan: LayerPlan, _ what: String) throws(VFFNError) -> LayerPlan {
            guard let members = o.objectMembers else { throw fail("\(what) is not an object") }
            var p = plan
            for (k, v) in members {
                switch k {
                case "num_experts", "top_k", "max_depth":
                    guard let i = v.intValue else { throw fail("\(what).\(k) is not an integer") }
                    if k == "num_experts" { p.numExperts = i } else if k == "top_k" { p.topK = i } else { p.maxDepth = i }
                case "split":
                    guard let x = v.stringValue.flatMap(NeuronSplit.init(rawValue:)) else { throw fail("\(what).split must be one of \(NeuronSplit.allCases.map(\.rawValue).joined(separator: ", "))") }
                    p.split = x
                case "router_init":
                    guard let x = v.stringValue.flatMap(RouterInit.init(rawValue:)) else { throw fail("\(what).router_init must be one of \(RouterInit.allCases.map(\.rawValue).joined(separator: ", "))") }
                    p.routerInit = x
                case "depth_init":
                    guard let x = v.stringValue.flatMap(DepthInit.init(rawValue:)) else { throw fail("\(what).depth_init must be one of \(DepthInit.allCases.map(\.rawValue).joined(separator: ", "))") }
                    p.depthInit = x
                default:
                    throw fail("\(what): unknown key \"\(k)\" (known: \(settingKeys.joined(separator: ", ")))")
                }
            }
            return p
        }
        let defaults = try json["defaults"].map { (o) throws(VFFNError) in try apply(o, to: base, "defaults") } ?? base
        guard let layers = json["layers"] else { return Array(repeating: defaults, count: count) }
        guard let entries = layers.objectMembers else { throw fail("\"layers\" maps layer lists such as \"0-11\" to settings") }
        var out = [LayerPlan?](repeating: nil, count: count)
        for (spec, settings) in entries {
            let listed: [Int]
            do { listed = try Self.layers(spec, count: count, what: "layers \"\(spec)\"") } catch { throw fail(error.message) }
            let p = try apply(settings, to: defaults, "layers \"\(spec)\"")
            for l in listed {
                guard out[l] == nil else { throw fail("layer \(l) is in two entries of \"layers\"") }
                out[l] = p
            }
        }
        return out
    }
}

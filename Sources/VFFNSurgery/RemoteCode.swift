import VFFNFormats
import VFFNModels

/// The transformers remote code written beside a converted checkpoint by `convert --emit-modeling`:
/// one Python module (a resource of this package, embedded in the binary so that the executable
/// needs no files beside it) and the `auto_map` entries of config.json that point at it.
public enum RemoteCode {
    public static let fileName = "modeling_versatile_ffn.py"

    public static var source: [UInt8] { PackageResources.modeling_versatile_ffn_py }

    /// `config` with our `auto_map` entry added (the family declares its Auto class and ours);
    /// any other entries it had are kept.
    static func addingAutoMap(to config: JSON, path: String) throws(VFFNError) -> JSON {
        let type = config["model_type"]?.stringValue ?? ""
        guard let family = Architectures.family(type) else {
            throw .badInput(path, "model_type \"\(type)\" has no transformers remote code (supported: \(Architectures.supportedModelTypes.joined(separator: ", ")))")
        }
        let module = String(fileName.dropLast(3))
        var members = (config["auto_map"]?.objectMembers ?? []).filter { $0.0 != family.autoClass }
        members.append((family.autoClass, .string(module + "." + family.remoteCodeClass)))
        // What it replaced, for `strip` to put back.
        let section = config[VersatileFFNSettings.key].map { $0.setting("source_auto_map", to: config["auto_map"] ?? .null) }
        let withSection = section.map { config.setting(VersatileFFNSettings.key, to: $0) } ?? config
        return withSection.setting("auto_map", to: .object(members))
    }
}

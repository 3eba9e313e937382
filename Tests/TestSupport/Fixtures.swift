import Foundation
import VFFNFormats

/// The committed fixtures (see fixtures/generate.py) and helpers to compare against them.
public enum Fixtures {
    public static let packageRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    public static func path(_ name: String) -> String { packageRoot + "/fixtures/" + name }

    /// The token sequence every golden was computed on.
    public static let tokens = [1, 5, 17, 42, 99, 3, 64, 7, 120, 33, 250, 0]

    public static func golden(_ name: String) throws -> (values: [Float], shape: [Int]) {
        let p = path("goldens/" + name)
        guard let data = FileManager.default.contents(atPath: p) else { throw VFFNError.io(p, "missing golden") }
        return try NPY.decode(Array(data), path: p)
    }

    /// The built `vffn-convert` executable (`swift test` builds it beside the test bundle).
    public static var executable: String {
        if let p = ProcessInfo.processInfo.environment["VFFN_CONVERT_BIN"] { return p }
        let bundleDir = Bundle.main.bundleURL.path
        for dir in [bundleDir, (bundleDir as NSString).deletingLastPathComponent, packageRoot + "/.build/debug"] {
            let candidate = dir + "/vffn-convert"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return packageRoot + "/.build/debug/vffn-convert"
    }
}

/// One directory per test process holding every test's scratch space, removed at exit.
private let scratchRoot: String = {
    var template = Array((NSTemporaryDirectory() + "/vffn-tests-XXXXXX").utf8CString)
    let p = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    precondition(p != nil, "mkdtemp failed")
    let root = String(cString: p!)
    atexit { removeScratchRoot() }
    return root
}()

private func removeScratchRoot() {
    try? FileManager.default.removeItem(atPath: scratchRoot)
}

/// A fresh empty directory for one test.
public func makeTemporaryDirectory() -> String {
    var template = Array((scratchRoot + "/t-XXXXXX").utf8CString)
    let p = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    precondition(p != nil, "mkdtemp failed")
    return String(cString: p!)
}

/// max |a - b| / max |b|: the error measure the issue states tolerances in.
public func relativeError(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "compared arrays differ in length: \(a.count) vs \(b.count)")
    var diff: Float = 0, scale: Float = 0
    for i in a.indices {
        diff = max(diff, abs(a[i] - b[i]))
        scale = max(scale, abs(b[i]))
    }
    return diff / scale
}

public func writeFile(_ path: String, _ bytes: [UInt8]) {
    precondition(FileManager.default.createFile(atPath: path, contents: Data(bytes)), "cannot write \(path)")
}

public func writeFile(_ path: String, _ text: String) {
    writeFile(path, Array(text.utf8))
}

/// A safetensors file from a header string and data section, with the header length given or
/// computed: the raw material of the malformed-input tests.
public func safetensorsBytes(header: String, data: [UInt8] = [], declaredLength: UInt64? = nil) -> [UInt8] {
    let h = Array(header.utf8)
    let n = declaredLength ?? UInt64(h.count)
    return (0..<8).map { UInt8(truncatingIfNeeded: n >> (8 * $0)) } + h + data
}

/// Rewrites a single-file checkpoint's tensors with the project's writer: `transform` returns
/// the record to keep (renamed, reshaped or cut) or nil to drop the tensor.
public func rewriteTensors(_ dir: String, _ transform: (TensorInfo, [UInt8]) -> TensorRecord?) throws {
    let path = dir + "/model.safetensors"
    let file = try SafeTensorsFile(path: path)
    let records = file.tensors.compactMap { transform($0, Array(file.bytes($0))) }
    try SafeTensorsWriter.write(records, metadata: file.metadata, to: path + ".new")
    try FileManager.default.removeItem(atPath: path)
    try FileManager.default.moveItem(atPath: path + ".new", toPath: path)
}

/// Copies a directory tree (fixtures are never modified in place).
public func copyDirectory(_ from: String, to: String) throws {
    try FileManager.default.copyItem(atPath: from, toPath: to)
}

/// Everything under `root`, one line per entry (path, kind, size, contents or link target),
/// symlinks not followed: two equal listings mean nothing was created, removed or changed.
public func fileTree(_ root: String) -> [String] {
    var out: [String] = []
    func walk(_ dir: String, _ prefix: String) {
        for name in ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted() {
            let path = dir + "/" + name
            var st = stat()
            guard lstat(path, &st) == 0 else { continue }
            switch st.st_mode & S_IFMT {
            case S_IFDIR:
                out.append(prefix + name + "/")
                walk(path, prefix + name + "/")
            case S_IFLNK:
                out.append(prefix + name + " -> " + ((try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? "?"))
            case S_IFREG:
                let bytes = FileManager.default.contents(atPath: path).map { Array($0) } ?? []
                var h: UInt64 = 0xcbf29ce484222325
                for b in bytes { h = (h ^ UInt64(b)) &* 0x100000001b3 }
                out.append(prefix + name + " \(bytes.count) bytes fnv \(String(h, radix: 16))")
            default:
                out.append(prefix + name + " (special)")
            }
        }
    }
    walk(root, "")
    return out
}

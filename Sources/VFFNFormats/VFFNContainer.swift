import Foundation

/// The project's own checkpoint container: a whole Hugging Face checkpoint (config, tensors,
/// tokenizer and other files) in one file that carries its own integrity. Layout (docs/FORMATS.md):
///
///     0   8 bytes  magic 89 'V' 'F' 'F' 'N' 0D 0A 1A   (PNG-style: catches text-mode copies)
///     8   u32      version (1)
///     12  u32      flags (0)
///     16  u64      header length H
///     24  H bytes  JSON header (UTF-8, padded with spaces)
///     ... entries (tensors, file blobs, shard headers), each at a multiple of 64
///
/// Every entry has an encoding (`raw` or `deflate`) and a CRC32 of its stored bytes, checked
/// before anything is returned, so a flipped byte is reported with the entry's name.
public final class VFFNContainer: SingleFileCheckpoint, @unchecked Sendable {
    public static let magic: [UInt8] = [0x89, 0x56, 0x46, 0x46, 0x4E, 0x0D, 0x0A, 0x1A]
    public static let version: UInt32 = 1
    static let preambleSize = 24
    static let alignment = 64
    /// Same cap as safetensors: a larger header is an attack or a mistake.
    static let maxHeaderSize: UInt64 = 100_000_000

    /// How an entry's bytes are stored in the container: as they are, or deflated.
    public enum Encoding: String, Sendable {
        case raw
        case deflate
    }

    /// Where one blob lives and how it is stored.
    public struct Entry: Sendable {
        public let name: String
        public let offset: Int
        public let storedLength: Int
        /// Length once decoded (equal to `storedLength` for raw entries).
        public let length: Int
        public let encoding: Encoding
        public let crc32: UInt32
    }

    /// A safetensors file the container was packed from: its name, metadata, and (when packed
    /// from a directory) its exact header bytes, so `unpack` rebuilds it byte for byte.
    public struct Shard: Sendable {
        public let name: String
        public let metadata: [(String, String)]?
        public let header: Entry?
    }

    public let path: String
    public var format: TensorFileFormat { .vffn }
    public let config: JSON
    public let tensors: [TensorInfo]
    /// Per tensor (same order), the entry holding its bytes and its shard's name.
    public let tensorEntries: [Entry]
    public let tensorShards: [String]
    public let files: [Entry]
    public let shards: [Shard]
    public var metadata: [(String, String)]? { shards.count == 1 ? shards[0].metadata : nil }

    private let file: MappedFile
    private let index: [String: Int]
    private let verified = VerifiedSet<Int>()

    public init(path: String) throws(VFFNError) {
        self.path = path
        let mapped = try MappedFile(path: path)
        let fileSize = mapped.bytes.count
        var r = ByteReader(mapped.bytes, path: path, context: ".vffn preamble")
        guard fileSize >= Self.preambleSize else {
            throw .badInput(path, "truncated: \(fileSize) bytes, too short for the \(Self.preambleSize)-byte .vffn preamble")
        }
        guard Array(try r.take(8, "magic")) == Self.magic else { throw .badInput(path, "not a .vffn file (bad magic)") }
        let version = try r.u32("version")
        guard version == Self.version else {
            throw .badInput(path, ".vffn version \(version) is not supported (this tool reads version \(Self.version))")
        }
        let flags = try r.u32("flags")
        guard flags == 0 else { throw .badInput(path, ".vffn flags \(flags) are not understood (expected 0)") }
        let h = try r.u64("header length")
        guard h > 0, h <= Self.maxHeaderSize else {
            throw .badInput(path, ".vffn header length \(h) is outside 1...\(Self.maxHeaderSize)")
        }
        guard h <= UInt64(fileSize - Self.preambleSize) else {
            throw .badInput(path, ".vffn header length \(h) runs past the end of the \(fileSize)-byte file (truncated?)")
        }
        let headerBytes = try r.take(Int(h), "header")
        let dataStart = Self.preambleSize + Int(h)
        let header = try JSONC(parsing: headerBytes, path: path)

        guard let configObject = header["config"], configObject.isObject else {
            throw .badInput(path, ".vffn header has no \"config\" object")
        }
        do { config = try JSON.parse(configObject.serialized) } catch {
            throw .badInput(path, ".vffn config is not valid JSON: \(error.reason)")
        }
        // The top-level versatile_ffn mirrors the config's, so a reader can see what the file
        // is without the model's config; the two must agree.
        let top = header["versatile_ffn"].map { (try? JSON.parse($0.serialized)) ?? .null } ?? .null
        if top != (config["versatile_ffn"] ?? .null) {
            throw .badInput(path, ".vffn header's \"versatile_ffn\" differs from the one in its config")
        }

        var claimed: [(Range<Int>, String)] = []
        func entry(_ o: JSONC, what: String) throws(VFFNError) -> Entry {
            guard let name = o["name"]?.string, !name.isEmpty else { throw .badInput(path, ".vffn \(what) entry without a name") }
            func number(_ key: String) throws(VFFNError) -> Int {
                guard let v = o[key]?.nonNegativeInt else {
                    throw .badInput(path, ".vffn \(what) \"\(name)\": \"\(key)\" is missing or not a non-negative integer")
                }
                return v
            }
            let offset = try number("offset"), stored = try number("stored_length"), length = try number("length")
            guard let enc = o["encoding"]?.string.flatMap(Encoding.init(rawValue:)) else {
                throw .badInput(path, ".vffn \(what) \"\(name)\": encoding must be \"raw\" or \"deflate\"")
            }
            guard let crc = o["crc32"]?.nonNegativeInt, crc <= Int(UInt32.max) else {
                throw .badInput(path, ".vffn \(what) \"\(name)\": crc32 is missing or not a 32-bit unsigned integer")
            }
            guard offset % Self.alignment == 0, offset >= dataStart else {
                throw .badInput(path, ".vffn \(what) \"\(name)\": offset \(offset) is not a multiple of \(Self.alignment) after the header")
            }
            let (end, overflow) = offset.addingReportingOverflow(stored)
            guard !overflow, end <= fileSize else {
                throw .badInput(path, ".vffn \(what) \"\(name)\": bytes \(offset)..<\(offset &+ stored) run past the end of the \(fileSize)-byte file (truncated?)")
            }
            switch enc {
            case .raw:
                guard stored == length else { throw .badInput(path, ".vffn \(what) \"\(name)\": raw entry with stored_length \(stored) != length \(length)") }
            case .deflate:
                // Bounded output: inflating more than the declared length is refused, so a
                // small file cannot claim to expand without limit. zlib never more than ~1032x.
                guard length / 1032 <= stored else {
                    throw .badInput(path, ".vffn \(what) \"\(name)\": deflate length \(length) from \(stored) stored bytes is impossible")
                }
            }
            claimed.append((offset..<end, name))
            return Entry(name: name, offset: offset, storedLength: stored, length: length, encoding: enc, crc32: UInt32(crc))
        }

        guard let tensorList = header["tensors"]?.array else { throw .badInput(path, ".vffn header has no \"tensors\" array") }
        var infos: [TensorInfo] = [], entries: [Entry] = [], shardNames: [String] = []
        var index: [String: Int] = [:]
        for t in tensorList {
            let e = try entry(t, what: "tensor")
            guard index[e.name] == nil else { throw .badInput(path, ".vffn tensor \"\(e.name)\" is listed twice") }
            guard let dtypeName = t["dtype"]?.string, let dtype = DType(rawValue: dtypeName) else {
                throw .badInput(path, ".vffn tensor \"\(e.name)\": unknown dtype \(t["dtype"]?.serialized ?? "(missing)") (supported: \(DType.supportedList))")
            }
            guard let dims = t["shape"]?.array else { throw .badInput(path, ".vffn tensor \"\(e.name)\": missing \"shape\" array") }
            var shape: [Int] = []
            for d in dims {
                guard let v = d.nonNegativeInt else { throw .badInput(path, ".vffn tensor \"\(e.name)\": shape entry \(d.serialized) is not a non-negative integer") }
                shape.append(v)
            }
            let bits = try checkedProduct(shape.map(UInt64.init) + [UInt64(dtype.bitSize)], path: path, what: ".vffn tensor \"\(e.name)\" shape \(shape)")
            guard bits % 8 == 0, bits / 8 == UInt64(e.length) else {
                throw .badInput(path, ".vffn tensor \"\(e.name)\": shape \(shape) of \(dtype) needs \(bits / 8) bytes but the entry holds \(e.length)")
            }
            guard let shard = t["shard"]?.string, !shard.isEmpty, !shard.contains("/") else {
                throw .badInput(path, ".vffn tensor \"\(e.name)\": \"shard\" must be a plain file name")
            }
            index[e.name] = infos.count
            infos.append(TensorInfo(name: e.name, dtype: dtype, shape: shape, dataOffsets: e.offset..<e.offset + e.storedLength))
            entries.append(e)
            shardNames.append(shard)
        }
        var fileEntries: [Entry] = []
        for f in header["files"]?.array ?? [] {
            let e = try entry(f, what: "file")
            guard !e.name.hasPrefix("/"), !e.name.split(separator: "/").contains(where: { $0 == ".." || $0 == "." || $0.isEmpty }) else {
                throw .badInput(path, ".vffn file \"\(e.name)\" would be written outside the checkpoint directory")
            }
            guard !fileEntries.contains(where: { $0.name == e.name }) else { throw .badInput(path, ".vffn file \"\(e.name)\" is listed twice") }
            fileEntries.append(e)
        }
        var shardList: [Shard] = []
        for s in header["shards"]?.array ?? [] {
            guard let name = s["name"]?.string, !name.isEmpty, !name.contains("/") else { throw .badInput(path, ".vffn shard without a plain file name") }
            var metadata: [(String, String)]?
            if let m = s["metadata"], m.isObject {
                metadata = []
                for (k, v) in m.members {
                    guard let text = v.string else { throw .badInput(path, ".vffn shard \"\(name)\": metadata value of \"\(k)\" is not a string") }
                    metadata!.append((k, text))
                }
            }
            let headerEntry = try s["header"].map { (o) throws(VFFNError) in try entry(o, what: "shard header") }
            shardList.append(Shard(name: name, metadata: metadata, header: headerEntry))
        }
        for name in Set(shardNames) where !shardList.contains(where: { $0.name == name }) {
            shardList.append(Shard(name: name, metadata: nil, header: nil))
        }
        // Entries may not share bytes: one corrupt region must belong to exactly one name.
        claimed.sort { $0.0.lowerBound < $1.0.lowerBound }
        for (a, b) in zip(claimed, claimed.dropFirst()) where b.0.lowerBound < a.0.upperBound {
            throw .badInput(path, ".vffn entries \"\(a.1)\" and \"\(b.1)\" overlap")
        }
        file = mapped
        tensors = infos
        tensorEntries = entries
        tensorShards = shardNames
        files = fileEntries
        shards = shardList.sorted { $0.name < $1.name }
        self.index = index
    }

    public func info(_ name: String) -> TensorInfo? { index[name].map { tensors[$0] } }

    public func bytes(_ info: TensorInfo) throws(VFFNError) -> TensorData {
        guard let i = index[info.name] else { throw .badInput(path, "has no tensor \"\(info.name)\"") }
        return try contents(of: tensorEntries[i], what: "tensor")
    }

    /// Raw entries as one mapped piece; deflated ones inflated a piece at a time (their CRC32
    /// covers the stored bytes, so it is checked before the first piece).
    public func read(_ info: TensorInfo, chunkBytes: Int, _ body: (UnsafeRawBufferPointer) throws(VFFNError) -> Void) throws(VFFNError) {
        guard let i = index[info.name] else { throw .badInput(path, "has no tensor \"\(info.name)\"") }
        try read(tensorEntries[i], what: "tensor", chunkBytes: chunkBytes, body)
    }

    /// An entry's decoded bytes after its CRC32 is checked (once per entry): mapped when raw,
    /// inflated for this call when deflated.
    func contents(of e: Entry, what: String) throws(VFFNError) -> TensorData {
        let stored = try checkedStoredBytes(e, what: what)
        switch e.encoding {
        case .raw: return TensorData(mapped: stored, owner: file)
        case .deflate: return try Deflate.inflate(stored, length: e.length, path: path, what: "\(what) \"\(e.name)\"")
        }
    }

    func read(_ e: Entry, what: String, chunkBytes: Int, _ body: (UnsafeRawBufferPointer) throws(VFFNError) -> Void) throws(VFFNError) {
        let stored = try checkedStoredBytes(e, what: what)
        switch e.encoding {
        case .raw: try body(stored)
        case .deflate: try Inflater(stored, length: e.length, raw: false, path: path, what: "\(what) \"\(e.name)\"").forEachPiece(chunk: chunkBytes, body)
        }
    }

    private func checkedStoredBytes(_ e: Entry, what: String) throws(VFFNError) -> UnsafeRawBufferPointer {
        let stored = UnsafeRawBufferPointer(rebasing: file.bytes[e.offset..<e.offset + e.storedLength])
        if !verified.contains(e.offset) {
            let crc = CRC32.checksum(stored)
            guard crc == e.crc32 else {
                throw .badInput(path, "\(what) \"\(e.name)\" is corrupt: CRC32 \(hex(crc)) of its \(e.storedLength) stored bytes, expected \(hex(e.crc32))")
            }
            verified.insert(e.offset)
        }
        return stored
    }

    // MARK: SingleFileCheckpoint

    public func checkpointConfig() throws(VFFNError) -> JSON { config }

    /// The embedded files a conversion copies through (config.json and the index are rewritten).
    public var embeddedFileNames: [String] {
        files.map(\.name).filter { $0 != "config.json" && $0 != Checkpoint.indexName && $0 != Checkpoint.torchIndexName }.sorted()
    }

    public func extractEmbeddedFile(_ name: String, to destination: String) throws(VFFNError) {
        guard let e = files.first(where: { $0.name == name }) else { throw .badInput(path, "has no embedded file \"\(name)\"") }
        let dir = (destination as NSString).deletingLastPathComponent
        do { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) } catch {
            throw .io(dir, "cannot create: \(error.localizedDescription)")
        }
        let out = try OutputFile(path: destination)
        try read(e, what: "file", chunkBytes: tensorPieceBytes) { (piece) throws(VFFNError) in try out.write(piece) }
        try out.finish()
    }

    /// An embedded file's bytes (a tokenizer.json), checked like every entry.
    public func embeddedFile(_ name: String) throws(VFFNError) -> [UInt8]? {
        guard let e = files.first(where: { $0.name == name }) else { return nil }
        var bytes: [UInt8] = []
        try read(e, what: "file", chunkBytes: tensorPieceBytes) { (piece) throws(VFFNError) in bytes.append(contentsOf: piece) }
        return bytes
    }

    public var readerNotes: [String] { [] }
}

private func hex(_ v: UInt32) -> String { "0x" + String(v, radix: 16, uppercase: false).leftPadded(8, with: "0") }

extension String {
    func leftPadded(_ n: Int, with c: Character) -> String { String(repeating: c, count: max(0, n - count)) + self }
}

/// Entries whose checksum was already checked, shared across threads that read tensors.
final class VerifiedSet<Key: Hashable>: @unchecked Sendable {
    private var set = Set<Key>()
    private let lock = NSLock()
    func contains(_ v: Key) -> Bool { lock.lock(); defer { lock.unlock() }; return set.contains(v) }
    func insert(_ v: Key) { lock.lock(); set.insert(v); lock.unlock() }
}

/// A container's embedded file, read in pieces when written (its reads are thread-safe).
struct EmbeddedFile: PieceSource, @unchecked Sendable {
    let container: VFFNContainer
    let entry: VFFNContainer.Entry

    func forEachPiece(_ body: (UnsafeRawBufferPointer) throws(VFFNError) -> Void) throws(VFFNError) {
        try container.read(entry, what: "file", chunkBytes: tensorPieceBytes, body)
    }
}

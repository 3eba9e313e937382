import CJSONC
import CZlib
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
    private let decoded = DecodedCache()
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

    public func bytes(_ info: TensorInfo) throws(VFFNError) -> UnsafeRawBufferPointer {
        guard let i = index[info.name] else { throw .badInput(path, "has no tensor \"\(info.name)\"") }
        return try contents(of: tensorEntries[i], what: "tensor")
    }

    /// An entry's decoded bytes after its CRC32 is checked (once per entry).
    func contents(of e: Entry, what: String) throws(VFFNError) -> UnsafeRawBufferPointer {
        let stored = UnsafeRawBufferPointer(rebasing: file.bytes[e.offset..<e.offset + e.storedLength])
        if !verified.contains(e.offset) {
            let crc = CRC32.checksum(stored)
            guard crc == e.crc32 else {
                throw .badInput(path, "\(what) \"\(e.name)\" is corrupt: CRC32 \(hex(crc)) of its \(e.storedLength) stored bytes, expected \(hex(e.crc32))")
            }
            verified.insert(e.offset)
        }
        switch e.encoding {
        case .raw: return stored
        case .deflate:
            return try decoded.bytes("\(e.offset)") { () throws(VFFNError) in
                try Deflate.inflate(stored, length: e.length, path: path, what: "\(what) \"\(e.name)\"")
            }
        }
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
        try out.write(try contents(of: e, what: "file"))
        try out.finish()
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

// MARK: - Writing

extension VFFNContainer {
    /// Where an entry's bytes come from when writing: a mapped source or memory.
    public struct Blob: Sendable {
        public let name: String
        public let bytes: TensorBytes
        public init(name: String, bytes: TensorBytes) {
            self.name = name
            self.bytes = bytes
        }
    }

    /// A tensor to write and the safetensors shard it belongs to when unpacked.
    public struct TensorToWrite: Sendable {
        public let record: TensorRecord
        public let shard: String
        public init(_ record: TensorRecord, shard: String) {
            self.record = record
            self.shard = shard
        }
    }

    public struct ShardToWrite: Sendable {
        public let name: String
        public let metadata: [(String, String)]?
        /// The original file's first 8 + N bytes, to rebuild it exactly.
        public let header: [UInt8]?
        public init(name: String, metadata: [(String, String)]?, header: [UInt8]?) {
            self.name = name
            self.metadata = metadata
            self.header = header
        }
    }

    /// Writes a container in one pass with bounded memory: the header's size is bounded from
    /// the names and shapes alone (every number at its widest), that much space is reserved,
    /// the entries are streamed after it, and the real header is written into the space last,
    /// padded with spaces. With `compress`, each entry is deflated on its own (zlib level 1:
    /// weights barely compress, so speed matters more than the last percent).
    public static func write(config: JSON, tensors: [TensorToWrite], files: [Blob], shards: [ShardToWrite],
                             compress: Bool, to path: String, progress: (Int, Int) -> Void = { _, _ in }) throws(VFFNError) {
        let widest = Int.max
        func entryJSON(_ name: String, _ extra: [(String, JSON)], _ placed: (offset: Int, stored: Int, length: Int, crc: Int, enc: Encoding)?) -> JSON {
            let p = placed ?? (widest, widest, widest, Int(UInt32.max), .deflate)
            return .object([("name", .string(name))] + extra + [
                ("offset", .int(p.offset)), ("stored_length", .int(p.stored)), ("length", .int(p.length)),
                ("encoding", .string(p.enc.rawValue)), ("crc32", .int(p.crc)),
            ])
        }
        typealias Placement = (offset: Int, stored: Int, length: Int, crc: Int, enc: Encoding)
        func header(_ t: [Placement?], _ f: [Placement?], _ s: [Placement?]) -> [UInt8] {
            var shardList: [JSON] = []
            for (i, sh) in shards.enumerated() {
                var members: [(String, JSON)] = [("name", .string(sh.name))]
                if let m = sh.metadata { members.append(("metadata", .object(m.map { ($0, .string($1)) }))) }
                if sh.header != nil { members.append(("header", entryJSON(sh.name + ".header", [], s[i]))) }
                shardList.append(.object(members))
            }
            let json = JSON.object([
                ("format", .string("vffn")), ("version", .int(Int(version))),
                ("config", config), ("versatile_ffn", config["versatile_ffn"] ?? .null),
                ("tensors", .array(tensors.enumerated().map { i, w in
                    entryJSON(w.record.name, [("dtype", .string(w.record.dtype.rawValue)), ("shape", .array(w.record.shape.map { .int($0) })),
                                              ("shard", .string(w.shard))], t[i])
                })),
                ("files", .array(files.enumerated().map { i, b in entryJSON(b.name, [], f[i]) })),
                ("shards", .array(shardList)),
            ])
            return Array(json.compact.utf8)
        }
        let reserved = header(tensors.map { _ in nil }, files.map { _ in nil }, shards.map { _ in nil }).count
        let dataStart = align(preambleSize + reserved)

        let out = try OutputFile(path: path)
        var offset = dataStart
        try out.seek(to: offset)
        func place(_ bytes: UnsafeRawBufferPointer) throws(VFFNError) -> Placement {
            let start = offset
            if compress {
                let packed = try Deflate.deflate(bytes, path: path)
                let crc = packed.withUnsafeBytes { CRC32.checksum($0) }
                try out.write(packed)
                offset += packed.count
                let p: Placement = (start, packed.count, bytes.count, Int(crc), .deflate)
                try pad()
                return p
            }
            try out.write(bytes)
            offset += bytes.count
            let p: Placement = (start, bytes.count, bytes.count, Int(CRC32.checksum(bytes)), .raw)
            try pad()
            return p
        }
        func pad() throws(VFFNError) {
            let n = align(offset) - offset
            if n > 0 { try out.write([UInt8](repeating: 0, count: n)); offset += n }
        }
        func place(_ b: TensorBytes) throws(VFFNError) -> Placement {
            try b.withBytes { (p) throws(VFFNError) in try place(p) }
        }
        var tp: [Placement?] = [], fp: [Placement?] = [], sp: [Placement?] = []
        for (i, t) in tensors.enumerated() {
            tp.append(try place(t.record.bytes))
            progress(i + 1, tensors.count)
        }
        for f in files { fp.append(try place(f.bytes)) }
        for s in shards { sp.append(try s.header.map { (h) throws(VFFNError) in try place(.owned(h)) }) }

        var text = header(tp, fp, sp)
        precondition(text.count <= reserved, "header grew past its reservation")
        text.append(contentsOf: repeatElement(0x20, count: dataStart - preambleSize - text.count))
        var preamble = magic
        preamble += littleEndianBytes(version)
        preamble += littleEndianBytes(UInt32(0))
        preamble += littleEndianBytes(UInt64(text.count))
        try out.seek(to: 0)
        try out.write(preamble + text)
        try out.finish()
    }

    static func align(_ n: Int) -> Int { (n + alignment - 1) / alignment * alignment }
}

// MARK: - zlib

enum CRC32 {
    static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 { update(0, bytes) }

    /// The CRC32 of bytes that continue those `crc` was computed over.
    static func update(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
        guard let base = bytes.baseAddress else { return crc }
        return UInt32(crc32_z(uLong(crc), base.assumingMemoryBound(to: UInt8.self), bytes.count))
    }
}

enum Deflate {
    static func deflate(_ bytes: UnsafeRawBufferPointer, path: String) throws(VFFNError) -> [UInt8] {
        var bound = compressBound(uLong(bytes.count))
        var out = [UInt8](repeating: 0, count: Int(bound))
        let status = out.withUnsafeMutableBytes { o in
            compress2(o.baseAddress!.assumingMemoryBound(to: Bytef.self), &bound,
                      bytes.baseAddress?.assumingMemoryBound(to: Bytef.self) ?? UnsafePointer(bitPattern: 1), uLong(bytes.count), 1)
        }
        guard status == Z_OK else { throw .io(path, "zlib compress failed (status \(status))") }
        out.removeLast(out.count - Int(bound))
        return out
    }

    /// Inflates a zlib stream (`raw: false`, .vffn entries) or a raw deflate stream (`raw: true`,
    /// zip entries) into exactly `length` bytes; anything else (a corrupt, short or longer
    /// stream) is an error naming `what`. Output grows only as it is produced, so a stream that
    /// lies about its size costs what it really expands to, never what it claims.
    static func inflate(_ stored: UnsafeRawBufferPointer, length: Int, raw: Bool = false, path: String, what: String) throws(VFFNError) -> [UInt8] {
        var stream = z_stream()
        guard inflateInit2_(&stream, raw ? -MAX_WBITS : MAX_WBITS, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw .io(path, "zlib inflateInit failed")
        }
        defer { inflateEnd(&stream) }
        let chunk = 1 << 20
        var out: [UInt8] = []
        out.reserveCapacity(min(length, chunk))
        var buffer = [UInt8](repeating: 0, count: chunk)
        var fed = 0
        var status: Int32 = Z_OK
        while status == Z_OK {
            if stream.avail_in == 0 && fed < stored.count {
                let n = min(stored.count - fed, Int(UInt32.max))
                stream.next_in = UnsafeMutablePointer(mutating: (stored.baseAddress! + fed).assumingMemoryBound(to: Bytef.self))
                stream.avail_in = uInt(n)
                fed += n
            }
            let produced: Int = buffer.withUnsafeMutableBytes { b in
                stream.next_out = b.baseAddress!.assumingMemoryBound(to: Bytef.self)
                stream.avail_out = uInt(chunk)
                status = CZlib.inflate(&stream, Z_NO_FLUSH)
                return chunk - Int(stream.avail_out)
            }
            guard out.count + produced <= length else { throw .badInput(path, "\(what) inflates to more than the \(length) bytes it declares") }
            out.append(contentsOf: buffer[0..<produced])
            if status == Z_BUF_ERROR && stream.avail_in == 0 && fed == stored.count {
                throw .badInput(path, "\(what): deflate stream ends after \(out.count) of \(length) bytes (truncated)")
            }
        }
        guard status == Z_STREAM_END else { throw .badInput(path, "\(what) is not a valid deflate stream (zlib status \(status))") }
        guard out.count == length else { throw .badInput(path, "\(what) inflates to \(out.count) bytes, expected \(length)") }
        return out
    }
}

// MARK: - json-c

/// A json-c value, read-only, kept alive by its root. json-c parses the container header; the
/// config inside it is re-read by our own strict parser, which keeps key order and number text.
final class JSONC: @unchecked Sendable {
    private let object: OpaquePointer?
    private let root: JSONC?

    init(parsing bytes: UnsafeRawBufferPointer, path: String) throws(VFFNError) {
        guard let tok = json_tokener_new() else { throw .io(path, "json-c: cannot allocate a tokener") }
        defer { json_tokener_free(tok) }
        json_tokener_set_flags(tok, Int32(JSON_TOKENER_STRICT) | Int32(JSON_TOKENER_VALIDATE_UTF8))
        let obj = json_tokener_parse_ex(tok, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(bytes.count))
        let err = json_tokener_get_error(tok)
        // The header is padded with spaces after the object; json-c stops at the object's end.
        let rest = bytes[Int(json_tokener_get_parse_end(tok))...]
        guard let obj, err == json_tokener_success, rest.allSatisfy({ $0 == 0x20 }) else {
            if let obj { json_object_put(obj) }
            let reason = err == json_tokener_success ? "bytes after the JSON object"
                : err == json_tokener_continue ? "the header ends inside the JSON object" : String(cString: json_tokener_error_desc(err))
            throw .badInput(path, ".vffn header is not valid JSON: \(reason) at header byte \(json_tokener_get_parse_end(tok))")
        }
        guard json_object_get_type(obj) == json_type_object else {
            json_object_put(obj)
            throw .badInput(path, ".vffn header is not a JSON object")
        }
        object = obj
        root = nil
    }

    private init(_ object: OpaquePointer?, root: JSONC) {
        self.object = object
        self.root = root
    }

    deinit { if root == nil, let object { json_object_put(object) } }

    private var type: json_type { json_object_get_type(object) }
    var isObject: Bool { type == json_type_object }

    subscript(key: String) -> JSONC? {
        guard isObject else { return nil }
        var child: OpaquePointer?
        guard json_object_object_get_ex(object, key, &child) != 0 else { return nil }
        return JSONC(child, root: root ?? self)
    }

    var members: [(String, JSONC)] {
        guard isObject else { return [] }
        var out: [(String, JSONC)] = []
        var it = json_object_iter_begin(object)
        var end = json_object_iter_end(object)
        while json_object_iter_equal(&it, &end) == 0 {
            out.append((String(cString: json_object_iter_peek_name(&it)), JSONC(json_object_iter_peek_value(&it), root: root ?? self)))
            json_object_iter_next(&it)
        }
        return out
    }

    var array: [JSONC]? {
        guard type == json_type_array else { return nil }
        return (0..<json_object_array_length(object)).map { JSONC(json_object_array_get_idx(object, $0), root: root ?? self) }
    }

    var string: String? { type == json_type_string ? String(cString: json_object_get_string(object)) : nil }

    /// An integer in 0...Int.max; anything else (negative, fractional, out of range) is nil.
    var nonNegativeInt: Int? {
        guard type == json_type_int else { return nil }
        // Values past Int64.max saturate here; no real offset or length is anywhere near that,
        // and every one is checked against the file size afterwards.
        let v = json_object_get_int64(object)
        return v >= 0 ? Int(v) : nil
    }

    var serialized: String { String(cString: json_object_to_json_string_ext(object, JSON_C_TO_STRING_PLAIN)) }
}

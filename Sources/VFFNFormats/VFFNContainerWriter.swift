import Foundation

extension VFFNContainer {
    /// An embedded file to write and where its bytes come from (memory or a file region).
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

    /// One safetensors shard of the checkpoint being packed: its name, metadata and tensors.
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
        func pad() throws(VFFNError) {
            let n = align(offset) - offset
            if n > 0 { try out.write([UInt8](repeating: 0, count: n)); offset += n }
        }
        /// Streams an entry: its CRC32 covers the stored bytes, compressed as they are produced.
        func place(_ b: TensorBytes) throws(VFFNError) -> Placement {
            let start = offset
            var crc: UInt32 = 0
            func emit(_ stored: UnsafeRawBufferPointer) throws(VFFNError) {
                crc = CRC32.update(crc, stored)
                try out.write(stored)
                offset += stored.count
            }
            if compress {
                let deflater = try Deflater(path: path)
                try b.forEachCheckedPiece(what: path) { (piece) throws(VFFNError) in try deflater.add(piece, emit) }
                try deflater.finish(emit)
            } else {
                try b.forEachCheckedPiece(what: path, emit)
            }
            let p: Placement = (start, offset - start, b.count, Int(crc), compress ? .deflate : .raw)
            try pad()
            return p
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

import Foundation

/// Byte-level builders for the binary formats, written from the specifications and independent
/// of the readers they test, so that malformed files can be made one defect at a time.

public func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian, Array.init) }

/// Bitwise CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320).
public func crc32(_ bytes: [UInt8]) -> UInt32 {
    var c: UInt32 = 0xFFFF_FFFF
    for b in bytes {
        c ^= UInt32(b)
        for _ in 0..<8 { c = c & 1 == 1 ? (c >> 1) ^ 0xEDB8_8320 : c >> 1 }
    }
    return ~c
}

// MARK: GGUF

public enum GGUF {
    public static func string(_ s: String) -> [UInt8] { le(UInt64(s.utf8.count)) + Array(s.utf8) }

    /// One metadata pair: key, type id, encoded value.
    public static func kv(_ key: String, _ type: Int32, _ value: [UInt8]) -> [UInt8] { string(key) + le(type) + value }
    public static func u32(_ key: String, _ v: UInt32) -> [UInt8] { kv(key, 4, le(v)) }
    public static func f32(_ key: String, _ v: Float) -> [UInt8] { kv(key, 6, le(v.bitPattern)) }
    public static func str(_ key: String, _ v: String) -> [UInt8] { kv(key, 8, string(v)) }

    public struct Tensor: Sendable {
        public var name: String
        public var dims: [Int64]
        public var type: Int32
        public var offset: UInt64
        public init(_ name: String, _ dims: [Int64], type: Int32, offset: UInt64) {
            self.name = name
            self.dims = dims
            self.type = type
            self.offset = offset
        }
    }

    /// A GGUF file: header, metadata, tensor infos, zero padding to `alignment`, then `data`.
    public static func file(version: UInt32 = 3, kvs: [[UInt8]], tensors: [Tensor], data: [UInt8], alignment: Int = 32,
                            tensorCount: Int64? = nil, kvCount: Int64? = nil) -> [UInt8] {
        var out = Array("GGUF".utf8) + le(version) + le(tensorCount ?? Int64(tensors.count)) + le(kvCount ?? Int64(kvs.count))
        for k in kvs { out += k }
        for t in tensors {
            out += string(t.name) + le(UInt32(t.dims.count))
            for d in t.dims { out += le(d) }
            out += le(t.type) + le(t.offset)
        }
        out += [UInt8](repeating: 0, count: (alignment - out.count % alignment) % alignment)
        return out + data
    }

    /// The metadata of a Llama with d = 8, I = 16, 1 layer, 2 heads: enough to map and run.
    public static func llamaMetadata(layers: UInt32 = 1) -> [[UInt8]] {
        [str("general.architecture", "llama"), u32("llama.context_length", 64), u32("llama.embedding_length", 8),
         u32("llama.block_count", layers), u32("llama.feed_forward_length", 16), u32("llama.attention.head_count", 2),
         u32("llama.attention.head_count_kv", 2), f32("llama.attention.layer_norm_rms_epsilon", 1e-5),
         f32("llama.rope.freq_base", 10000)]
    }
}

// MARK: zip and torch.save

public enum Zip {
    public struct Entry: Sendable {
        public var name: String
        public var data: [UInt8]
        /// Store the data as a deflate stream (method 8), made of one uncompressed block.
        public var deflated: Bool
        /// The uncompressed size the directory claims (default: the real one).
        public var declaredSize: UInt32?
        public init(_ name: String, _ data: [UInt8], deflated: Bool = false, declaredSize: UInt32? = nil) {
            self.name = name
            self.data = data
            self.deflated = deflated
            self.declaredSize = declaredSize
        }
    }

    /// A zip archive with correct CRCs, sizes and directory. Deflated entries use a "stored"
    /// deflate block (BFINAL, BTYPE 00, LEN, ~LEN, bytes): valid deflate without a compressor.
    public static func archive(_ entries: [Entry]) -> [UInt8] {
        var out: [UInt8] = [], central: [UInt8] = []
        for e in entries {
            let offset = UInt32(out.count), crc = crc32(e.data), name = Array(e.name.utf8)
            let stored = e.deflated ? [0x01] + le(UInt16(e.data.count)) + le(~UInt16(e.data.count)) + e.data : e.data
            let method = UInt16(e.deflated ? 8 : 0), size = e.declaredSize ?? UInt32(e.data.count)
            out += le(UInt32(0x0403_4B50)) + le(UInt16(20)) + le(UInt16(0)) + le(method) + le(UInt32(0)) + le(crc)
                + le(UInt32(stored.count)) + le(size) + le(UInt16(name.count)) + le(UInt16(0)) + name + stored
            central += le(UInt32(0x0201_4B50)) + le(UInt16(20)) + le(UInt16(20)) + le(UInt16(0)) + le(method) + le(UInt32(0)) + le(crc)
                + le(UInt32(stored.count)) + le(size) + le(UInt16(name.count)) + le(UInt16(0)) + le(UInt16(0))
                + le(UInt16(0)) + le(UInt16(0)) + le(UInt32(0)) + le(offset) + name
        }
        let cdOffset = UInt32(out.count)
        out += central
        out += le(UInt32(0x0605_4B50)) + le(UInt16(0)) + le(UInt16(0)) + le(UInt16(entries.count)) + le(UInt16(entries.count))
            + le(UInt32(central.count)) + le(cdOffset) + le(UInt16(0))
        return out
    }
}

/// Pickle opcodes for hand-made state dicts (protocol 2, as torch.save writes them).
public enum PickleOps {
    public static func unicode(_ s: String) -> [UInt8] { [0x58] + le(UInt32(s.utf8.count)) + Array(s.utf8) }
    public static func global(_ module: String, _ name: String) -> [UInt8] { [0x63] + Array("\(module)\n\(name)\n".utf8) }
    public static func int(_ v: Int) -> [UInt8] { v < 256 ? [0x4B, UInt8(v)] : [0x4A] + le(Int32(v)) }
    public static func tuple(_ items: [[UInt8]]) -> [UInt8] { [0x28] + items.flatMap { $0 } + [0x74] }

    /// One tensor entry: key, then `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
    public static func tensor(_ name: String, storage: String = "FloatStorage", key: String, numel: Int,
                              offset: Int = 0, shape: [Int], stride: [Int]) -> [UInt8] {
        let pid = tuple([unicode("storage"), global("torch", storage), unicode(key), unicode("cpu"), int(numel)]) + [0x51]
        let args = tuple([pid, int(offset), tuple(shape.map(int)), tuple(stride.map(int)), [0x89],
                          global("collections", "OrderedDict") + [0x29, 0x52]])
        return unicode(name) + global("torch._utils", "_rebuild_tensor_v2") + args + [0x52]
    }

    /// `{name: tensor, ...}` as an OrderedDict, ending with STOP.
    public static func stateDict(_ entries: [[UInt8]]) -> [UInt8] {
        [0x80, 0x02] + global("collections", "OrderedDict") + [0x29, 0x52, 0x28] + entries.flatMap { $0 } + [0x75, 0x2E]
    }

    /// A torch.save archive (`archive/data.pkl`, `archive/data/<key>`, version, byteorder).
    public static func torchArchive(pickle: [UInt8], storages: [(String, [UInt8])], byteorder: String = "little",
                                    deflated: Bool = false, declaredSize: UInt32? = nil) -> [UInt8] {
        Zip.archive([Zip.Entry("archive/data.pkl", pickle), Zip.Entry("archive/byteorder", Array(byteorder.utf8))]
                    + storages.map { Zip.Entry("archive/data/" + $0.0, $0.1, deflated: deflated, declaredSize: declaredSize) }
                    + [Zip.Entry("archive/version", Array("3\n".utf8))])
    }
}

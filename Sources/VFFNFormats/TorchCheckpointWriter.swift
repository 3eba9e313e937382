/// Writes a flat state dict as `torch.save` does (the zip "version 3" layout of docs/FORMATS.md
/// and formats.md section 3), so that `torch.load(path, weights_only=True)` reads it:
///
///     <top>/data.pkl            pickle protocol 2: OrderedDict of name -> _rebuild_tensor_v2(...)
///     <top>/.format_version     "1"
///     <top>/.storage_alignment  "64"
///     <top>/byteorder           "little"
///     <top>/data/<k>            storage k: one tensor's bytes, little-endian, 64-byte aligned
///     <top>/version             "3\n"
///
/// Entries are stored (not deflated), as torch writes them, so they can be memory-mapped. Every
/// entry carries ZIP64 sizes and offsets, so a checkpoint past 4 GiB takes the same path as the
/// small ones the tests load. A tensor may be given as several parts that are written one after
/// another into its storage: that is how fused tensors (OLMo's att_proj = [q; k; v]) are made
/// without assembling them in memory.
public enum TorchCheckpointWriter {
    /// One tensor to write: its name, dtype, shape and bytes.
    public struct Tensor: Sendable {
        public let name: String
        public let dtype: DType
        public let shape: [Int]
        public let parts: [TensorBytes]

        public init(name: String, dtype: DType, shape: [Int], parts: [TensorBytes]) {
            self.name = name
            self.dtype = dtype
            self.shape = shape
            self.parts = parts
        }

        var byteCount: Int { parts.reduce(0) { $0 + $1.count } }
    }

    /// torch's storage class for each dtype it has one for.
    static let storageClasses: [DType: String] = [
        .F32: "FloatStorage", .F16: "HalfStorage", .BF16: "BFloat16Storage", .F64: "DoubleStorage",
        .I64: "LongStorage", .I32: "IntStorage", .I16: "ShortStorage", .I8: "CharStorage", .U8: "ByteStorage", .BOOL: "BoolStorage",
    ]

    /// Writes `tensors` to `path`, under the archive folder `top` (torch uses the file's name
    /// without its extension). `written` is called after each tensor with its byte count.
    public static func write(_ tensors: [Tensor], top: String, to path: String, written: (Int) -> Void = { _ in }) throws(VFFNError) {
        for t in tensors {
            guard storageClasses[t.dtype] != nil else { throw .usage("tensor \"\(t.name)\": torch checkpoints have no storage class for \(t.dtype.rawValue)") }
            let expected = t.shape.reduce(1, *) * t.dtype.bitSize / 8
            precondition(expected == t.byteCount, "tensor \(t.name): \(t.byteCount) bytes for shape \(t.shape) \(t.dtype)")
        }
        let zip = try ZipWriter(path: path)
        try zip.add(top + "/data.pkl", [TensorBytes.owned(statePickle(tensors))])
        try zip.add(top + "/.format_version", [.owned(Array("1".utf8))])
        try zip.add(top + "/.storage_alignment", [.owned(Array("64".utf8))])
        try zip.add(top + "/byteorder", [.owned(Array("little".utf8))])
        for (key, t) in tensors.enumerated() {
            try zip.add(top + "/data/\(key)", t.parts)
            written(t.byteCount)
        }
        try zip.add(top + "/version", [.owned(Array("3\n".utf8))])
        try zip.finish()
    }

    /// The opcode stream torch.save produces for a state dict (formats.md section 3.2), in the
    /// protocol-2 subset that the weights_only unpickler accepts; tensor k uses storage "k".
    static func statePickle(_ tensors: [Tensor]) -> [UInt8] {
        var p = PickleWriter()
        p.op(0x80); p.out.append(2) // PROTO 2
        p.global("collections", "OrderedDict"); p.op(0x29); p.op(0x52) // EMPTY_TUPLE, REDUCE
        p.op(0x28) // MARK
        for (key, t) in tensors.enumerated() {
            p.string(t.name)
            p.global("torch._utils", "_rebuild_tensor_v2")
            p.op(0x28) // MARK: the arguments
            p.op(0x28) // MARK: the persistent id
            p.string("storage"); p.global("torch", storageClasses[t.dtype]!); p.string(String(key)); p.string("cpu")
            p.int(t.shape.reduce(1, *))
            p.op(0x74); p.op(0x51) // TUPLE, BINPERSID
            p.int(0) // storage offset
            p.intTuple(t.shape)
            var strides = [Int](repeating: 1, count: t.shape.count)
            for i in stride(from: t.shape.count - 2, through: 0, by: -1) { strides[i] = strides[i + 1] * t.shape[i + 1] }
            p.intTuple(strides)
            p.op(0x89) // NEWFALSE: requires_grad
            p.global("collections", "OrderedDict"); p.op(0x29); p.op(0x52) // backward hooks
            p.op(0x74); p.op(0x52) // TUPLE, REDUCE
        }
        p.op(0x75) // SETITEMS
        p.op(0x2E) // STOP
        return p.out
    }
}

struct PickleWriter {
    var out: [UInt8] = []

    mutating func op(_ code: UInt8) { out.append(code) }

    mutating func global(_ module: String, _ name: String) {
        op(0x63) // GLOBAL
        out += Array("\(module)\n\(name)\n".utf8)
    }

    mutating func string(_ s: String) {
        let bytes = Array(s.utf8)
        op(0x58) // BINUNICODE
        out += littleEndianBytes(UInt32(bytes.count))
        out += bytes
    }

    mutating func int(_ v: Int) {
        if v >= 0 && v < 1 << 8 {
            op(0x4B); out.append(UInt8(v)) // BININT1
        } else if v >= 0 && v < 1 << 16 {
            op(0x4D); out += littleEndianBytes(UInt16(v)) // BININT2
        } else if v >= Int(Int32.min) && v <= Int(Int32.max) {
            op(0x4A); out += littleEndianBytes(UInt32(bitPattern: Int32(v))) // BININT
        } else {
            // LONG1: little-endian two's complement, 8 bytes is always enough for an Int.
            op(0x8A); out.append(8); out += littleEndianBytes(UInt64(bitPattern: Int64(v)))
        }
    }

    mutating func intTuple(_ values: [Int]) {
        switch values.count {
        case 0: op(0x29) // EMPTY_TUPLE
        case 1...3: values.forEach { int($0) }; op([0x85, 0x86, 0x87][values.count - 1]) // TUPLE1..3
        default: op(0x28); values.forEach { int($0) }; op(0x74) // MARK ... TUPLE
        }
    }
}

/// A zip archive written front to back with stored entries whose data starts on 64-byte
/// boundaries (padding goes in an "FB" extra field, as torch's writer does). Each entry's CRC32
/// is computed while its bytes are written and patched into its local header afterwards.
final class ZipWriter {
    private let file: OutputFile
    private var offset = 0
    private var central: [UInt8] = []
    private var count = 0

    init(path: String) throws(VFFNError) {
        file = try OutputFile(path: path)
    }

    func add(_ name: String, _ parts: [TensorBytes]) throws(VFFNError) {
        let nameBytes = Array(name.utf8)
        let size = parts.reduce(0) { $0 + $1.count }
        let headerOffset = offset
        // ZIP64 extra (id 1): uncompressed and compressed size.
        var extra: [UInt8] = littleEndianBytes(UInt16(1)) + littleEndianBytes(UInt16(16)) + littleEndianBytes(UInt64(size)) + littleEndianBytes(UInt64(size))
        let unpadded = headerOffset + 30 + nameBytes.count + extra.count + 4
        let pad = (64 - unpadded % 64) % 64
        extra += [0x46, 0x42] + littleEndianBytes(UInt16(pad)) + [UInt8](repeating: 0x5A, count: pad) // "FB", then 'Z's
        var local: [UInt8] = littleEndianBytes(UInt32(0x0403_4B50)) + littleEndianBytes(UInt16(45)) + littleEndianBytes(UInt16(0)) + littleEndianBytes(UInt16(0))
        local += littleEndianBytes(UInt16(0)) + littleEndianBytes(UInt16(0x21)) // time 00:00, date 1980-01-01
        local += littleEndianBytes(UInt32(0)) + littleEndianBytes(UInt32.max) + littleEndianBytes(UInt32.max) // CRC (patched below), sizes in the extra
        local += littleEndianBytes(UInt16(nameBytes.count)) + littleEndianBytes(UInt16(extra.count)) + nameBytes + extra
        try file.write(local)
        offset += local.count
        var crc: UInt32 = 0
        for part in parts {
            if case let .region(region) = part {
                // Not through the mapping: the process's memory stays flat on any checkpoint size.
                try file.copyThroughBuffer(region) { crc = CRC32.update(crc, $0) }
                continue
            }
            try part.forEachCheckedPiece(what: name) { (b) throws(VFFNError) in
                crc = CRC32.update(crc, b)
                try file.write(b)
            }
        }
        offset += size
        try file.seek(to: headerOffset + 14)
        try file.write(littleEndianBytes(crc))
        try file.seek(to: offset)

        var entry: [UInt8] = littleEndianBytes(UInt32(0x0201_4B50)) + littleEndianBytes(UInt16(45)) + littleEndianBytes(UInt16(45)) + littleEndianBytes(UInt16(0)) + littleEndianBytes(UInt16(0))
        entry += littleEndianBytes(UInt16(0)) + littleEndianBytes(UInt16(0x21)) + littleEndianBytes(crc) + littleEndianBytes(UInt32.max) + littleEndianBytes(UInt32.max)
        entry += littleEndianBytes(UInt16(nameBytes.count)) + littleEndianBytes(UInt16(28)) + littleEndianBytes(UInt16(0)) + littleEndianBytes(UInt16(0)) + littleEndianBytes(UInt16(0)) + littleEndianBytes(UInt32(0)) + littleEndianBytes(UInt32.max)
        entry += nameBytes + littleEndianBytes(UInt16(1)) + littleEndianBytes(UInt16(24)) + littleEndianBytes(UInt64(size)) + littleEndianBytes(UInt64(size)) + littleEndianBytes(UInt64(headerOffset))
        central += entry
        count += 1
    }

    func finish() throws(VFFNError) {
        let directoryOffset = offset
        try file.write(central)
        offset += central.count
        let record64 = offset
        var end: [UInt8] = littleEndianBytes(UInt32(0x0606_4B50)) + littleEndianBytes(UInt64(44)) + littleEndianBytes(UInt16(45)) + littleEndianBytes(UInt16(45)) + littleEndianBytes(UInt32(0)) + littleEndianBytes(UInt32(0))
        end += littleEndianBytes(UInt64(count)) + littleEndianBytes(UInt64(count)) + littleEndianBytes(UInt64(central.count)) + littleEndianBytes(UInt64(directoryOffset))
        end += littleEndianBytes(UInt32(0x0706_4B50)) + littleEndianBytes(UInt32(0)) + littleEndianBytes(UInt64(record64)) + littleEndianBytes(UInt32(1))
        // The classic record keeps each value that fits, and 0xFF.. (see the ZIP64 record) otherwise.
        func fit16(_ v: Int) -> UInt16 { v < 0xFFFF ? UInt16(v) : .max }
        func fit32(_ v: Int) -> UInt32 { v < 0xFFFF_FFFF ? UInt32(v) : .max }
        end += littleEndianBytes(UInt32(0x0605_4B50)) + littleEndianBytes(UInt16(0)) + littleEndianBytes(UInt16(0)) + littleEndianBytes(fit16(count)) + littleEndianBytes(fit16(count))
        end += littleEndianBytes(fit32(central.count)) + littleEndianBytes(fit32(directoryOffset)) + littleEndianBytes(UInt16(0))
        try file.write(end)
        try file.finish()
    }
}

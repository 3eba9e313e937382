import Foundation

/// A llama.cpp GGUF file (versions 2 and 3, little-endian), validated as strictly as the
/// reference C reader and then some (shared/notes/formats.md section 2), and presented as the
/// Hugging Face Llama it was converted from, by `GGUFToHuggingFace`: names mapped back,
/// dimensions reversed (ggml lists the innermost first), the Q/K row permutation of llama.cpp's
/// converter undone, Q8_0 dequantized to F32, and a config.json derived from the metadata.
public final class GGUFFile: SingleFileCheckpoint, @unchecked Sendable {
    /// A metadata value. Large arrays (the tokenizer's vocabulary) are validated and skipped.
    public enum Value: Sendable, Equatable {
        case int(Int64)
        case uint(UInt64)
        case float(Double)
        case bool(Bool)
        case string(String)
        case array([Value])
        /// An array too long to keep at open (a vocabulary): `GGUFFile.array(_:)` reads it.
        case skippedArray(count: Int, elementType: Int32, offset: Int)

        public var asInt: Int? {
            switch self {
            case let .int(v): return Int(exactly: v)
            case let .uint(v): return Int(exactly: v)
            default: return nil
            }
        }

        public var asDouble: Double? {
            switch self {
            case let .float(v): return v
            case let .int(v): return Double(v)
            case let .uint(v): return Double(v)
            default: return nil
            }
        }
    }

    /// ggml tensor types by their ids. Ids missing here were removed from ggml and are refused
    /// as invalid.
    public enum GGMLType: Int32, Sendable {
        case F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9, Q2_K = 10, Q3_K = 11
        case Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15, IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19
        case IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28
        case IQ1_M = 29, BF16 = 30, TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39

        public var name: String { "\(self)" }

        /// (elements per block, bytes per block).
        var layout: (block: Int, bytes: Int) {
            switch self {
            case .F32, .I32: return (1, 4)
            case .F16, .BF16, .I16: return (1, 2)
            case .I8: return (1, 1)
            case .I64, .F64: return (1, 8)
            case .Q4_0, .IQ4_NL: return (32, 18)
            case .Q4_1: return (32, 20)
            case .Q5_0: return (32, 22)
            case .Q5_1: return (32, 24)
            case .Q8_0: return (32, 34)
            case .Q8_1: return (32, 40)
            case .MXFP4: return (32, 17)
            case .Q2_K: return (256, 84)
            case .Q3_K, .IQ3_S: return (256, 110)
            case .Q4_K: return (256, 144)
            case .Q5_K: return (256, 176)
            case .Q6_K: return (256, 210)
            case .Q8_K: return (256, 292)
            case .IQ2_XXS, .TQ2_0: return (256, 66)
            case .IQ2_XS: return (256, 74)
            case .IQ3_XXS: return (256, 98)
            case .IQ1_S: return (256, 50)
            case .IQ2_S: return (256, 82)
            case .IQ4_XS: return (256, 136)
            case .IQ1_M: return (256, 56)
            case .TQ1_0: return (256, 54)
            }
        }

        /// The types presented as Hugging Face tensors: floats as they are, Q8_0 as F32.
        var presented: DType? {
            switch self {
            case .F32, .Q8_0: return .F32
            case .F16: return .F16
            case .BF16: return .BF16
            default: return nil
            }
        }
    }
    static let maxNameLength = 64          // GGML_MAX_NAME, terminator included
    static let maxStringLength = 1 << 30   // GGUF_MAX_STRING_LENGTH
    static let maxAlignment: UInt32 = 1 << 20
    /// Arrays longer than this are checked and skipped rather than kept (a vocabulary).
    static let keptArrayLength = 4096

    /// A tensor as the GGUF stores it, before it is presented under its Hugging Face name.
    package struct StoredTensor: Sendable {
        package let ggufName: String
        /// ggml order, innermost first.
        package let dims: [Int]
        package let type: GGMLType
        /// Absolute byte range in the file.
        package let range: Range<Int>
    }

    public let path: String
    public var format: TensorFileFormat { .gguf }
    public var metadata: [(String, String)]? { nil }
    public let version: UInt32
    public let values: [String: Value]
    public let alignment: Int
    /// `general.architecture`.
    public let architecture: String
    package let stored: [StoredTensor]
    public let tensors: [TensorInfo]
    private let index: [String: Int]
    /// Per Hugging Face tensor, the stored tensor it comes from.
    private let hfIndex: [Int]
    private let file: MappedFile
    private let config: Result<JSON, VFFNError>

    public init(path: String) throws(VFFNError) {
        self.path = path
        file = try MappedFile(path: path)
        var r = ByteReader(file.bytes, path: path, context: "GGUF header")
        guard file.bytes.count >= 4, Array(try r.take(4, "magic")) == Array("GGUF".utf8) else {
            throw .badInput(path, "not a GGUF file (bad magic)")
        }
        let v = try r.u32("version")
        switch v {
        case 2, 3: break
        case 1: throw .badInput(path, "GGUF version 1 is no longer supported (re-convert with a current llama.cpp)")
        case _ where v & 0xFFFF == 0: throw .badInput(path, "GGUF version \(v) looks byte-swapped: big-endian GGUF files are not supported")
        default: throw .badInput(path, "GGUF version \(v) is not supported (2 and 3 are)")
        }
        version = v
        let nTensors = try r.i64("tensor count"), nKV = try r.i64("metadata count")
        // Every metadata pair needs at least 13 bytes and every tensor record 24: counts the
        // file cannot hold are refused before anything is allocated for them.
        guard nKV >= 0, nKV <= Int64(r.remaining / 13) else { throw .badInput(path, "GGUF metadata count \(nKV) is impossible for a \(file.bytes.count)-byte file") }
        guard nTensors >= 0, nTensors <= Int64(r.remaining / 24) else { throw .badInput(path, "GGUF tensor count \(nTensors) is impossible for a \(file.bytes.count)-byte file") }

        var values: [String: Value] = [:]
        for _ in 0..<nKV {
            let key = try Self.string(&r, what: "metadata key")
            guard !key.isEmpty else { throw .badInput(path, "GGUF metadata key at byte \(r.offset) is empty") }
            guard values[key] == nil else { throw .badInput(path, "GGUF metadata key \"\(key)\" appears twice") }
            let type = try r.i32("type of \(key)")
            values[key] = try Self.value(&r, type: type, key: key, allowArray: true)
        }
        var alignment = 32
        if let a = values["general.alignment"] {
            guard case let .uint(x) = a, x > 0, x <= UInt64(Self.maxAlignment), x & (x - 1) == 0 else {
                throw .badInput(path, "GGUF general.alignment must be a u32 power of two up to \(Self.maxAlignment)")
            }
            alignment = Int(x)
        }
        self.values = values
        self.alignment = alignment

        var records: [(String, [Int], GGMLType, UInt64, Int)] = []
        var seen = Set<String>()
        for _ in 0..<nTensors {
            let name = try Self.string(&r, what: "tensor name")
            guard name.utf8.count < Self.maxNameLength else { throw .badInput(path, "GGUF tensor name \"\(name.prefix(80))\" is \(name.utf8.count) bytes (limit \(Self.maxNameLength - 1))") }
            guard seen.insert(name).inserted else { throw .badInput(path, "GGUF tensor \"\(name)\" appears twice") }
            let nDims = try r.u32("dimension count of \(name)")
            guard nDims >= 1, nDims <= 4 else { throw .badInput(path, "GGUF tensor \"\(name)\" has \(nDims) dimensions (1 to 4 allowed)") }
            var dims: [Int] = []
            for _ in 0..<nDims {
                let d = try r.i64("dimension of \(name)")
                guard d >= 0 else { throw .badInput(path, "GGUF tensor \"\(name)\" has a negative dimension \(d)") }
                dims.append(Int(d))
            }
            let typeID = try r.i32("type of \(name)")
            guard let type = GGMLType(rawValue: typeID) else { throw .badInput(path, "GGUF tensor \"\(name)\" has invalid type id \(typeID)") }
            let t = type.layout
            guard dims[0] % t.block == 0 else {
                throw .badInput(path, "GGUF tensor \"\(name)\": first dimension \(dims[0]) is not a multiple of the \(type.name) block size \(t.block)")
            }
            let elements = try checkedProduct(dims.map(UInt64.init), path: path, what: "GGUF tensor \"\(name)\" dimensions \(dims)")
            let bytes = try checkedProduct([elements / UInt64(t.block), UInt64(t.bytes)], path: path, what: "GGUF tensor \"\(name)\" size")
            guard elements <= UInt64(Int.max) / 8 else { throw .badInput(path, "GGUF tensor \"\(name)\" has \(elements) elements") }
            let offset = try r.u64("offset of \(name)")
            guard offset % UInt64(alignment) == 0 else {
                throw .badInput(path, "GGUF tensor \"\(name)\" offset \(offset) is not a multiple of the alignment \(alignment)")
            }
            records.append((name, dims, type, offset, Int(bytes)))
        }
        let dataStart = (r.offset + alignment - 1) / alignment * alignment
        var stored: [StoredTensor] = []
        for (name, dims, type, offset, bytes) in records {
            let (start, o1) = UInt64(dataStart).addingReportingOverflow(offset)
            let (end, o2) = start.addingReportingOverflow(UInt64(bytes))
            guard !o1, !o2, end <= UInt64(file.bytes.count) else {
                throw .badInput(path, "GGUF tensor \"\(name)\" data (\(bytes) bytes at offset \(offset)) is not within the \(file.bytes.count)-byte file (truncated?)")
            }
            stored.append(StoredTensor(ggufName: name, dims: dims, type: type, range: Int(start)..<Int(end)))
        }
        let byStart = stored.sorted { $0.range.lowerBound < $1.range.lowerBound }
        for (a, b) in zip(byStart, byStart.dropFirst()) where b.range.lowerBound < a.range.upperBound {
            throw .badInput(path, "GGUF tensors \"\(a.ggufName)\" and \"\(b.ggufName)\" overlap")
        }
        self.stored = stored

        // The Hugging Face view. Types are checked here so a Q4_K file fails when opened, by name.
        var infos: [TensorInfo] = []
        var index: [String: Int] = [:]
        var hfIndex: [Int] = []   // per Hugging Face tensor, its stored tensor
        let arch = values["general.architecture"].flatMap { if case let .string(s) = $0 { s } else { nil } }
        for (storedIndex, t) in stored.enumerated() {
            guard let dtype = t.type.presented else {
                throw .badInput(path, "GGUF tensor \"\(t.ggufName)\" is \(t.type.name); only F32, F16, BF16 and Q8_0 are supported")
            }
            guard let arch, GGUFToHuggingFace.architectures[arch] != nil else { break }
            // llama3 rope scaling as per-frequency divisors: it becomes rope_scaling in config.json.
            if t.ggufName == "rope_freqs.weight" { continue }
            let name = try GGUFToHuggingFace.tensorName(t.ggufName, path: path)
            index[name] = infos.count
            infos.append(TensorInfo(name: name, dtype: dtype, shape: t.dims.reversed(), dataOffsets: t.range))
            hfIndex.append(storedIndex)
        }
        tensors = infos
        self.index = index
        self.hfIndex = hfIndex
        let mapped = file.bytes
        let ropeFactors: [Float]? = stored.first { $0.ggufName == "rope_freqs.weight" }.map { t in
            t.type == .F32 ? FloatCodec.decode(UnsafeRawBufferPointer(rebasing: mapped[t.range]), as: .F32) : []
        }
        architecture = arch ?? ""
        config = arch.flatMap { GGUFToHuggingFace.architectures[$0] } != nil
            ? Result { () throws(VFFNError) in try GGUFToHuggingFace.config(values, architecture: arch!, tensors: infos, ropeFactors: ropeFactors, path: path) }
            : .failure(.badInput(path, "GGUF architecture \(arch.map { "\"\($0)\"" } ?? "(none)") is not supported; only \(GGUFToHuggingFace.architectures.keys.sorted().joined(separator: ", ")) are mapped to Hugging Face names"))
    }

    static func string(_ r: inout ByteReader, what: String) throws(VFFNError) -> String {
        let n = try r.u64("length of \(what)")
        guard n <= UInt64(maxStringLength), n <= UInt64(r.remaining) else {
            throw .badInput(r.path, "GGUF \(what) length \(n) at byte \(r.offset - 8) exceeds the \(min(maxStringLength, r.remaining)) bytes allowed there")
        }
        let b = try r.take(Int(n), what)
        guard let s = String(validating: b, as: UTF8.self) else { throw .badInput(r.path, "GGUF \(what) at byte \(r.offset - Int(n)) is not UTF-8") }
        return s
    }

    static func value(_ r: inout ByteReader, type: Int32, key: String, allowArray: Bool) throws(VFFNError) -> Value {
        switch type {
        case 0: return .uint(UInt64(try r.u8(key)))
        case 1: return .int(Int64(Int8(bitPattern: try r.u8(key))))
        case 2: return .uint(UInt64(try r.u16(key)))
        case 3: return .int(Int64(Int16(bitPattern: try r.u16(key))))
        case 4: return .uint(UInt64(try r.u32(key)))
        case 5: return .int(Int64(try r.i32(key)))
        case 6: return .float(Double(Float(bitPattern: try r.u32(key))))
        case 7:
            let b = try r.u8(key)
            guard b <= 1 else { throw .badInput(r.path, "GGUF bool \"\(key)\" holds \(b), not 0 or 1") }
            return .bool(b == 1)
        case 8: return .string(try string(&r, what: "value of \(key)"))
        case 9:
            guard allowArray else { throw .badInput(r.path, "GGUF key \"\(key)\" has an array of arrays, which is not supported") }
            let elementType = try r.i32("array type of \(key)")
            let count = try r.u64("array length of \(key)")
            let minimum: UInt64 = [0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 8: 8, 10: 8, 11: 8, 12: 8][elementType] ?? 1
            guard count <= UInt64(r.remaining) / minimum else {
                throw .badInput(r.path, "GGUF array \"\(key)\" of \(count) elements exceeds the remaining \(r.remaining) bytes")
            }
            var items: [Value] = []
            let start = r.offset
            for _ in 0..<count {
                let v = try value(&r, type: elementType, key: key, allowArray: false)
                if count <= UInt64(keptArrayLength) { items.append(v) }
            }
            return count <= UInt64(keptArrayLength) ? .array(items) : .skippedArray(count: Int(count), elementType: elementType, offset: start)
        case 10: return .uint(try r.u64(key))
        case 11: return .int(try r.i64(key))
        case 12: return .float(Double(bitPattern: try r.u64(key)))
        default: throw .badInput(r.path, "GGUF key \"\(key)\" has invalid type \(type)")
        }
    }

    public func info(_ name: String) -> TensorInfo? { index[name].map { tensors[$0] } }

    /// The elements of an array value, reading a long one (validated at open) from the file.
    public func array(_ key: String) throws(VFFNError) -> [Value]? {
        switch values[key] {
        case let .array(items): return items
        case let .skippedArray(count, elementType, offset):
            var r = ByteReader(file.bytes, path: path, offset: offset, context: "GGUF metadata")
            var items: [Value] = []
            items.reserveCapacity(count)
            for _ in 0..<count { items.append(try Self.value(&r, type: elementType, key: key, allowArray: false)) }
            return items
        default: return nil
        }
    }

    /// Q and K as llama.cpp stores them: within each head, row 2i+j holds what Hugging Face keeps
    /// at row j*(d/2)+i. Returns the head count to undo it with, or nil for other tensors.
    private func permutedHeads(_ info: TensorInfo) throws(VFFNError) -> Int? {
        let name = info.name
        let isQ = [".weight", ".bias"].contains { name.hasSuffix(DecoderTensor.q.rawValue + $0) }
        let isK = [".weight", ".bias"].contains { name.hasSuffix(DecoderTensor.k.rawValue + $0) }
        guard architecture == "llama", isQ || isK else { return nil }
        let c = try config.get()
        let heads = isQ ? c["num_attention_heads"]!.intValue! : c["num_key_value_heads"]!.intValue!
        guard info.shape[0] % (2 * heads) == 0 else {
            throw .badInput(path, "tensor \"\(name)\": \(info.shape[0]) rows cannot be split into \(heads) heads of rotary pairs")
        }
        return heads
    }

    private func storedTensor(_ info: TensorInfo) throws(VFFNError) -> StoredTensor {
        guard let i = index[info.name] else { throw .badInput(path, "has no tensor \"\(info.name)\"") }
        return stored[hfIndex[i]]
    }

    public func bytes(_ info: TensorInfo) throws(VFFNError) -> TensorData {
        let t = try storedTensor(info)
        let raw = UnsafeRawBufferPointer(rebasing: file.bytes[t.range])
        if t.type != .Q8_0, try permutedHeads(info) == nil { return TensorData(mapped: raw, owner: file) }
        return try assembled(info)
    }

    /// Q8_0 dequantized a run of blocks at a time; permuted Q/K a head at a time (its rows back
    /// in Hugging Face's order); everything else as one mapped piece.
    public func read(_ info: TensorInfo, chunkBytes: Int, _ body: (UnsafeRawBufferPointer) throws(VFFNError) -> Void) throws(VFFNError) {
        let t = try storedTensor(info)
        let raw = UnsafeRawBufferPointer(rebasing: file.bytes[t.range])
        let heads = try permutedHeads(info)
        guard t.type == .Q8_0 || heads != nil else { return try body(raw) }
        guard info.elementCount > 0 else { return }
        if let heads, info.shape.count == 1 {
            // A permuted bias: small, decoded whole, then its elements moved as rows.
            let values = t.type == .Q8_0 ? [Float](unsafeUninitializedCapacity: raw.count / 34 * 32) { b, n in
                Self.dequantizeQ8_0(raw, into: b)
                n = raw.count / 34 * 32
            } : FloatCodec.decode(raw, as: info.dtype)
            let perHead = values.count / heads
            let moved = (0..<values.count).map { r in values[r / perHead * perHead + GGUFToHuggingFace.storedRow(r % perHead, rowsPerHead: perHead)] }
            return try FloatCodec.encode(moved, as: info.dtype).withUnsafeBytes { b in Result { () throws(VFFNError) in try body(b) } }.get()
        }
        // Rows of a matrix (a vector is one row).
        let rows = info.shape.count >= 2 ? info.shape[0] : 1, rowValues = info.elementCount / rows
        guard t.type != .Q8_0 || rowValues % 32 == 0 else {
            throw .badInput(path, "GGUF tensor \"\(t.ggufName)\": Q8_0 rows of \(rowValues) values are not whole blocks")
        }
        let storedRowBytes = t.type == .Q8_0 ? rowValues / 32 * 34 : rowValues * info.dtype.bitSize / 8
        let rowBytes = rowValues * info.dtype.bitSize / 8
        // Whole rows per piece (a head's worth when permuted: its rows move among themselves).
        let group = heads.map { rows / $0 } ?? max(1, chunkBytes / max(rowBytes, 1))
        let piece = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, min(group, rows) * rowBytes), alignment: 64)
        defer { piece.deallocate() }
        for first in stride(from: 0, to: rows, by: group) {
            let count = min(group, rows - first)
            for r in 0..<count {
                // Presented row first + r comes from stored row first + storedRow(r).
                let from = first + (heads == nil ? r : GGUFToHuggingFace.storedRow(r, rowsPerHead: count))
                let src = UnsafeRawBufferPointer(rebasing: raw[from * storedRowBytes..<(from + 1) * storedRowBytes])
                let dst = UnsafeMutableRawBufferPointer(rebasing: piece[r * rowBytes..<(r + 1) * rowBytes])
                if t.type == .Q8_0 {
                    Self.dequantizeQ8_0(src, into: dst.bindMemory(to: Float.self))
                } else {
                    dst.copyMemory(from: src)
                }
            }
            try body(UnsafeRawBufferPointer(rebasing: piece[0..<count * rowBytes]))
        }
    }

    /// Q8_0 matrices and permuted Q/K rows as stored, for the forward pass to decode in place.
    public func storedMatrix(_ info: TensorInfo) throws(VFFNError) -> StoredMatrix? {
        let t = try storedTensor(info)
        let heads = try permutedHeads(info)
        guard info.shape.count == 2, t.type == .Q8_0 || heads != nil else { return nil }
        let raw = UnsafeRawBufferPointer(rebasing: file.bytes[t.range])
        let rows = info.shape[0]
        let order = heads.map { h in (0..<rows).map { r in r / (rows / h) * (rows / h) + GGUFToHuggingFace.storedRow(r % (rows / h), rowsPerHead: rows / h) } }
        return StoredMatrix(data: TensorData(mapped: raw, owner: file), encoding: t.type == .Q8_0 ? .q8_0 : .float(info.dtype), rowOrder: order)
    }

    public func valueChange(_ info: TensorInfo) -> String? {
        guard let t = try? storedTensor(info) else { return nil }
        if t.type == .Q8_0 { return "Q8_0 dequantized to F32" }
        if (try? permutedHeads(info)) != .some(nil) { return "rows un-permuted from llama.cpp's rotary layout" }
        return nil
    }

    public func storedRegion(_ info: TensorInfo) -> FileRegion? {
        guard let t = try? storedTensor(info), t.type != .Q8_0, (try? permutedHeads(info)) == .some(nil) else { return nil }
        return FileRegion(path: path, offset: t.range.lowerBound, count: t.range.count)
    }

    /// `y[i*32 + j] = qs[j] * d` for 34-byte blocks `{f16 d; i8 qs[32]}`.
    static func dequantizeQ8_0(_ raw: UnsafeRawBufferPointer, into out: UnsafeMutableBufferPointer<Float>) {
        for b in 0..<raw.count / 34 {
            let base = b * 34
            let d = Float(Float16(bitPattern: UInt16(raw[base]) | UInt16(raw[base + 1]) << 8))
            for j in 0..<32 { out[b * 32 + j] = Float(Int8(bitPattern: raw[base + 2 + j])) * d }
        }
    }

    // MARK: SingleFileCheckpoint

    public func checkpointConfig() throws(VFFNError) -> JSON { try config.get() }
    public var embeddedFileNames: [String] { [] }
    public func extractEmbeddedFile(_ name: String, to destination: String) throws(VFFNError) {
        throw .badInput(path, "has no embedded file \"\(name)\"")
    }

    public var readerNotes: [String] {
        var notes: [String] = []
        let q8 = stored.filter { $0.type == .Q8_0 }.count
        if q8 > 0 { notes.append("\(q8) Q8_0 tensor(s) dequantized to F32 (written as F32 by convert)") }
        if architecture == "llama", tensors.contains(where: { $0.name.hasSuffix(DecoderTensor.q.rawValue + ".weight") }) {
            notes.append("q_proj/k_proj rows un-permuted from llama.cpp's rotary layout")
        }
        if stored.contains(where: { $0.ggufName == "rope_freqs.weight" }) { notes.append("rope_freqs.weight expressed as llama3 rope_scaling in config.json") }
        notes.append("config.json derived from the GGUF \(architecture).* metadata; the GGUF tokenizer is not converted")
        return notes
    }
}

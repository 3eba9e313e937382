#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One tensor of a tensor file: its name, dtype and shape as the model sees them, and where
/// its stored bytes are.
public struct TensorInfo: Equatable, Sendable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    /// Where the stored bytes are, relative to the file's data section (safetensors, GGUF) or
    /// to the file itself (.vffn, zip entries). For tensors decoded on read (Q8_0, deflate)
    /// this is the stored form, whose length can differ from `byteCount`.
    public let dataOffsets: Range<Int>

    public init(name: String, dtype: DType, shape: [Int], dataOffsets: Range<Int>) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.dataOffsets = dataOffsets
    }

    /// Bytes of the tensor as `dtype` and `shape` describe it.
    public var byteCount: Int { elementCount * dtype.bitSize / 8 }
    public var elementCount: Int { shape.reduce(1, *) }
}

/// A memory-mapped safetensors file whose header has been validated in full before any tensor
/// byte is touched (rules and their order follow `safetensors/src/tensor.rs`, see
/// shared/notes/formats.md section 1.3).
public final class SafeTensorsFile: TensorFile, @unchecked Sendable {
    /// Same cap as the reference implementation: a larger header is an attack or a mistake.
    public static let maxHeaderSize: UInt64 = 100_000_000

    public let path: String
    /// Tensors in the order of their data in the file.
    public let tensors: [TensorInfo]
    /// `__metadata__`, in header order; nil when absent or null.
    public let metadata: [(String, String)]?
    public let headerSize: Int
    private let index: [String: Int]
    private let base: UnsafeMutableRawPointer?
    private let mappedLength: Int

    public init(path: String) throws(VFFNError) {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io(path, "cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .io(path, "cannot stat: \(String(cString: strerror(errno)))") }
        if (st.st_mode & S_IFMT) == S_IFDIR { throw .badInput(path, "is a directory, not a safetensors file") }
        let fileSize = Int(st.st_size)

        if fileSize == 0 { throw .badInput(path, "empty file, not safetensors") }
        guard fileSize >= 8 else {
            throw .badInput(path, "truncated: \(fileSize) bytes, too short for the 8-byte header length")
        }
        var prefix = [UInt8](repeating: 0, count: 8)
        try Self.readExactly(fd, into: &prefix, at: 0, path: path)
        let n = prefix.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        if n > Self.maxHeaderSize {
            if fileSize >= 24 {
                var head = [UInt8](repeating: 0, count: 24)
                try Self.readExactly(fd, into: &head, at: 0, path: path)
                if String(decoding: head, as: UTF8.self).hasPrefix("version https://git-lfs") {
                    throw .badInput(path, "is a Git LFS pointer, not the weights (run `git lfs pull`)")
                }
            }
            throw .badInput(path, "header length \(n) exceeds the \(Self.maxHeaderSize)-byte limit; not a safetensors file?")
        }
        guard n <= UInt64(fileSize - 8) else {
            throw .badInput(path, "header length \(n) runs past the end of the \(fileSize)-byte file (truncated?)")
        }
        guard n > 0 else { throw .badInput(path, "empty header (header length is 0)") }
        let headerSize = Int(n)
        var headerBytes = [UInt8](repeating: 0, count: headerSize)
        try Self.readExactly(fd, into: &headerBytes, at: 8, path: path)
        guard String(validating: headerBytes, as: UTF8.self) != nil else {
            throw .badInput(path, "header is not valid UTF-8")
        }
        let json: JSON
        do { json = try JSON.parse(headerBytes) } catch {
            throw .badInput(path, "header is not valid JSON: \(error.reason) at header byte \(error.offset)")
        }
        let (tensors, metadata) = try Self.validate(header: json, dataSize: fileSize - 8 - headerSize, path: path)

        self.tensors = tensors
        self.metadata = metadata
        self.headerSize = headerSize
        self.index = Dictionary(uniqueKeysWithValues: tensors.enumerated().map { ($1.name, $0) })
        self.mappedLength = fileSize
        // The file size was checked against the header a moment ago; map it read-only so tensor
        // bytes are paged in on demand rather than copied.
        let p = mmap(nil, fileSize, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p, p != MAP_FAILED else { throw .io(path, "cannot map: \(String(cString: strerror(errno)))") }
        self.base = p
    }

    deinit {
        if let base { munmap(base, mappedLength) }
    }

    public var format: TensorFileFormat { .safetensors }

    /// The file's first `8 + headerSize` bytes exactly as stored (length prefix, header JSON,
    /// padding): with the tensor bytes in data order, they rebuild the file byte for byte.
    package var rawHeader: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base!, count: 8 + headerSize)
    }

    public func info(_ name: String) -> TensorInfo? {
        index[name].map { tensors[$0] }
    }

    public func storedRegion(_ info: TensorInfo) -> FileRegion? {
        FileRegion(path: path, offset: 8 + headerSize + info.dataOffsets.lowerBound, count: info.byteCount)
    }

    /// The raw little-endian bytes of a tensor: always mapped, never decoded, so this cannot fail.
    public func bytes(_ info: TensorInfo) -> TensorData {
        let start = 8 + headerSize + info.dataOffsets.lowerBound
        return TensorData(mapped: UnsafeRawBufferPointer(start: base!.advanced(by: start), count: info.byteCount), owner: self)
    }

    private static func readExactly(_ fd: Int32, into buffer: inout [UInt8], at offset: Int, path: String) throws(VFFNError) {
        let want = buffer.count
        var done = 0
        while done < want {
            let r = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, want - done, off_t(offset + done)) }
            if r < 0 {
                if errno == EINTR { continue }
                throw .io(path, "read failed: \(String(cString: strerror(errno)))")
            }
            if r == 0 { throw .badInput(path, "truncated while reading the header") }
            done += r
        }
    }

    static func validate(header: JSON, dataSize: Int, path: String) throws(VFFNError) -> ([TensorInfo], [(String, String)]?) {
        guard let members = header.objectMembers else {
            throw .badInput(path, "header is not a JSON object")
        }
        var metadata: [(String, String)]?
        var tensors: [TensorInfo] = []
        for (name, value) in members {
            if name == "__metadata__" {
                if value.isNull { continue }
                guard let m = value.objectMembers else { throw .badInput(path, "__metadata__ is not an object of strings") }
                var pairs: [(String, String)] = []
                for (k, v) in m {
                    guard let s = v.stringValue else { throw .badInput(path, "__metadata__ value of \"\(k)\" is not a string") }
                    pairs.append((k, s))
                }
                metadata = pairs
                continue
            }
            tensors.append(try tensorInfo(name: name, value, path: path))
        }
        // Contiguity from 0 in (start, end) order rejects gaps, overlaps and aliasing at once.
        let sorted = tensors.sorted { ($0.dataOffsets.lowerBound, $0.dataOffsets.upperBound) < ($1.dataOffsets.lowerBound, $1.dataOffsets.upperBound) }
        var expectedStart = 0
        for t in sorted {
            if t.dataOffsets.lowerBound != expectedStart {
                let what = t.dataOffsets.lowerBound < expectedStart ? "overlaps the previous tensor" : "leaves a gap after the previous tensor"
                throw .badInput(path, "tensor \"\(t.name)\" data_offsets [\(t.dataOffsets.lowerBound), \(t.dataOffsets.upperBound)] \(what) (expected start \(expectedStart))")
            }
            expectedStart = t.dataOffsets.upperBound
        }
        if expectedStart != dataSize {
            let what = expectedStart > dataSize ? "but the file holds only \(dataSize) (truncated?)" : "but the file holds \(dataSize) (trailing bytes)"
            throw .badInput(path, "tensor data covers \(expectedStart) bytes \(what)")
        }
        return (sorted, metadata)
    }

    private static func tensorInfo(name: String, _ value: JSON, path: String) throws(VFFNError) -> TensorInfo {
        guard value.objectMembers != nil else { throw .badInput(path, "tensor \"\(name)\": entry is not an object") }
        guard let dtypeName = value["dtype"]?.stringValue else {
            throw .badInput(path, "tensor \"\(name)\": missing or non-string \"dtype\"")
        }
        guard let dtype = DType(rawValue: dtypeName) else {
            throw .badInput(path, "tensor \"\(name)\": unknown dtype \"\(dtypeName)\" (supported: \(DType.supportedList))")
        }
        guard let shapeItems = value["shape"]?.arrayValue else {
            throw .badInput(path, "tensor \"\(name)\": missing or non-array \"shape\"")
        }
        var shape: [Int] = []
        var elements: UInt64 = 1
        for item in shapeItems {
            guard let d = item.uint64Value, d <= UInt64(Int.max) else {
                throw .badInput(path, "tensor \"\(name)\": shape entry \(item.compact) is not a non-negative integer")
            }
            let (p, overflow) = elements.multipliedReportingOverflow(by: d)
            if overflow { throw .badInput(path, "tensor \"\(name)\": shape [\(shapeItems.map(\.compact).joined(separator: ", "))] overflows 64 bits") }
            elements = p
            shape.append(Int(d))
        }
        // Non-empty shapes are bounded below by the bytes they must span.
        if shape.contains(0) { try checkShapeFitsInMemory(shape, elementBytes: 1, path: path, what: "tensor \"\(name)\": shape \(shape)") }
        guard let offs = value["data_offsets"]?.arrayValue, offs.count == 2,
              let begin = offs[0].uint64Value, let end = offs[1].uint64Value,
              begin <= UInt64(Int.max), end <= UInt64(Int.max)
        else {
            throw .badInput(path, "tensor \"\(name)\": \"data_offsets\" must be two non-negative integers")
        }
        guard end >= begin else {
            throw .badInput(path, "tensor \"\(name)\": data_offsets [\(begin), \(end)] end before begin")
        }
        let (bits, overflow) = elements.multipliedReportingOverflow(by: UInt64(dtype.bitSize))
        if overflow { throw .badInput(path, "tensor \"\(name)\": shape \(shape) of \(dtype) overflows 64 bits") }
        guard bits % 8 == 0 else {
            throw .badInput(path, "tensor \"\(name)\": \(elements) elements of \(dtype) do not fill whole bytes")
        }
        guard end - begin == bits / 8 else {
            throw .badInput(path, "tensor \"\(name)\": shape \(shape) of \(dtype) needs \(bits / 8) bytes but data_offsets span \(end - begin)")
        }
        return TensorInfo(name: name, dtype: dtype, shape: shape, dataOffsets: Int(begin)..<Int(end))
    }
}

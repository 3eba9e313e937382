import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The binary formats a checkpoint's tensors can come in, told apart by their magic bytes.
public enum TensorFileFormat: String, Sendable {
    case safetensors
    /// The project's own container (docs/FORMATS.md): config, tensors and files in one file.
    case vffn
    /// llama.cpp's GGUF, versions 2 and 3.
    case gguf
    /// `torch.save` zip archives (`pytorch_model.bin`).
    case pytorch

    /// The format of the file at `path`, from its first bytes. Safetensors has no magic (it
    /// starts with a header length), so it is what remains when no other magic matches.
    public static func detect(path: String) throws(VFFNError) -> TensorFileFormat {
        let head = try MappedFile.readPrefix(path: path, count: 8)
        if head.isEmpty { throw .badInput(path, "is empty (0 bytes), not a checkpoint") }
        if head.count < 8 { throw .badInput(path, "is \(head.count) bytes long, too short to be a checkpoint") }
        if head.starts(with: [0x93] + Array("NUMPY".utf8)) { throw .badInput(path, "is a .npy array (what run writes), not a checkpoint") }
        if head.starts(with: VFFNContainer.magic) { return .vffn }
        if head.starts(with: Array("GGUF".utf8)) { return .gguf }
        if head.starts(with: [0x50, 0x4B, 0x03, 0x04]) || head.starts(with: [0x50, 0x4B, 0x05, 0x06]) { return .pytorch }
        // torch.save before 1.6: a bare pickle starting with the legacy magic number.
        if head.starts(with: [0x80, 0x02, 0x8A, 0x0A]) {
            throw .badInput(path, "is a legacy (pre-1.6, non-zip) torch.save file; re-save it with a current torch or as safetensors")
        }
        if head.starts(with: Array("ggjt".utf8)) || head.starts(with: Array("ggml".utf8)) || head.starts(with: Array("ggmf".utf8)) {
            throw .badInput(path, "is a legacy GGML file (\(String(decoding: head.prefix(4), as: UTF8.self))), which predates GGUF; convert it to GGUF first")
        }
        // The content decides; a name that promises another format only sharpens the message
        // when its magic is wrong (safetensors, which has none, is what is left otherwise).
        let shown = "\"" + String(decoding: head.prefix(4).map { (0x20..<0x7F).contains($0) ? $0 : UInt8(ascii: "?") }, as: UTF8.self) + "\""
        if path.hasSuffix(".gguf") { throw .badInput(path, "not a GGUF file: bad magic \(shown) (expected \"GGUF\")") }
        if path.hasSuffix(".vffn") { throw .badInput(path, "not a .vffn file (bad magic)") }
        // A safetensors file starts with its header length as a u64, whose top byte is 0 for
        // any header that fits in memory; text has no zero bytes. So text is named as text.
        if head.count == 8, !head.contains(0) {
            let first = head.first { ![0x20, 0x09, 0x0A, 0x0D, 0xEF, 0xBB, 0xBF].contains($0) }
            if first == UInt8(ascii: "{") || first == UInt8(ascii: "[") {
                throw .badInput(path, "is a JSON file, not a checkpoint; pass the directory that holds it")
            }
            if head.allSatisfy({ $0 >= 0x09 && $0 < 0x7F || $0 >= 0x80 }) {
                throw .badInput(path, "is a text file, not a checkpoint (safetensors, GGUF, torch zip or .vffn)")
            }
        }
        return .safetensors
    }

    /// Opens a tensor file of any supported format.
    public static func open(path: String) throws(VFFNError) -> any TensorFile {
        switch try detect(path: path) {
        case .safetensors: return try SafeTensorsFile(path: path)
        case .vffn: return try VFFNContainer(path: path)
        case .gguf: return try GGUFFile(path: path)
        case .pytorch: return try TorchCheckpointFile(path: path)
        }
    }
}

/// One file of named tensors, whatever its format, as the Hugging Face model names and shapes
/// them: readers map names, reverse dimension orders and dequantize so that everything above
/// this layer sees one kind of tensor.
public protocol TensorFile: AnyObject, Sendable {
    var path: String { get }
    var format: TensorFileFormat { get }
    /// Every tensor, in the file's data order.
    var tensors: [TensorInfo] { get }
    /// String metadata carried by the file (safetensors `__metadata__`), if any.
    var metadata: [(String, String)]? { get }
    func info(_ name: String) -> TensorInfo?
    /// The tensor's little-endian bytes as `info.dtype` and `info.shape` describe them, valid as
    /// long as the returned object lives: mapped where the file stores them that way, otherwise
    /// decoded (inflated, dequantized, un-permuted) for this call and freed with the object.
    /// Readers keep nothing decoded. Throws when a stored checksum does not match: corrupt bytes
    /// are never returned as data.
    func bytes(_ info: TensorInfo) throws(VFFNError) -> TensorData
    /// The same bytes in order, handed to `body` in pieces of at most about `chunkBytes`, with no
    /// more than one piece decoded at a time (mapped bytes come as one piece): how writers copy
    /// a tensor that must be decoded, whatever its size. A checksum that covers the decoded
    /// bytes (a zip entry's) is checked at the end, after the pieces: a writer of them fails
    /// then, and leaves nothing behind (AtomicOutput).
    func read(_ info: TensorInfo, chunkBytes: Int, _ body: (UnsafeRawBufferPointer) throws(VFFNError) -> Void) throws(VFFNError)
    /// The matrix as the file stores it, for the forward pass to read in place, when its bytes
    /// are not the presented ones but a known encoding or row order of them (a GGUF's Q8_0
    /// blocks and rotary row permutation); nil otherwise.
    func storedMatrix(_ info: TensorInfo) throws(VFFNError) -> StoredMatrix?
    /// Where the tensor's bytes lie in the file exactly as `bytes` would return them, when
    /// they do (no decoding, no checksum to check first): a writer may copy them file to file.
    func storedRegion(_ info: TensorInfo) -> FileRegion?
    /// How the presented values differ from the stored ones ("Q8_0 dequantized to F32"), or nil
    /// when they are the stored values (decompressing or gathering a view changes no value).
    func valueChange(_ info: TensorInfo) -> String?
}

extension TensorFile {
    public func storedRegion(_ info: TensorInfo) -> FileRegion? { nil }
    public func valueChange(_ info: TensorInfo) -> String? { nil }
    public func storedMatrix(_ info: TensorInfo) throws(VFFNError) -> StoredMatrix? { nil }

    public func read(_ info: TensorInfo, chunkBytes: Int, _ body: (UnsafeRawBufferPointer) throws(VFFNError) -> Void) throws(VFFNError) {
        let data = try bytes(info)
        try withExtendedLifetime(data) { () throws(VFFNError) in try body(data.raw) }
    }

    /// The tensor decoded whole from its pieces, for readers whose `read` does the decoding.
    func assembled(_ info: TensorInfo) throws(VFFNError) -> TensorData {
        try TensorData(count: info.byteCount) { (out) throws(VFFNError) in
            var at = 0
            try read(info, chunkBytes: tensorPieceBytes) { (piece) throws(VFFNError) in
                guard at + piece.count <= out.count else { throw .io(path, "tensor \"\(info.name)\" decoded to more than its \(out.count) bytes") }
                out.baseAddress!.advanced(by: at).copyMemory(from: piece.baseAddress!, byteCount: piece.count)
                at += piece.count
            }
            guard at == out.count else { throw .io(path, "tensor \"\(info.name)\" decoded to \(at) of its \(out.count) bytes") }
        }
    }
}

/// How writers size the pieces they read and decode (`TensorFile.read`).
public let tensorPieceBytes = 4 << 20

/// A tensor's bytes, alive as long as this object: a view of a mapped file (which the object
/// keeps mapped) or bytes decoded for one request, freed with it.
public final class TensorData: @unchecked Sendable, RandomAccessCollection {
    package let raw: UnsafeRawBufferPointer
    private let owner: AnyObject?
    private let allocation: UnsafeMutableRawBufferPointer?

    /// Bytes of a mapping `owner` keeps alive.
    init(mapped: UnsafeRawBufferPointer, owner: AnyObject) {
        raw = mapped
        self.owner = owner
        allocation = nil
    }

    /// `count` bytes written by `fill` into memory of their own (64-byte aligned).
    init(count: Int, _ fill: (UnsafeMutableRawBufferPointer) throws(VFFNError) -> Void) throws(VFFNError) {
        let a = UnsafeMutableRawBufferPointer.allocate(byteCount: Swift.max(count, 1), alignment: 64)
        let exact = UnsafeMutableRawBufferPointer(rebasing: a[0..<count])
        do throws(VFFNError) { try fill(exact) } catch { a.deallocate(); throw error }
        allocation = a
        raw = UnsafeRawBufferPointer(exact)
        owner = nil
    }

    convenience init(_ bytes: [UInt8]) {
        try! self.init(count: bytes.count) { (out) throws(VFFNError) in bytes.withUnsafeBytes { out.copyMemory(from: $0) } }
    }

    deinit { allocation?.deallocate() }

    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try withExtendedLifetime(self) { () throws(E) in try body(raw) }
    }

    public var startIndex: Int { 0 }
    public var endIndex: Int { raw.count }
    public subscript(i: Int) -> UInt8 { raw[i] }
}

/// A matrix as a file stores it (`TensorFile.storedMatrix`): its stored rows in `encoding`,
/// `rowOrder[r]` the stored row of presented row r (nil: the same order).
public struct StoredMatrix: Sendable {
    /// How a tensor's bytes are stored in its file.
    public enum Encoding: Sendable, Equatable {
        case float(DType)
        /// ggml's Q8_0: per 32 values of a row, an f16 scale then 32 int8 (34 bytes).
        case q8_0
    }
    public let data: TensorData
    public let encoding: Encoding
    public let rowOrder: [Int]?
}

/// A whole file mapped read-only. Readers parse their headers from it through `ByteReader`,
/// which checks every length against what is left before reading or allocating.
final class MappedFile: @unchecked Sendable {
    let path: String
    let bytes: UnsafeRawBufferPointer

    init(path: String) throws(VFFNError) {
        self.path = path
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw errno == ENOENT ? .badInput(path, "no such file") : .io(path, "cannot open: \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .io(path, "cannot stat: \(String(cString: strerror(errno)))") }
        if (st.st_mode & S_IFMT) == S_IFDIR { throw .badInput(path, "is a directory, not a tensor file") }
        let size = Int(st.st_size)
        if size == 0 {
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            return
        }
        let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p, p != MAP_FAILED else { throw .io(path, "cannot map: \(String(cString: strerror(errno)))") }
        bytes = UnsafeRawBufferPointer(start: p, count: size)
    }

    deinit {
        if let base = bytes.baseAddress { munmap(UnsafeMutableRawPointer(mutating: base), bytes.count) }
    }

    /// Up to `count` first bytes of a file (fewer if it is shorter), for format detection.
    static func readPrefix(path: String, count: Int) throws(VFFNError) -> [UInt8] {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw errno == ENOENT ? .badInput(path, "no such file") : .io(path, "cannot open: \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: count)
        let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress!, count, 0) }
        guard n >= 0 else {
            if errno == EISDIR { throw .badInput(path, "is a directory, not a tensor file") }
            throw .io(path, "read failed: \(String(cString: strerror(errno)))")
        }
        return Array(buffer.prefix(n))
    }
}

/// A bounds-checked little-endian cursor over bytes. Every read names the file and offset in
/// its error, and lengths are checked against the bytes left before anything is allocated.
struct ByteReader {
    let bytes: UnsafeRawBufferPointer
    let path: String
    var offset: Int
    /// What is being read, for error messages ("GGUF header", "zip central directory").
    let context: String

    init(_ bytes: UnsafeRawBufferPointer, path: String, offset: Int = 0, context: String) {
        self.bytes = bytes
        self.path = path
        self.offset = offset
        self.context = context
    }

    var remaining: Int { bytes.count - offset }

    func truncated(_ what: String) -> VFFNError {
        .badInput(path, "truncated \(context): \(what) at byte \(offset) runs past the end of the \(bytes.count)-byte file")
    }

    mutating func take(_ n: Int, _ what: String) throws(VFFNError) -> UnsafeRawBufferPointer {
        guard n >= 0, n <= remaining else { throw truncated(what) }
        defer { offset += n }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + n])
    }

    mutating func integer<T: FixedWidthInteger>(_: T.Type, _ what: String) throws(VFFNError) -> T {
        let b = try take(MemoryLayout<T>.size, what)
        return T(littleEndian: b.loadUnaligned(as: T.self))
    }

    mutating func u8(_ what: String) throws(VFFNError) -> UInt8 { try integer(UInt8.self, what) }
    mutating func u16(_ what: String) throws(VFFNError) -> UInt16 { try integer(UInt16.self, what) }
    mutating func u32(_ what: String) throws(VFFNError) -> UInt32 { try integer(UInt32.self, what) }
    mutating func u64(_ what: String) throws(VFFNError) -> UInt64 { try integer(UInt64.self, what) }
    mutating func i32(_ what: String) throws(VFFNError) -> Int32 { try integer(Int32.self, what) }
    mutating func i64(_ what: String) throws(VFFNError) -> Int64 { try integer(Int64.self, what) }
}

/// Size arithmetic that reports overflow as bad input instead of trapping.
func checkedProduct(_ factors: [UInt64], path: String, what: @autoclosure () -> String) throws(VFFNError) -> UInt64 {
    var p: UInt64 = 1
    for f in factors {
        let (r, overflow) = p.multipliedReportingOverflow(by: f)
        if overflow { throw .badInput(path, "\(what()) overflows 64 bits") }
        p = r
    }
    return p
}

/// Refuses a shape whose size, ignoring zero dimensions, does not fit in an Int of bytes: a
/// zero-sized `[2^62, 2, 0]` is legal in the file, but every product over its dimensions
/// (element counts, parameter totals) would trap on the way to 0; so would a stride-0 torch
/// view whose elements the storage never holds.
func checkShapeFitsInMemory(_ shape: [Int], elementBytes: Int, path: String, what: @autoclosure () -> String) throws(VFFNError) {
    var p = UInt64(max(elementBytes, 1))
    for d in shape where d != 0 {
        let (r, overflow) = p.multipliedReportingOverflow(by: UInt64(d))
        guard !overflow, r <= UInt64(Int.max) else { throw .badInput(path, "\(what()) is too large to address") }
        p = r
    }
}

/// `v` as the little-endian bytes every format here stores integers in.
func littleEndianBytes<T: FixedWidthInteger>(_ v: T) -> [UInt8] {
    withUnsafeBytes(of: v.littleEndian, Array.init)
}

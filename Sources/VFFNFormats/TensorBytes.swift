#if canImport(Glibc)
import Glibc
#endif

/// A byte range of a file that holds exactly a tensor's bytes as presented, so a writer can copy
/// it file to file in the kernel without ever reading it into the process.
public struct FileRegion: Sendable, Equatable {
    public let path: String
    public let offset: Int
    public let count: Int

    public init(path: String, offset: Int, count: Int) {
        self.path = path
        self.offset = offset
        self.count = count
    }

    /// The region's bytes read from the file in pieces of `tensorPieceBytes` (for writers that
    /// must look at them: checksums, deflate).
    public func forEachPiece(_ body: (UnsafeRawBufferPointer) throws(VFFNError) -> Void) throws(VFFNError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io(path, "cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, min(count, tensorPieceBytes)), alignment: 64)
        defer { buffer.deallocate() }
        var done = 0
        while done < count {
            let n = pread(fd, buffer.baseAddress!, min(buffer.count, count - done), off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw .io(path, "read failed: \(String(cString: strerror(errno)))")
            }
            if n == 0 { throw .io(path, "ends at byte \(offset + done), before the \(count) bytes at \(offset) were read") }
            try body(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            done += n
        }
    }
}

/// Where a tensor's (or file's) bytes come from when it is written. Nothing here holds a
/// decoded tensor: a source tensor is read a piece at a time as it is written.
public enum TensorBytes: @unchecked Sendable {
    /// Bytes in memory: new gates, config text.
    case owned([UInt8])
    /// A tensor of a source file, read (mapped, or decoded a piece at a time) when written.
    case tensor(any TensorFile, TensorInfo)
    /// A file region that holds exactly the bytes: copied in the kernel where the writer need not
    /// look at them, read from the file in pieces where it must.
    case region(FileRegion)
    /// `count` bytes made a piece at a time when written (a container's embedded file, a
    /// neuron-permuted tensor).
    case pieces(count: Int, source: any PieceSource)

    /// A source tensor as a writer should take it: its file region when the file stores it as
    /// presented (copied in the kernel), otherwise read from the file a piece at a time.
    public static func source(_ file: any TensorFile, _ info: TensorInfo) -> TensorBytes {
        file.storedRegion(info).map { .region($0) } ?? .tensor(file, info)
    }

    public var count: Int {
        switch self {
        case let .owned(a): return a.count
        case let .tensor(_, info): return info.byteCount
        case let .region(r): return r.count
        case let .pieces(n, _): return n
        }
    }

    /// The bytes in order, in pieces, with at most one piece decoded at a time.
    public func forEachPiece(_ body: (UnsafeRawBufferPointer) throws(VFFNError) -> Void) throws(VFFNError) {
        switch self {
        case let .owned(a):
            try a.withUnsafeBytes { b in Result { () throws(VFFNError) in try body(b) } }.get()
        case let .tensor(file, info):
            try file.read(info, chunkBytes: tensorPieceBytes, body)
        case let .region(r):
            try r.forEachPiece(body)
        case let .pieces(_, source):
            try source.forEachPiece(body)
        }
    }

    /// `forEachPiece`, checked to hand over exactly `count` bytes: a reader that came short or
    /// long (a file changed since it was sized) fails the write instead of shifting every later
    /// tensor in the output.
    public func forEachCheckedPiece(what: String, _ body: (UnsafeRawBufferPointer) throws(VFFNError) -> Void) throws(VFFNError) {
        var n = 0
        try forEachPiece { (piece) throws(VFFNError) in
            n += piece.count
            guard n <= count else { throw .io(what, "gave more than its \(count) bytes while being written") }
            try body(piece)
        }
        guard n == count else { throw .io(what, "gave \(n) of its \(count) bytes while being written") }
    }
}

/// Bytes made a piece at a time when written, in order.
public protocol PieceSource: Sendable {
    func forEachPiece(_ body: (UnsafeRawBufferPointer) throws(VFFNError) -> Void) throws(VFFNError)
}

/// One tensor a writer writes: name, dtype, shape and where its bytes come from.
public struct TensorRecord: Sendable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    public let bytes: TensorBytes

    public init(name: String, dtype: DType, shape: [Int], bytes: TensorBytes) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
    }
}

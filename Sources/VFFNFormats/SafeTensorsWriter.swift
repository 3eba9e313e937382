import CSystem
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes safetensors files: the header, then each tensor's bytes in order, streamed.
public enum SafeTensorsWriter {
    /// Writes one safetensors file: the header (padded with spaces to a multiple of 8 so data
    /// starts aligned), then every tensor's bytes in header order. Tensors are laid out by
    /// decreasing element size, then name, as the reference writer does, so that each tensor is
    /// naturally aligned without padding (the format forbids gaps).
    /// `written` is called after each tensor with its byte count (for progress).
    public static func write(_ tensors: [TensorRecord], metadata: [(String, String)]?, to path: String,
                             written: (Int) -> Void = { _ in }) throws(VFFNError) {
        let ordered = tensors.sorted { ($0.dtype.bitSize, $1.name) > ($1.dtype.bitSize, $0.name) }
        var members: [(String, JSON)] = []
        if let metadata { members.append(("__metadata__", .object(metadata.map { ($0, .string($1)) }))) }
        var offset = 0
        for t in ordered {
            let expected = t.shape.reduce(1, *) * t.dtype.bitSize / 8
            precondition(expected == t.bytes.count, "tensor \(t.name): \(t.bytes.count) bytes for shape \(t.shape) \(t.dtype)")
            members.append((t.name, .object([
                ("dtype", .string(t.dtype.rawValue)),
                ("shape", .array(t.shape.map { .int($0) })),
                ("data_offsets", .array([.int(offset), .int(offset + t.bytes.count)])),
            ])))
            offset += t.bytes.count
        }
        var header = Array(JSON.object(members).compact.utf8)
        header.append(contentsOf: repeatElement(0x20, count: (8 - header.count % 8) % 8))

        let file = try OutputFile(path: path)
        let length = UInt64(header.count)
        try file.write(littleEndianBytes(length))
        try file.write(header)
        for t in ordered {
            if case let .region(r) = t.bytes {
                try file.copy(r)
            } else {
                try t.bytes.forEachCheckedPiece(what: t.name) { (piece) throws(VFFNError) in try file.write(piece) }
            }
            written(t.bytes.count)
        }
        try file.finish()
    }
}

/// A file being written: every write is checked and completed, and `finish` flushes it to disk
/// before closing so a rename after it publishes only complete data.
public final class OutputFile {
    public let path: String
    private var fd: Int32
    /// The source file `copy` last read from, kept open across the tensors of one shard.
    private var source: (path: String, fd: Int32)?

    public init(path: String) throws(VFFNError) {
        self.path = path
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .io(path, "cannot create: \(String(cString: strerror(errno)))") }
    }

    deinit {
        if fd >= 0 { close(fd) }
        if let source { close(source.fd) }
    }

    /// Appends a region of another file: `copy_file_range` moves the bytes in the kernel (no
    /// page of them enters this process, so memory does not grow with the checkpoint); where the
    /// kernel or filesystem cannot, a bounded buffer does the same.
    public func copy(_ region: FileRegion) throws(VFFNError) {
        if source?.path != region.path {
            if let source { close(source.fd) }
            let s = open(region.path, O_RDONLY | O_CLOEXEC)
            guard s >= 0 else { throw .io(region.path, "cannot open: \(String(cString: strerror(errno)))") }
            source = (region.path, s)
        }
        let src = source!.fd
        var offset = Int64(region.offset)
        var left = region.count
        while left > 0 {
            let n = vffn_copy_file_range(src, &offset, fd, nil, min(left, 1 << 30))
            if n > 0 { left -= n; continue }
            if n == 0 { throw .badInput(region.path, "ended \(left) bytes before the region at \(region.offset) (truncated while copying?)") }
            if errno == EINTR { continue }
            if [EXDEV, ENOSYS, EINVAL, EOPNOTSUPP, EPERM].contains(errno) {
                try copyBuffered(src, from: Int(offset), count: left, sourcePath: region.path)
                return
            }
            throw .io(path, "copy from \(region.path) failed: \(String(cString: strerror(errno)))")
        }
    }

    /// Appends a region of another file through one bounded buffer, showing each chunk to
    /// `observe` (a checksum) on the way. Memory stays flat however large the region: reading
    /// through a mapping instead would count every page in the resident set.
    package func copyThroughBuffer(_ region: FileRegion, observe: (UnsafeRawBufferPointer) -> Void) throws(VFFNError) {
        let src = open(region.path, O_RDONLY | O_CLOEXEC)
        guard src >= 0 else { throw .io(region.path, "cannot open: \(String(cString: strerror(errno)))") }
        defer { close(src) }
        try copyBuffered(src, from: region.offset, count: region.count, sourcePath: region.path, observe: observe)
    }

    private func copyBuffered(_ src: Int32, from start: Int, count: Int, sourcePath: String,
                              observe: (UnsafeRawBufferPointer) -> Void = { _ in }) throws(VFFNError) {
        var buffer = [UInt8](repeating: 0, count: min(count, 1 << 22))
        var done = 0
        while done < count {
            let want = min(buffer.count, count - done)
            let n = buffer.withUnsafeMutableBytes { pread(src, $0.baseAddress!, want, off_t(start + done)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw .io(sourcePath, n == 0 ? "ended early (truncated while copying?)" : "read failed: \(String(cString: strerror(errno)))") }
            let chunk = buffer.withUnsafeBytes { b in
                Result { () throws(VFFNError) in
                    let bytes = UnsafeRawBufferPointer(rebasing: b[0..<n])
                    observe(bytes)
                    try write(bytes)
                }
            }
            try chunk.get()
            done += n
        }
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws(VFFNError) {
        var done = 0
        while done < bytes.count {
            // Chunked so that a huge mapped tensor never asks the kernel for one giant write.
            let n = Glibc.write(fd, bytes.baseAddress! + done, min(bytes.count - done, 1 << 26))
            if n < 0 {
                if errno == EINTR { continue }
                throw .io(path, "write failed: \(String(cString: strerror(errno)))")
            }
            done += n
        }
    }

    public func write(_ bytes: [UInt8]) throws(VFFNError) {
        let result = bytes.withUnsafeBytes { b in Result { () throws(VFFNError) in try write(b) } }
        try result.get()
    }

    public func write(_ text: String) throws(VFFNError) {
        try write(Array(text.utf8))
    }

    /// Moves the write position, for formats that fill in a header after their data.
    public func seek(to offset: Int) throws(VFFNError) {
        guard lseek(fd, off_t(offset), SEEK_SET) == off_t(offset) else {
            throw .io(path, "seek failed: \(String(cString: strerror(errno)))")
        }
    }

    /// Whether `finish` waits for the data to reach the disk (fsync) before an output is renamed
    /// into place. On by default: a crash after the rename must not leave a checkpoint of empty
    /// files. `--no-fsync` turns it off for outputs that are synced or discarded anyway; the
    /// rename still happens only after every byte is written.
    nonisolated(unsafe) public static var durable = true

    /// A whole small file (config text, an index, the remote code) written and finished.
    public static func write(_ bytes: [UInt8], to path: String) throws(VFFNError) {
        let f = try OutputFile(path: path)
        try f.write(bytes)
        try f.finish()
    }

    public static func write(_ text: String, to path: String) throws(VFFNError) {
        try write(Array(text.utf8), to: path)
    }

    public func finish() throws(VFFNError) {
        if Self.durable {
            guard fsync(fd) == 0 else { throw .io(path, "fsync failed: \(String(cString: strerror(errno)))") }
        }
        let r = close(fd)
        fd = -1
        guard r == 0 else { throw .io(path, "close failed: \(String(cString: strerror(errno)))") }
    }
}

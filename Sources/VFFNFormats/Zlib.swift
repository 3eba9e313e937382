import CZlib

enum CRC32 {
    static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 { update(0, bytes) }

    /// The CRC32 of bytes that continue those `crc` was computed over.
    static func update(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
        guard let base = bytes.baseAddress else { return crc }
        return UInt32(crc32_z(uLong(crc), base.assumingMemoryBound(to: UInt8.self), bytes.count))
    }
}

/// A zlib stream (`raw: false`, .vffn entries) or raw deflate stream (`raw: true`, zip entries)
/// inflated piece by piece into the caller's buffer, so that no entry is ever held whole. It
/// must come to exactly `length` bytes; anything else (a corrupt, short or longer stream) is an
/// error naming `what`, and nothing past `length` is ever produced.
final class Inflater {
    private var stream = z_stream()
    private let stored: UnsafeRawBufferPointer
    private let length: Int
    private let path: String, what: String
    private var fed = 0
    private(set) var produced = 0
    private var ended = false

    init(_ stored: UnsafeRawBufferPointer, length: Int, raw: Bool, path: String, what: String) throws(VFFNError) {
        self.stored = stored
        self.length = length
        self.path = path
        self.what = what
        guard inflateInit2_(&stream, raw ? -MAX_WBITS : MAX_WBITS, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw .io(path, "zlib inflateInit failed")
        }
    }

    deinit { inflateEnd(&stream) }

    /// Fills `out` (all of it unless the stream ends first) and returns the count; 0 only at
    /// the end, once the stream has been checked to hold exactly `length` bytes.
    func read(into out: UnsafeMutableRawBufferPointer) throws(VFFNError) -> Int {
        var filled = 0
        while filled < out.count && !ended {
            if stream.avail_in == 0 && fed < stored.count {
                let n = min(stored.count - fed, Int(UInt32.max))
                stream.next_in = UnsafeMutablePointer(mutating: (stored.baseAddress! + fed).assumingMemoryBound(to: Bytef.self))
                stream.avail_in = uInt(n)
                fed += n
            }
            // Never more than `length` in all: one byte past it is room enough to see a lie.
            let room = min(out.count - filled, length - produced + 1, Int(UInt32.max))
            stream.next_out = (out.baseAddress! + filled).assumingMemoryBound(to: Bytef.self)
            stream.avail_out = uInt(room)
            let status = CZlib.inflate(&stream, Z_NO_FLUSH)
            let n = room - Int(stream.avail_out)
            filled += n
            produced += n
            guard produced <= length else { throw .badInput(path, "\(what) inflates to more than the \(length) bytes it declares") }
            switch status {
            case Z_STREAM_END:
                ended = true
                guard produced == length else { throw .badInput(path, "\(what) inflates to \(produced) bytes, expected \(length)") }
            case Z_OK: break
            case Z_BUF_ERROR where stream.avail_in == 0 && fed == stored.count:
                throw .badInput(path, "\(what): deflate stream ends after \(produced) of \(length) bytes (truncated)")
            case Z_BUF_ERROR where n > 0: break
            default: throw .badInput(path, "\(what) is not a valid deflate stream (zlib status \(status))")
            }
        }
        return filled
    }

    /// Reads to the end in pieces of at most `chunk` bytes.
    func forEachPiece(chunk: Int, _ body: (UnsafeRawBufferPointer) throws(VFFNError) -> Void) throws(VFFNError) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, min(chunk, length + 1)), alignment: 64)
        defer { buffer.deallocate() }
        while true {
            let n = try read(into: buffer)
            if n == 0 { return }
            try body(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
    }
}

/// zlib compression fed piece by piece, its output handed on as it is produced.
final class Deflater {
    private var stream = z_stream()
    private let path: String
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)

    /// Level 1: weights barely compress, so speed matters more than the last percent.
    init(level: Int32 = 1, path: String) throws(VFFNError) {
        self.path = path
        guard deflateInit_(&stream, level, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw .io(path, "zlib deflateInit failed")
        }
    }

    deinit {
        deflateEnd(&stream)
        buffer.deallocate()
    }

    func add(_ bytes: UnsafeRawBufferPointer, _ output: (UnsafeRawBufferPointer) throws(VFFNError) -> Void) throws(VFFNError) {
        var fed = 0
        repeat {
            let n = min(bytes.count - fed, Int(UInt32.max))
            stream.next_in = UnsafeMutablePointer(mutating: bytes.baseAddress.map { ($0 + fed).assumingMemoryBound(to: Bytef.self) })
            stream.avail_in = uInt(n)
            fed += n
            try drain(flush: Z_NO_FLUSH, output)
        } while fed < bytes.count
    }

    func finish(_ output: (UnsafeRawBufferPointer) throws(VFFNError) -> Void) throws(VFFNError) {
        stream.avail_in = 0
        try drain(flush: Z_FINISH, output)
    }

    private func drain(flush: Int32, _ output: (UnsafeRawBufferPointer) throws(VFFNError) -> Void) throws(VFFNError) {
        while true {
            stream.next_out = buffer.baseAddress!.assumingMemoryBound(to: Bytef.self)
            stream.avail_out = uInt(buffer.count)
            let status = CZlib.deflate(&stream, flush)
            guard status == Z_OK || status == Z_STREAM_END || status == Z_BUF_ERROR else { throw .io(path, "zlib deflate failed (status \(status))") }
            let n = buffer.count - Int(stream.avail_out)
            if n > 0 { try output(UnsafeRawBufferPointer(rebasing: buffer[0..<n])) }
            if flush == Z_FINISH ? status == Z_STREAM_END : stream.avail_out != 0 { return }
        }
    }
}

enum Deflate {
    /// The whole of an entry inflated to exactly `length`, straight into memory of its own.
    static func inflate(_ stored: UnsafeRawBufferPointer, length: Int, raw: Bool = false, path: String, what: String) throws(VFFNError) -> TensorData {
        let inflater = try Inflater(stored, length: length, raw: raw, path: path, what: what)
        return try TensorData(count: length) { (out) throws(VFFNError) in
            var filled = 0
            while true {
                let n = try inflater.read(into: UnsafeMutableRawBufferPointer(rebasing: out[filled...]))
                if n == 0 { break }
                filled += n
            }
            // A stream shorter than its length ends with an error in `read`; one that fills the
            // buffer must also end there (a longer one is refused by the probe).
            var probe: UInt8 = 0
            guard try withUnsafeMutableBytes(of: &probe, { (b) throws(VFFNError) in try inflater.read(into: b) }) == 0 else {
                throw .badInput(path, "\(what) inflates to more than the \(length) bytes it declares")
            }
        }
    }
}

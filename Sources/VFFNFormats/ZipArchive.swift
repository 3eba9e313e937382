import Foundation

/// A read-only zip archive over a mapped file, as torch.save writes them (stored entries, ZIP64
/// records when large) and as other tools rewrite them (deflated entries). Every size and offset
/// is checked against the file before use; encrypted and multi-disk archives are refused.
final class ZipArchive: @unchecked Sendable {
    /// The compression methods torch.save archives use (zip's numbers).
    enum Method: UInt16, Sendable {
        case stored = 0
        case deflated = 8
    }

    struct Entry: Sendable {
        let name: String
        /// 0 stored, 8 deflated.
        let method: Method
        let crc32: UInt32
        let compressedSize: Int
        let size: Int
        /// Where the entry's (possibly compressed) bytes start in the file.
        let dataOffset: Int
    }

    /// More entries than this is not a checkpoint (a 70B model has a few thousand storages).
    static let maxEntries = 1_000_000

    let file: MappedFile
    var path: String { file.path }
    let entries: [Entry]
    private let index: [String: Int]
    private let verified = VerifiedSet<String>()

    init(_ file: MappedFile) throws(VFFNError) {
        self.file = file
        let bytes = file.bytes, path = file.path
        // The end-of-central-directory record is the last 22 bytes plus a comment of up to 64 KiB.
        guard bytes.count >= 22 else { throw .badInput(path, "truncated zip: \(bytes.count) bytes, too short for an end-of-central-directory record") }
        var eocd = -1
        for start in stride(from: bytes.count - 22, through: max(0, bytes.count - 22 - 0xFFFF), by: -1) where
            bytes[start] == 0x50 && bytes[start + 1] == 0x4B && bytes[start + 2] == 0x05 && bytes[start + 3] == 0x06 {
            eocd = start
            break
        }
        guard eocd >= 0 else { throw .badInput(path, "not a complete zip archive: no end-of-central-directory record (truncated?)") }
        var r = ByteReader(bytes, path: path, offset: eocd + 4, context: "zip end-of-central-directory")
        let disk = try r.u16("disk number"), cdDisk = try r.u16("central directory disk")
        _ = try r.u16("entries on this disk")
        var count = UInt64(try r.u16("entry count"))
        var cdSize = UInt64(try r.u32("central directory size"))
        var cdOffset = UInt64(try r.u32("central directory offset"))
        guard disk == 0 || disk == 0xFFFF, cdDisk == 0 || cdDisk == 0xFFFF else { throw .badInput(path, "multi-disk zip archives are not supported") }
        if count == 0xFFFF || cdSize == 0xFFFF_FFFF || cdOffset == 0xFFFF_FFFF {
            // ZIP64: a locator just before the record points at the 64-bit record.
            guard eocd >= 20 else { throw .badInput(path, "zip64 archive without its locator") }
            var loc = ByteReader(bytes, path: path, offset: eocd - 20, context: "zip64 locator")
            guard try loc.u32("signature") == 0x0706_4B50 else { throw .badInput(path, "zip64 archive without its locator") }
            _ = try loc.u32("disk")
            let recordOffset = try loc.u64("zip64 record offset")
            // (Found by fuzzing: a file shorter than the record made `bytes.count - 56` negative.)
            guard bytes.count >= 56, recordOffset <= UInt64(bytes.count - 56) else {
                throw .badInput(path, "zip64 record offset \(recordOffset) is outside the file")
            }
            var z = ByteReader(bytes, path: path, offset: Int(recordOffset), context: "zip64 end-of-central-directory")
            guard try z.u32("signature") == 0x0606_4B50 else { throw .badInput(path, "zip64 end-of-central-directory record not found where its locator points") }
            _ = try z.take(20, "record size and versions")
            _ = try z.u64("entries on this disk")
            count = try z.u64("entry count")
            cdSize = try z.u64("central directory size")
            cdOffset = try z.u64("central directory offset")
        }
        guard count <= UInt64(Self.maxEntries) else { throw .badInput(path, "zip archive claims \(count) entries (limit \(Self.maxEntries))") }
        guard cdOffset <= UInt64(bytes.count), cdSize <= UInt64(bytes.count) - cdOffset else {
            throw .badInput(path, "zip central directory at \(cdOffset) (+\(cdSize) bytes) runs past the end of the \(bytes.count)-byte file")
        }
        // Each central-directory record is at least 46 bytes.
        guard count * 46 <= cdSize else { throw .badInput(path, "zip central directory of \(cdSize) bytes cannot hold \(count) entries") }

        var entries: [Entry] = []
        var index: [String: Int] = [:]
        var c = ByteReader(UnsafeRawBufferPointer(rebasing: bytes[0..<Int(cdOffset + cdSize)]), path: path, offset: Int(cdOffset), context: "zip central directory")
        for _ in 0..<count {
            guard try c.u32("entry signature") == 0x0201_4B50 else {
                throw .badInput(path, "zip central directory entry at byte \(c.offset - 4) has a bad signature")
            }
            _ = try c.u16("version made by"); _ = try c.u16("version needed")
            let flags = try c.u16("flags"), rawMethod = try c.u16("method")
            _ = try c.u32("time and date")
            let crc = try c.u32("crc32")
            var compressed = UInt64(try c.u32("compressed size")), size = UInt64(try c.u32("size"))
            let nameLength = Int(try c.u16("name length")), extraLength = Int(try c.u16("extra length")), commentLength = Int(try c.u16("comment length"))
            _ = try c.u16("disk start"); _ = try c.u16("internal attributes"); _ = try c.u32("external attributes")
            var localOffset = UInt64(try c.u32("local header offset"))
            let nameBytes = try c.take(nameLength, "entry name")
            guard let name = String(validating: nameBytes, as: UTF8.self) else { throw .badInput(path, "zip entry name at byte \(c.offset - nameLength) is not UTF-8") }
            var extra = ByteReader(try c.take(extraLength, "extra field of \"\(name)\""), path: path, context: "zip extra field of \"\(name)\"")
            _ = try c.take(commentLength, "comment of \"\(name)\"")
            // ZIP64 extended information: the 64-bit values, present for the fields that are 0xFFFFFFFF.
            while extra.remaining >= 4 {
                let id = try extra.u16("id"), length = Int(try extra.u16("length"))
                var field = ByteReader(try extra.take(length, "field"), path: path, context: "zip64 field of \"\(name)\"")
                if id == 0x0001 {
                    if size == 0xFFFF_FFFF { size = try field.u64("size") }
                    if compressed == 0xFFFF_FFFF { compressed = try field.u64("compressed size") }
                    if localOffset == 0xFFFF_FFFF { localOffset = try field.u64("local header offset") }
                }
            }
            guard flags & 1 == 0 else { throw .badInput(path, "zip entry \"\(name)\" is encrypted") }
            guard let method = Method(rawValue: rawMethod) else {
                throw .badInput(path, "zip entry \"\(name)\" uses compression method \(rawMethod) (only stored and deflated are supported)")
            }
            guard index[name] == nil else { throw .badInput(path, "zip entry \"\(name)\" appears twice") }
            if method == .stored, compressed != size { throw .badInput(path, "stored zip entry \"\(name)\" has compressed size \(compressed) != size \(size)") }
            // The local header repeats the name and has its own extra field (torch pads with
            // one to align data to 64 bytes); the data follows it.
            guard localOffset <= UInt64(bytes.count) else { throw .badInput(path, "zip entry \"\(name)\" local header offset \(localOffset) is outside the file") }
            var local = ByteReader(bytes, path: path, offset: Int(localOffset), context: "zip local header of \"\(name)\"")
            guard try local.u32("signature") == 0x0403_4B50 else { throw .badInput(path, "zip entry \"\(name)\": no local header at byte \(localOffset)") }
            _ = try local.take(22, "fixed fields")
            let localName = Int(try local.u16("name length")), localExtra = Int(try local.u16("extra length"))
            _ = try local.take(localName + localExtra, "name and extra field")
            let dataOffset = local.offset
            guard compressed <= UInt64(bytes.count - dataOffset) else {
                throw .badInput(path, "zip entry \"\(name)\" data (\(compressed) bytes at \(dataOffset)) runs past the end of the \(bytes.count)-byte file (truncated?)")
            }
            guard size <= UInt64(Int.max) else { throw .badInput(path, "zip entry \"\(name)\" claims \(size) bytes") }
            index[name] = entries.count
            entries.append(Entry(name: name, method: method, crc32: crc, compressedSize: Int(compressed), size: Int(size), dataOffset: dataOffset))
        }
        self.entries = entries
        self.index = index
    }

    func entry(_ name: String) -> Entry? { index[name].map { entries[$0] } }

    /// An entry's bytes after checking its CRC32: mapped when stored (checked once), inflated
    /// for this call (to exactly its declared size, never more) when deflated.
    func contents(_ e: Entry) throws(VFFNError) -> TensorData {
        let stored = storedBytes(e)
        if e.method == .stored {
            if !verified.contains(e.name) {
                try check(e, CRC32.checksum(stored))
                verified.insert(e.name)
            }
            return TensorData(mapped: stored, owner: file)
        }
        let data = try Deflate.inflate(stored, length: e.size, raw: true, path: path, what: "zip entry \"\(e.name)\"")
        try check(e, CRC32.checksum(data.raw))
        return data
    }

    /// Bytes `range` of a deflated entry's contents, in pieces, inflating the entry once through
    /// to its end, where its CRC32 (which covers all of it) is checked.
    func read(_ e: Entry, range: Range<Int>, chunkBytes: Int, _ body: (UnsafeRawBufferPointer) throws(VFFNError) -> Void) throws(VFFNError) {
        let inflater = try Inflater(storedBytes(e), length: e.size, raw: true, path: path, what: "zip entry \"\(e.name)\"")
        var crc: UInt32 = 0, at = 0
        try inflater.forEachPiece(chunk: chunkBytes) { (piece) throws(VFFNError) in
            crc = CRC32.update(crc, piece)
            let lo = max(range.lowerBound, at), hi = min(range.upperBound, at + piece.count)
            if lo < hi { try body(UnsafeRawBufferPointer(rebasing: piece[(lo - at)..<(hi - at)])) }
            at += piece.count
        }
        try check(e, crc)
    }

    private func storedBytes(_ e: Entry) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: file.bytes[e.dataOffset..<e.dataOffset + e.compressedSize])
    }

    private func check(_ e: Entry, _ crc: UInt32) throws(VFFNError) {
        guard crc == e.crc32 else {
            throw .badInput(path, "zip entry \"\(e.name)\" is corrupt: CRC32 \(String(crc, radix: 16)), expected \(String(e.crc32, radix: 16))")
        }
    }
}

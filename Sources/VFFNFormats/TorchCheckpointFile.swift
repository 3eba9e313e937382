import Foundation

/// A `torch.save` state dict (`pytorch_model.bin`, zip format): `<top>/data.pkl` names each
/// tensor's storage `<top>/data/<key>`, offset, shape and strides; the pickle is evaluated by
/// `Pickle`, which runs nothing. Contiguous tensors in stored entries are read in place.
public final class TorchCheckpointFile: TensorFile, @unchecked Sendable {
    public let path: String
    public var format: TensorFileFormat { .pytorch }
    public let tensors: [TensorInfo]
    public var metadata: [(String, String)]? { nil }

    private let archive: ZipArchive
    private let refs: [String: (Pickle.TensorRef, ZipArchive.Entry)]
    private let index: [String: Int]

    public init(path: String) throws(VFFNError) {
        self.path = path
        archive = try ZipArchive(MappedFile(path: path))
        // torch names the top folder after the file; readers take it from the first entry.
        guard let first = archive.entries.first, let slash = first.name.firstIndex(of: "/") else {
            throw .badInput(path, "zip archive is not a torch.save checkpoint (its first entry is not in a folder)")
        }
        let top = String(first.name[..<slash])
        guard let pickleEntry = archive.entry(top + "/data.pkl") else {
            throw .badInput(path, "zip archive has no \(top)/data.pkl; not a torch.save checkpoint")
        }
        if let order = archive.entry(top + "/byteorder") {
            let text = String(decoding: try archive.contents(order), as: UTF8.self)
            guard text == "little" else { throw .badInput(path, "tensors are stored \(text)-endian; only little-endian is supported") }
        }
        guard pickleEntry.size <= 1 << 30 else { throw .badInput(path, "data.pkl of \(pickleEntry.size) bytes is too large for a state dict") }
        let pickle = try archive.contents(pickleEntry)
        let dict = try withExtendedLifetime(pickle) { () throws(VFFNError) in try Pickle.stateDict(pickle.raw, path: path) }

        var infos: [TensorInfo] = []
        var refs: [String: (Pickle.TensorRef, ZipArchive.Entry)] = [:]
        var index: [String: Int] = [:]
        for (name, t) in dict {
            guard refs[name] == nil else { throw .badInput(path, "tensor \"\(name)\" appears twice in the state dict") }
            let recordName = top + "/data/" + t.storage.key
            guard let record = archive.entry(recordName) else {
                throw .badInput(path, "tensor \"\(name)\": storage record \(recordName) is missing from the archive")
            }
            let item = t.storage.dtype.bitSize / 8
            let expected = try checkedProduct([UInt64(t.storage.numel), UInt64(item)], path: path, what: "storage \(t.storage.key) size")
            guard UInt64(record.size) == expected else {
                throw .badInput(path, "tensor \"\(name)\": storage record \(recordName) holds \(record.size) bytes, but \(t.storage.numel) \(t.storage.dtype) elements need \(expected)")
            }
            // The last element the view reaches must lie inside the storage.
            let elements = try checkedProduct(t.shape.map(UInt64.init), path: path, what: "tensor \"\(name)\" shape \(t.shape)")
            try checkShapeFitsInMemory(t.shape, elementBytes: item, path: path, what: "tensor \"\(name)\": shape \(t.shape)")
            if elements > 0 {
                var last = UInt64(t.offset)
                for (n, s) in zip(t.shape, t.stride) {
                    let (step, o1) = UInt64(n - 1).multipliedReportingOverflow(by: UInt64(s))
                    let (sum, o2) = last.addingReportingOverflow(step)
                    if o1 || o2 { throw .badInput(path, "tensor \"\(name)\": strides \(t.stride) overflow") }
                    last = sum
                }
                guard last < UInt64(t.storage.numel) else {
                    throw .badInput(path, "tensor \"\(name)\": view (offset \(t.offset), shape \(t.shape), stride \(t.stride)) reaches element \(last) of a \(t.storage.numel)-element storage")
                }
            }
            index[name] = infos.count
            let start = record.dataOffset + t.offset * item
            infos.append(TensorInfo(name: name, dtype: t.storage.dtype, shape: t.shape, dataOffsets: start..<start + Int(elements) * item))
            refs[name] = (t, record)
        }
        tensors = infos
        self.refs = refs
        self.index = index
    }

    public func info(_ name: String) -> TensorInfo? { index[name].map { tensors[$0] } }

    public func bytes(_ info: TensorInfo) throws(VFFNError) -> TensorData {
        guard let (t, record) = refs[info.name] else { throw .badInput(path, "has no tensor \"\(info.name)\"") }
        if Self.isContiguous(t), record.method == .stored {
            let storage = try archive.contents(record)
            let item = t.storage.dtype.bitSize / 8
            return TensorData(mapped: UnsafeRawBufferPointer(rebasing: storage.raw[t.offset * item..<t.offset * item + info.byteCount]), owner: storage)
        }
        return try assembled(info)
    }

    /// Stored contiguous tensors as one mapped piece; deflated ones inflated through their
    /// storage record in pieces; strided views (a transposed or sliced tensor saved as is)
    /// gathered in C order a piece at a time, from the mapped storage or, deflated, from the
    /// storage inflated for the call.
    public func read(_ info: TensorInfo, chunkBytes: Int, _ body: (UnsafeRawBufferPointer) throws(VFFNError) -> Void) throws(VFFNError) {
        guard let (t, record) = refs[info.name] else { throw .badInput(path, "has no tensor \"\(info.name)\"") }
        let item = t.storage.dtype.bitSize / 8
        if Self.isContiguous(t) {
            if record.method == .stored {
                let data = try bytes(info)
                try withExtendedLifetime(data) { () throws(VFFNError) in try body(data.raw) }
            } else {
                try archive.read(record, range: t.offset * item..<t.offset * item + info.byteCount, chunkBytes: chunkBytes, body)
            }
            return
        }
        let storage = try archive.contents(record)
        let perPiece = max(1, chunkBytes / item)
        let piece = UnsafeMutableRawBufferPointer.allocate(byteCount: min(perPiece, max(info.elementCount, 1)) * item, alignment: 64)
        defer { piece.deallocate() }
        var coordinate = [Int](repeating: 0, count: t.shape.count)
        var done = 0
        defer { withExtendedLifetime(storage) {} }   // its bytes are read below, through raw pointers
        while done < info.elementCount {
            let n = min(perPiece, info.elementCount - done)
            for i in 0..<n {
                var source = t.offset
                for (c, s) in zip(coordinate, t.stride) { source += c * s }
                (piece.baseAddress! + i * item).copyMemory(from: storage.raw.baseAddress! + source * item, byteCount: item)
                var d = t.shape.count - 1
                while d >= 0 {
                    coordinate[d] += 1
                    if coordinate[d] < t.shape[d] { break }
                    coordinate[d] = 0
                    d -= 1
                }
            }
            try body(UnsafeRawBufferPointer(rebasing: piece[0..<n * item]))
            done += n
        }
    }

    static func isContiguous(_ t: Pickle.TensorRef) -> Bool {
        var expected = 1
        for (n, s) in zip(t.shape, t.stride).reversed() {
            if n != 1 && s != expected { return false }
            expected *= n
        }
        return true
    }
}

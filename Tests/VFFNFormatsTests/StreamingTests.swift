import Foundation
import Testing
import TestSupport
@testable import VFFNFormats

/// Writers read a tensor that must be decoded a piece at a time (`TensorFile.read`); the pieces
/// must be exactly the bytes `bytes` gives, for every reader that decodes, at any piece size.
@Suite struct StreamingTests {
    static func pieces(_ file: any TensorFile, _ info: TensorInfo, chunk: Int) throws -> (bytes: [UInt8], count: Int) {
        var out: [UInt8] = [], n = 0
        try file.read(info, chunkBytes: chunk) { piece in
            #expect(piece.count > 0)
            out += piece
            n += 1
        }
        return (out, n)
    }

    /// Q8_0 dequantized a few rows at a time, llama's permuted q/k a head at a time, deflated and
    /// strided torch tensors, deflated .vffn entries: at 1 KiB pieces, 100 bytes (less than a
    /// row) and the writers' size, the concatenation is the tensor.
    @Test(arguments: ["gguf/llama-gqa-q8_0.gguf", "gguf/llama-gqa-f32.gguf", "llama-bin-deflated/pytorch_model.bin", "bert-tiny-bin/pytorch_model.bin",
                      "vffn/qwen2-bf16-e8k2d4-deflate.vffn"])
    func piecesAreTheTensor(file path: String) throws {
        let file = try TensorFileFormat.open(path: Fixtures.path(path))
        var decodedSomewhere = false
        for info in file.tensors {
            let whole = Array(try file.bytes(info))
            #expect(whole.count == info.byteCount, "\(info.name)")
            for chunk in [100, 1024, tensorPieceBytes] {
                let (bytes, count) = try Self.pieces(file, info, chunk: chunk)
                #expect(bytes == whole, "\(info.name) at \(chunk)-byte pieces")
                if count > 1 { decodedSomewhere = true }
            }
        }
        // The file has tensors that are decoded, in several pieces at the smaller sizes.
        #expect(decodedSomewhere || path.hasSuffix("bert-tiny-bin/pytorch_model.bin"), "\(path): every tensor came as one piece")
    }

    /// A deflated zip entry whose bytes were altered after its CRC32 was recorded: the pieces are
    /// produced, and the read fails at the end, naming the entry.
    @Test func corruptDeflatedZipEntryFailsTheRead() throws {
        let floats = (0..<64).flatMap { i in withUnsafeBytes(of: Float(i).bitPattern.littleEndian, Array.init) }
        let dict = PickleOps.stateDict([PickleOps.tensor("w", key: "0", numel: 64, shape: [8, 8], stride: [8, 1])])
        var archive = PickleOps.torchArchive(pickle: dict, storages: [("0", floats)], deflated: true)
        // The CRC32 of data/0 in its local header and central directory entry, changed.
        for at in (0..<archive.count - 4) where Array(archive[at..<at + 4]) == littleEndianBytes(CRC32.checksum(floats.withUnsafeBytes { $0 })) {
            archive[at] ^= 0xFF
        }
        let path = makeTemporaryDirectory() + "/m.bin"
        writeFile(path, archive)
        let file = try TorchCheckpointFile(path: path)
        let info = try #require(file.info("w"))
        var seen = 0
        do {
            try file.read(info, chunkBytes: 64) { seen += $0.count }
            Issue.record("read a corrupt entry")
        } catch {
            #expect(error.description.contains("zip entry \"archive/data/0\" is corrupt: CRC32"), "\(error)")
        }
        #expect(seen == info.byteCount)
        #expect(throws: VFFNError.self) { _ = try file.bytes(info) }
    }

    /// llama's q/k biases are permuted like their rows, in F16 and in Q8_0; an empty q is no
    /// rows at all. Stored row 2i + j of each head is presented at j * half + i.
    @Test func permutedBiasesAndEmptyTensors() throws {
        var tensors: [GGUF.Tensor] = [], data: [UInt8] = []
        func add(_ name: String, _ dims: [Int64], type: Int32, _ bytes: [UInt8]) {
            tensors.append(.init(name, dims, type: type, offset: UInt64(data.count)))
            data += bytes
            data += [UInt8](repeating: 0, count: (32 - data.count % 32) % 32)
        }
        let stored = (0..<64).map { Float($0) }
        add("token_embd.weight", [8, 16], type: 0, FloatCodec.encode((0..<128).map(Float.init), as: .F32))
        add("blk.0.attn_q.bias", [64], type: 1, FloatCodec.encode(stored, as: .F16))
        // Q8_0: two blocks, scale 1, the values as int8.
        var q8: [UInt8] = []
        for b in 0..<2 {
            q8 += [0x00, 0x3C]   // f16 1.0
            for v in 0..<32 { q8.append(UInt8(b * 32 + v)) }
        }
        add("blk.0.attn_k.bias", [64], type: 8, q8)
        add("blk.0.attn_v.weight", [8, 0], type: 0, [])
        add("blk.0.attn_q.weight", [8, 0], type: 0, [])
        let path = makeTemporaryDirectory() + "/m.gguf"
        writeFile(path, GGUF.file(kvs: GGUF.llamaMetadata(), tensors: tensors, data: data))
        let f = try GGUFFile(path: path)
        // Two heads of 32: presented j * 16 + i comes from stored 2i + j.
        let expected: [Float] = (0..<64).map { (r: Int) -> Float in
            let head = r / 32, i = r % 16, j = (r % 32) / 16
            return Float(head * 32 + 2 * i + j)
        }
        for name in ["model.layers.0.self_attn.q_proj.bias", "model.layers.0.self_attn.k_proj.bias"] {
            let info = try #require(f.info(name))
            #expect(FloatCodec.decode(try f.bytes(info), as: info.dtype) == expected, "\(name)")
            #expect(try Self.pieces(f, info, chunk: 16).bytes == Array(try f.bytes(info)))
        }
        let empty = try #require(f.info("model.layers.0.self_attn.q_proj.weight"))
        #expect(try Self.pieces(f, empty, chunk: 16).count == 0)
        #expect(try f.bytes(empty).count == 0)
    }

    /// A source that gives other than its byte count (a file that changed since it was sized)
    /// fails the write instead of shifting every later tensor in the output.
    @Test func writersCountTheBytesTheyAreGiven() throws {
        struct NinePieces: PieceSource {
            func forEachPiece(_ body: (UnsafeRawBufferPointer) throws(VFFNError) -> Void) throws(VFFNError) {
                try [UInt8](repeating: 1, count: 9).withUnsafeBytes { b in Result { () throws(VFFNError) in try body(b) } }.get()
            }
        }
        let short = TensorRecord(name: "t", dtype: .U8, shape: [10], bytes: .pieces(count: 10, source: NinePieces()))
        let dir = makeTemporaryDirectory()
        #expect { try SafeTensorsWriter.write([short], metadata: nil, to: dir + "/a.safetensors") } throws: {
            ($0 as? VFFNError)?.message == "gave 9 of its 10 bytes while being written"
        }
        writeFile(dir + "/f", [UInt8](repeating: 2, count: 5))
        let shrunk = TensorRecord(name: "t", dtype: .U8, shape: [10], bytes: .region(FileRegion(path: dir + "/f", offset: 0, count: 10)))
        #expect { try VFFNContainer.write(config: .object([]), tensors: [.init(shrunk, shard: "s")], files: [], shards: [], compress: true,
                                          to: dir + "/b.vffn") } throws: { ($0 as? VFFNError)?.message.contains("before the 10 bytes at 0 were read") == true }
    }

    @Test func inflaterRefusesStreamsThatDoNotHoldTheirLength() throws {
        let data = [UInt8](repeating: 7, count: 10_000)
        var packed: [UInt8] = []
        let deflater = try Deflater(path: "t")
        try data.withUnsafeBytes { try deflater.add($0) { packed += $0 } }
        try deflater.finish { packed += $0 }
        func inflate(_ stored: [UInt8], length: Int, chunk: Int) throws -> [UInt8] {
            try stored.withUnsafeBytes { s in
                var out: [UInt8] = []
                try Inflater(s, length: length, raw: false, path: "t", what: "entry").forEachPiece(chunk: chunk) { out += $0 }
                return out
            }
        }
        #expect(try inflate(packed, length: 10_000, chunk: 333) == data)
        #expect { try inflate(packed, length: 9_999, chunk: 333) } throws: { ($0 as? VFFNError)?.message == "entry inflates to more than the 9999 bytes it declares" }
        #expect { try inflate(packed, length: 10_001, chunk: 333) } throws: { ($0 as? VFFNError)?.message == "entry inflates to 10000 bytes, expected 10001" }
        #expect { try inflate(Array(packed.dropLast(6)), length: 10_000, chunk: 333) } throws: {
            ($0 as? VFFNError)?.message.contains("deflate stream ends after") == true
        }
        #expect(packed.count < 100)
    }
}

import Foundation
import Testing
import TestSupport
import VFFNFormats

@Suite struct SafeTensorsTests {
    @Test func roundTripsTensorsMetadataAndAlignment() throws {
        let dir = makeTemporaryDirectory()
        let path = dir + "/t.safetensors"
        let ids: [UInt8] = [1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]
        let records = [
            TensorRecord(name: "b.half", dtype: .BF16, shape: [3], bytes: .owned(FloatCodec.encode([1, -2, 0.5], as: .BF16))),
            TensorRecord(name: "a.w", dtype: .F32, shape: [2, 2], bytes: .owned(FloatCodec.encode([1, 2, 3, 4], as: .F32))),
            TensorRecord(name: "ids", dtype: .I64, shape: [1, 2], bytes: .owned(ids)),
            TensorRecord(name: "scalar", dtype: .F16, shape: [], bytes: .owned(FloatCodec.encode([7], as: .F16))),
        ]
        try SafeTensorsWriter.write(records, metadata: [("format", "pt")], to: path)
        let f = try SafeTensorsFile(path: path)
        #expect(f.headerSize % 8 == 0)
        #expect(f.metadata!.map(\.0) == ["format"] && f.metadata![0].1 == "pt")
        // Largest elements first, then by name: every tensor naturally aligned, no padding.
        #expect(f.tensors.map(\.name) == ["ids", "a.w", "b.half", "scalar"])
        for t in f.tensors { #expect((8 + f.headerSize + t.dataOffsets.lowerBound) % (t.dtype.bitSize / 8) == 0) }
        #expect(FloatCodec.decode(f.bytes(f.info("a.w")!), as: .F32) == [1, 2, 3, 4])
        #expect(FloatCodec.decode(f.bytes(f.info("b.half")!), as: .BF16) == [1, -2, 0.5])
        #expect(FloatCodec.decode(f.bytes(f.info("scalar")!), as: .F16) == [7])
        #expect(Array(f.bytes(f.info("ids")!)) == ids)
        #expect(f.info("scalar")!.shape == [])
        // The header is the compact JSON the reference writer produces, space padded.
        let raw = try #require(FileManager.default.contents(atPath: path))
        let header = String(decoding: raw[8..<8 + f.headerSize], as: UTF8.self)
        #expect(header.hasPrefix(#"{"__metadata__":{"format":"pt"},"ids":{"dtype":"I64","shape":[1,2],"data_offsets":[0,16]}"#))
    }

    @Test func readsTransformersWrittenShard() throws {
        let f = try SafeTensorsFile(path: Fixtures.path("qwen2-bf16-tied/model.safetensors"))
        let q = try #require(f.info("model.layers.0.self_attn.q_proj.bias"))
        #expect(q.dtype == .BF16 && q.shape == [32])
        #expect(f.info("lm_head.weight") == nil)
        #expect(f.tensors.count == 26)
    }

    @Test func floatCodecRoundsToNearestEven() {
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0);
        // 1 + 3*2^-8 rounds up to 1 + 2^-6... 1 + 2^-7 + 2^-8 is halfway and goes to 1 + 2^-6.
        let v: [Float] = [1, 1 + 0x1p-8, 1 + 0x1p-7 + 0x1p-8, -0.0, .infinity]
        let bf = FloatCodec.encode(v, as: .BF16)
        let words = stride(from: 0, to: bf.count, by: 2).map { UInt16(bf[$0]) | UInt16(bf[$0 + 1]) << 8 }
        #expect(words == [0x3F80, 0x3F80, 0x3F82, 0x8000, 0x7F80])
        let f16 = FloatCodec.encode([1, 65504, 1e-8, -2], as: .F16)
        let halves = stride(from: 0, to: f16.count, by: 2).map { UInt16(f16[$0]) | UInt16(f16[$0 + 1]) << 8 }
        #expect(halves == [0x3C00, 0x7BFF, 0x0000, 0xC000])
    }

    static let malformed: [(String, [UInt8], String)] = [
        ("empty", [], "empty file, not safetensors"),
        ("five bytes", [1, 2, 3, 4, 5], "truncated: 5 bytes, too short for the 8-byte header length"),
        ("length past end", safetensorsBytes(header: "{}", declaredLength: 50), "header length 50 runs past the end of the 10-byte file (truncated?)"),
        ("zero length", safetensorsBytes(header: "{}", declaredLength: 0), "empty header (header length is 0)"),
        ("huge length", safetensorsBytes(header: "{}", declaredLength: 100_000_001), "header length 100000001 exceeds the 100000000-byte limit; not a safetensors file?"),
        ("git lfs", Array("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n".utf8), "is a Git LFS pointer, not the weights (run `git lfs pull`)"),
        ("not utf8", safetensorsBytes(header: "{}") .enumerated().map { $0.offset == 9 ? 0xFF : $0.element }, "header is not valid UTF-8"),
        ("bad json", safetensorsBytes(header: "{\"a\":}"), "header is not valid JSON: unexpected character '}' at header byte 5"),
        ("nul padding", safetensorsBytes(header: "{}\0\0\0\0\0\0"), "header is not valid JSON: trailing characters after the JSON value at header byte 2"),
        ("array header", safetensorsBytes(header: "[]"), "header is not a JSON object"),
        ("duplicate tensor", safetensorsBytes(header: #"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#, data: [0]),
         "header is not valid JSON: duplicate key \"a\" at header byte 53"),
        ("unknown dtype", safetensorsBytes(header: #"{"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}}"#, data: .init(repeating: 0, count: 16)),
         "tensor \"a\": unknown dtype \"F128\" (supported: BOOL, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ, I16, U16, F16, BF16, I32, U32, F32, C64, F64, I64, U64, F4, F6_E2M3, F6_E3M2)"),
        ("lowercase dtype", safetensorsBytes(header: #"{"a":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0]), "tensor \"a\": unknown dtype \"f32\""),
        ("metadata not string", safetensorsBytes(header: #"{"__metadata__":{"k":1}}"#), "__metadata__ value of \"k\" is not a string"),
        ("missing offsets", safetensorsBytes(header: #"{"a":{"dtype":"U8","shape":[1]}}"#, data: [0]), "tensor \"a\": \"data_offsets\" must be two non-negative integers"),
        ("negative offset", safetensorsBytes(header: #"{"a":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}}"#, data: [0]), "tensor \"a\": \"data_offsets\" must be two non-negative integers"),
        ("exponent offset", safetensorsBytes(header: #"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1e0]}}"#, data: [0]), "tensor \"a\": \"data_offsets\" must be two non-negative integers"),
        ("three offsets", safetensorsBytes(header: #"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}}"#, data: [0]), "tensor \"a\": \"data_offsets\" must be two non-negative integers"),
        ("negative dim", safetensorsBytes(header: #"{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#, data: [0]), "tensor \"a\": shape entry -1 is not a non-negative integer"),
        ("reversed offsets", safetensorsBytes(header: #"{"a":{"dtype":"U8","shape":[0],"data_offsets":[1,0]}}"#, data: [0]), "tensor \"a\": data_offsets [1, 0] end before begin"),
        ("shape overflow", safetensorsBytes(header: #"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0]),
         "tensor \"a\": shape [4294967296, 4294967296] overflows 64 bits"),
        ("bits overflow", safetensorsBytes(header: #"{"a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0]),
         "tensor \"a\": shape [4611686018427387904] of F32 overflows 64 bits"),
        ("empty but huge", safetensorsBytes(header: #"{"a":{"dtype":"F32","shape":[4611686018427387904,2,0],"data_offsets":[0,0]}}"#, data: []),
         "tensor \"a\": shape [4611686018427387904, 2, 0] is too large to address"),
        ("size mismatch", safetensorsBytes(header: #"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}}"#, data: .init(repeating: 0, count: 12)),
         "tensor \"a\": shape [4] of F32 needs 16 bytes but data_offsets span 12"),
        ("sub-byte", safetensorsBytes(header: #"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}}"#, data: [0]), "tensor \"a\": 3 elements of F4 do not fill whole bytes"),
        ("overlap", safetensorsBytes(header: #"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}"#, data: [0, 0, 0]),
         "tensor \"b\" data_offsets [1, 3] overlaps the previous tensor (expected start 2)"),
        ("alias", safetensorsBytes(header: #"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#, data: [0, 0]),
         "data_offsets [0, 2] overlaps the previous tensor (expected start 2)"),
        ("gap", safetensorsBytes(header: #"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[1],"data_offsets":[3,4]}}"#, data: [0, 0, 0, 0]),
         "tensor \"b\" data_offsets [3, 4] leaves a gap after the previous tensor (expected start 2)"),
        ("truncated data", safetensorsBytes(header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, data: [0, 0, 0, 0]),
         "tensor data covers 8 bytes but the file holds only 4 (truncated?)"),
        ("trailing bytes", safetensorsBytes(header: #"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#, data: [0, 9, 9]),
         "tensor data covers 1 bytes but the file holds 3 (trailing bytes)"),
        ("entry not object", safetensorsBytes(header: #"{"a":[1]}"#), "tensor \"a\": entry is not an object"),
    ]

    @Test(arguments: malformed)
    func rejectsMalformedFile(name: String, bytes: [UInt8], message: String) throws {
        let dir = makeTemporaryDirectory()
        let path = dir + "/bad.safetensors"
        writeFile(path, bytes)
        do {
            _ = try SafeTensorsFile(path: path)
            Issue.record("\(name): accepted")
        } catch {
            #expect(error.kind == .badInput, "\(name)")
            #expect(error.path == path)
            #expect(error.message.contains(message), "\(name): \(error.message)")
            #expect(!error.description.contains("\n"))
        }
    }

    @Test func acceptsEdgeCasesTheReferenceAccepts() throws {
        let dir = makeTemporaryDirectory()
        // Whitespace padding, a null __metadata__, unknown extra fields, zero-size tensors.
        let header = " {\"__metadata__\":null,\"e\":{\"dtype\":\"F32\",\"shape\":[2,0],\"data_offsets\":[0,0],\"extra\":1},\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}\n  "
        writeFile(dir + "/ok.safetensors", safetensorsBytes(header: header, data: [7]))
        let f = try SafeTensorsFile(path: dir + "/ok.safetensors")
        #expect(f.metadata == nil)
        #expect(f.info("e")!.byteCount == 0)
        #expect(Array(f.bytes(f.info("a")!)) == [7])
    }

    @Test func missingFileIsAnIOError() {
        #expect(throws: VFFNError.self) { try SafeTensorsFile(path: "/nonexistent/x.safetensors") }
    }
}

import Foundation
import Testing
import TestSupport
@testable import VFFNFormats

/// torch.save archives: read without running anything, and refused clearly when malformed.
@Suite struct TorchCheckpointTests {
    @Test func readsTorchSavedFixturesAsTheirSafetensorsTwins() throws {
        for (bin, st) in [("bert-tiny-bin", "bert-tiny"), ("gpt2-bin-sharded", "gpt2-tiny"), ("llama-bin-deflated", "llama-gqa-sharded")] {
            let a = try Checkpoint(path: Fixtures.path(bin)), b = try Checkpoint(path: Fixtures.path(st))
            #expect(a.format == .pytorch)
            for name in b.tensorNames {
                let x = try #require(a.info(name), "\(bin): \(name) missing"), y = b.info(name)!
                #expect(x.dtype == y.dtype && x.shape == y.shape)
                #expect(Array(try a.bytes(name)!) == Array(try b.bytes(name)!), "\(bin): \(name)")
            }
        }
        // The GPT-2 head shares wte's storage in the archive: both names, the same bytes.
        let gpt2 = try Checkpoint(path: Fixtures.path("gpt2-bin-sharded"))
        #expect(gpt2.isSharded && gpt2.shards.count == 2)
        #expect(Array(try gpt2.bytes("lm_head.weight")!) == Array(try gpt2.bytes("transformer.wte.weight")!))
        #expect(gpt2.safetensorsName(of: gpt2.shards[1]) == "model-00002-of-00002.safetensors")
    }

    /// torch writes ZIP64 end records beside the classic one; an archive whose classic record
    /// holds the ZIP64 sentinels (as a large one does) must be read through them.
    @Test func zip64EndRecordsAreFollowed() throws {
        var bytes = Array(FileManager.default.contents(atPath: Fixtures.path("bert-tiny-bin/pytorch_model.bin"))!)
        let eocd = try #require((0..<bytes.count - 4).last { Array(bytes[$0..<$0 + 4]) == le(UInt32(0x0605_4B50)) })
        bytes.replaceSubrange(eocd + 8..<eocd + 20, with: le(UInt16(0xFFFF)) + le(UInt16(0xFFFF)) + le(UInt32(0xFFFF_FFFF)) + le(UInt32(0xFFFF_FFFF)))
        let path = write(bytes)
        let a = try TorchCheckpointFile(path: path), b = try TorchCheckpointFile(path: Fixtures.path("bert-tiny-bin/pytorch_model.bin"))
        #expect(a.tensors.map(\.name) == b.tensors.map(\.name))
        for t in b.tensors { #expect(Array(try a.bytes(t)) == Array(try b.bytes(t))) }
        // Without the ZIP64 records the sentinels cannot be resolved.
        let locator = try #require((0..<eocd).last { Array(bytes[$0..<$0 + 4]) == le(UInt32(0x0706_4B50)) })
        bytes.replaceSubrange(locator..<locator + 4, with: [0, 0, 0, 0])
        expectError(bytes, "zip64 archive without its locator")
    }

    func write(_ bytes: [UInt8]) -> String {
        let path = makeTemporaryDirectory() + "/pytorch_model.bin"
        writeFile(path, bytes)
        return path
    }

    func expectError(_ bytes: [UInt8], _ message: String, sourceLocation: SourceLocation = #_sourceLocation) {
        let path = write(bytes)
        do {
            let f = try TensorFileFormat.open(path: path)
            for t in f.tensors { _ = try f.bytes(t) }
            Issue.record("read without error", sourceLocation: sourceLocation)
        } catch {
            #expect(error.description == path + ": " + message, sourceLocation: sourceLocation)
        }
    }

    static let floats: [UInt8] = (0..<6).flatMap { le(Float($0).bitPattern) }

    @Test func handMadeStateDictReadsAndGathersStridedViews() throws {
        // A [2, 3] tensor and its transpose as a strided view of the same storage.
        let pickle = PickleOps.stateDict([
            PickleOps.tensor("w", key: "0", numel: 6, shape: [2, 3], stride: [3, 1]),
            PickleOps.tensor("wt", key: "0", numel: 6, shape: [3, 2], stride: [1, 3]),
            PickleOps.tensor("row1", key: "0", numel: 6, offset: 3, shape: [3], stride: [1]),
        ])
        let f = try TorchCheckpointFile(path: write(PickleOps.torchArchive(pickle: pickle, storages: [("0", Self.floats)])))
        func values(_ n: String) throws -> [Float] { FloatCodec.decode(try f.bytes(f.info(n)!), as: .F32) }
        #expect(try values("w") == [0, 1, 2, 3, 4, 5])
        #expect(try values("wt") == [0, 3, 1, 4, 2, 5])
        #expect(try values("row1") == [3, 4, 5])
        #expect(f.tensors.map(\.name) == ["w", "wt", "row1"])
    }

    @Test func malformedArchives() throws {
        let good = PickleOps.torchArchive(pickle: PickleOps.stateDict([PickleOps.tensor("w", key: "0", numel: 6, shape: [2, 3], stride: [3, 1])]),
                                          storages: [("0", Self.floats)])
        expectError(Array(good.prefix(good.count - 10)), "not a complete zip archive: no end-of-central-directory record (truncated?)")
        expectError(Array(good.prefix(4)) + [UInt8](repeating: 0, count: 10), "truncated zip: 14 bytes, too short for an end-of-central-directory record")
        // A stored byte flipped inside the storage record: caught by the entry's CRC32.
        var flipped = good
        let at = try #require((0..<good.count - 4).first { Array(good[$0..<$0 + 4]) == le(Float(5).bitPattern) })
        flipped[at] ^= 0x01
        expectError(flipped, "zip entry \"archive/data/0\" is corrupt: CRC32 \(String(crc32(Array(Self.floats.dropLast(4)) + [flipped[at], flipped[at + 1], flipped[at + 2], flipped[at + 3]]), radix: 16)), expected \(String(crc32(Self.floats), radix: 16))")
        // The central directory's sizes for the storage entry, inflated past the end of the file.
        var outOfBounds = good
        let cd = try #require((0..<good.count - 4).last { Array(good[$0..<$0 + 4]) == le(UInt32(0x0201_4B50)) && String(decoding: good[($0 + 46)...].prefix(14), as: UTF8.self) == "archive/data/0" })
        outOfBounds.replaceSubrange(cd + 20..<cd + 28, with: le(UInt32(1 << 30)) + le(UInt32(1 << 30)))
        expectError(outOfBounds, "zip entry \"archive/data/0\" data (1073741824 bytes at \(try #require(localDataOffset(good, "archive/data/0")))) runs past the end of the \(good.count)-byte file (truncated?)")
        var badLocal = good
        badLocal.replaceSubrange(cd + 42..<cd + 46, with: le(UInt32(good.count + 10)))
        expectError(badLocal, "zip entry \"archive/data/0\" local header offset \(good.count + 10) is outside the file")
        expectError(Zip.archive([Zip.Entry("top.txt", [1])]), "zip archive is not a torch.save checkpoint (its first entry is not in a folder)")
        expectError(Zip.archive([Zip.Entry("archive/version", [0x33])]), "zip archive has no archive/data.pkl; not a torch.save checkpoint")
        expectError(PickleOps.torchArchive(pickle: PickleOps.stateDict([]), storages: [], byteorder: "big"),
                    "tensors are stored big-endian; only little-endian is supported")
    }

    /// Where an entry's data starts: after its 30-byte local header and name (no extra field here).
    func localDataOffset(_ archive: [UInt8], _ name: String) -> Int? {
        (0..<archive.count - 4).first { Array(archive[$0..<$0 + 4]) == le(UInt32(0x0403_4B50)) && String(decoding: archive[($0 + 30)...].prefix(name.utf8.count), as: UTF8.self) == name }
            .map { $0 + 30 + name.utf8.count }
    }

    /// Deflated storages read like stored ones; a deflated entry that claims to expand far beyond
    /// its bytes (a zip bomb's claim) costs only what it really inflates to, and is refused.
    @Test func deflatedEntriesAndSizeClaims() throws {
        let dict = PickleOps.stateDict([PickleOps.tensor("w", key: "0", numel: 6, shape: [2, 3], stride: [3, 1])])
        let f = try TorchCheckpointFile(path: write(PickleOps.torchArchive(pickle: dict, storages: [("0", Self.floats)], deflated: true)))
        #expect(FloatCodec.decode(try f.bytes(f.info("w")!), as: .F32) == [0, 1, 2, 3, 4, 5])
        // 2^30 floats claimed (4 GiB), 24 bytes present.
        let huge = PickleOps.stateDict([PickleOps.tensor("w", key: "0", numel: 1 << 30, shape: [1 << 30], stride: [1])])
        expectError(PickleOps.torchArchive(pickle: huge, storages: [("0", Self.floats)], deflated: true, declaredSize: 4_294_963_200),
                    "tensor \"w\": storage record archive/data/0 holds 4294963200 bytes, but 1073741824 F32 elements need 4294967296")
        let claimed = PickleOps.stateDict([PickleOps.tensor("w", key: "0", numel: 1 << 29, shape: [1 << 29], stride: [1])])
        expectError(PickleOps.torchArchive(pickle: claimed, storages: [("0", Self.floats)], deflated: true, declaredSize: 1 << 31),
                    "zip entry \"archive/data/0\" inflates to 24 bytes, expected 2147483648")
        let short = PickleOps.stateDict([PickleOps.tensor("w", key: "0", numel: 2, shape: [2], stride: [1])])
        expectError(PickleOps.torchArchive(pickle: short, storages: [("0", Self.floats)], deflated: true, declaredSize: 8),
                    "zip entry \"archive/data/0\" inflates to more than the 8 bytes it declares")
    }

    @Test func malformedPickles() throws {
        func archive(_ pickle: [UInt8], storages: [(String, [UInt8])] = [("0", TorchCheckpointTests.floats)]) -> [UInt8] {
            PickleOps.torchArchive(pickle: pickle, storages: storages)
        }
        // Code execution through a global is refused by name, before anything is called.
        let evil = [0x80, 0x02] + PickleOps.global("posix", "system") + PickleOps.tuple([PickleOps.unicode("echo pwned")]) + [0x52, 0x2E]
        expectError(archive(evil), "pickle global posix.system at byte 2 is not allowed: a state dict needs only tensors, storages and OrderedDict, and nothing in a checkpoint is executed")
        let eval = [0x80, 0x02] + PickleOps.global("builtins", "eval") + [0x2E]
        expectError(archive(eval), "pickle global builtins.eval at byte 2 is not allowed: a state dict needs only tensors, storages and OrderedDict, and nothing in a checkpoint is executed")
        // INST (0x69) is an opcode a state dict never uses.
        expectError(archive([0x80, 0x02, 0x69] + Array("os\nsystem\n".utf8) + [0x2E]), "pickle opcode 0x69 at byte 2 is not supported in a state dict")
        expectError(archive([0x80, 0x05, 0x2E]), "pickle: pickle protocol 5 is not supported (at most 4) at byte 2")
        expectError(archive([0x80, 0x02, 0x52]), "pickle: stack underflow at byte 3")
        expectError(archive([0x80, 0x02, 0x68, 0x07]), "pickle: memo index 7 was never stored at byte 4")
        expectError(archive([0x80, 0x02, 0x71, 0x00, 0x2E]), "pickle: memoizing from an empty stack at byte 4")
        expectError(archive([0x80, 0x02, 0x58] + le(UInt32(1_000_000)) + [0x61]), "pickle: length 1000000 runs past the end of the pickle at byte 7")
        expectError(archive([0x80, 0x02, 0x28]), "truncated pickle: opcode at byte 3 runs past the end of the 3-byte file")
        // A training checkpoint: {"model": {...}} rather than the state dict itself.
        let nested = [0x80, 0x02, 0x7D] + PickleOps.unicode("model") + [0x7D, 0x73, 0x2E]
        expectError(archive(nested), "pickle: \"model\" holds a nested dict; this is a training checkpoint, not a state dict (save model.state_dict())")
        // Storage problems, checked against the archive before any data is read.
        expectError(archive(PickleOps.stateDict([PickleOps.tensor("w", key: "7", numel: 6, shape: [2, 3], stride: [3, 1])])),
                    "tensor \"w\": storage record archive/data/7 is missing from the archive")
        expectError(archive(PickleOps.stateDict([PickleOps.tensor("w", key: "0", numel: 8, shape: [2, 4], stride: [4, 1])])),
                    "tensor \"w\": storage record archive/data/0 holds 24 bytes, but 8 F32 elements need 32")
        expectError(archive(PickleOps.stateDict([PickleOps.tensor("w", key: "0", numel: 6, offset: 2, shape: [2, 3], stride: [3, 1])])),
                    "tensor \"w\": view (offset 2, shape [2, 3], stride [3, 1]) reaches element 7 of a 6-element storage")
        expectError(archive(PickleOps.stateDict([PickleOps.tensor("w", storage: "ComplexFloatStorage", key: "0", numel: 3, shape: [3], stride: [1])])),
                    "pickle global torch.ComplexFloatStorage at byte 83 is not allowed: a state dict needs only tensors, storages and OrderedDict, and nothing in a checkpoint is executed")
    }

    /// Inputs the fuzzers found (Fuzz/regressions), kept so they stay fixed.
    @Test func fuzzerFindingsStayFixed() throws {
        // A ZIP64 locator in a file shorter than a ZIP64 record: `count - 56` went negative.
        let short = try #require(FileManager.default.contents(atPath: Fixtures.packageRoot + "/Fuzz/regressions/torch-zip64-locator-in-a-short-file"))
        // (Its first bytes are not a zip magic, so it is opened as a zip directly, as the fuzzer did.)
        let path = write(Array(short))
        #expect { try TorchCheckpointFile(path: path) } throws: {
            ($0 as? VFFNError)?.description == path + ": zip64 record offset 135023 is outside the file"
        }
        // A dict stored in itself (EMPTY_DICT, BINPUT, BINGET..., SETITEM): a reference cycle
        // that leaked once the error unwound (LeakSanitizer; `make test-asan` re-checks it).
        let cycle = try #require(FileManager.default.contents(atPath: Fixtures.packageRoot + "/Fuzz/regressions/pickle-self-containing-list"))
        let outcome = Array(cycle).withUnsafeBytes { b in Result { () throws(VFFNError) in try Pickle.stateDict(b, path: "cycle") } }
        #expect(throws: VFFNError.self) { try outcome.get() }
    }

    @Test func legacyTorchFilesAreNamed() throws {
        let path = write([0x80, 0x02, 0x8A, 0x0A, 0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8])
        #expect { try TensorFileFormat.open(path: path) } throws: {
            ($0 as? VFFNError)?.description == path + ": is a legacy (pre-1.6, non-zip) torch.save file; re-save it with a current torch or as safetensors"
        }
    }
}

/// Our torch.save writer (the OLMo export's model.pt), read back by our reader; torch itself
/// loads it with weights_only=True in `make test-interop`.
@Suite struct TorchCheckpointWriterTests {
    @Test func roundTripsDTypesShapesAndFusedParts() throws {
        let dir = makeTemporaryDirectory()
        let a: [Float] = (0..<12).map { Float($0) * 0.5 - 2 }
        let b = FloatCodec.encode((0..<6).map { Float($0) }, as: .BF16)
        let ids: [UInt8] = (0..<3).flatMap { le(Int64($0 - 1)) }
        let tensors: [TorchCheckpointWriter.Tensor] = [
            .init(name: "fused.weight", dtype: .F32, shape: [4, 3], parts: [
                .owned(FloatCodec.encode(Array(a[0..<6]), as: .F32)), .owned(FloatCodec.encode(Array(a[6..<12]), as: .F32))]),
            .init(name: "bf16", dtype: .BF16, shape: [2, 1, 3], parts: [.owned(b)]),
            .init(name: "ids", dtype: .I64, shape: [3], parts: [.owned(ids)]),
            .init(name: "scalar", dtype: .F32, shape: [], parts: [.owned(FloatCodec.encode([7], as: .F32))]),
            .init(name: "big.shape", dtype: .F16, shape: [300, 70_000, 0], parts: []),
        ]
        try TorchCheckpointWriter.write(tensors, top: "model", to: dir + "/model.pt")
        let file = try TorchCheckpointFile(path: dir + "/model.pt")
        #expect(file.tensors.map(\.name) == tensors.map(\.name))
        for t in tensors {
            let info = try #require(file.info(t.name))
            #expect(info.dtype == t.dtype && info.shape == t.shape, "\(t.name)")
            var expected: [UInt8] = []
            for p in t.parts { try p.forEachPiece { expected += $0 } }
            #expect(Array(try file.bytes(info)) == expected, "\(t.name)")
        }
        // Stored entries, data on 64-byte boundaries (torch's mmap loading relies on it), the
        // entries torch.save writes, in its order.
        let archive = try ZipArchive(MappedFile(path: dir + "/model.pt"))
        #expect(archive.entries.map(\.name) == ["model/data.pkl", "model/.format_version", "model/.storage_alignment", "model/byteorder"]
                + (0..<5).map { "model/data/\($0)" } + ["model/version"])
        for e in archive.entries where e.name.hasPrefix("model/data/") {
            #expect(e.dataOffset % 64 == 0 && e.method == .stored, "\(e.name)")
        }
    }

    @Test func refusesDTypesTorchHasNoStorageFor() throws {
        let dir = makeTemporaryDirectory()
        #expect(throws: VFFNError.self) {
            try TorchCheckpointWriter.write([.init(name: "x", dtype: .F8_E4M3, shape: [1], parts: [.owned([0])])], top: "m", to: dir + "/m.pt")
        }
    }
}

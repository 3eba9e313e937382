import Foundation
import Testing
import TestSupport
@testable import VFFNFormats

/// The .vffn container: round trips bit for bit, and every corruption is named, never returned.
@Suite struct VFFNContainerTests {
    /// Every file under `a` has an identical twin under `b`, and nothing else is in `b` but the
    /// marker that says vffn-convert wrote it (which lists exactly the files of `a`).
    func expectIdenticalTrees(_ a: String, _ b: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let fm = FileManager.default
        let left = try #require(fm.subpaths(atPath: a)).sorted(), right = try #require(fm.subpaths(atPath: b)).sorted()
        #expect(left == right.filter { $0 != AtomicOutput.markerName } && right.contains(AtomicOutput.markerName), sourceLocation: sourceLocation)
        let marker = try JSON.parse(Array(try #require(fm.contents(atPath: b + "/" + AtomicOutput.markerName))))
        #expect(marker["files"]?.arrayValue?.compactMap { $0["path"]?.stringValue } == Checkpoint.filesBelow(a), sourceLocation: sourceLocation)
        for p in left {
            var isDir: ObjCBool = false
            _ = fm.fileExists(atPath: a + "/" + p, isDirectory: &isDir)
            if !isDir.boolValue { #expect(fm.contents(atPath: a + "/" + p) == fm.contents(atPath: b + "/" + p), "\(p)", sourceLocation: sourceLocation) }
        }
    }

    @Test(arguments: [("llama-gqa-sharded", false), ("qwen2-bf16-tied", true), ("bert-noprefix-bf16", false), ("gpt2-tiny", true)])
    func packThenUnpackGivesTheDirectoryBack(fixture: String, compress: Bool) throws {
        let dir = makeTemporaryDirectory()
        // A module folder as sentence-transformers ships them, to travel as an embedded file.
        let src = dir + "/src"
        try copyDirectory(Fixtures.path(fixture), to: src)
        try FileManager.default.createDirectory(atPath: src + "/1_Pooling", withIntermediateDirectories: false)
        writeFile(src + "/1_Pooling/config.json", #"{"pooling_mode_mean_tokens": true}"#)
        let summary = try VFFNContainer.pack(Checkpoint(path: src), to: dir + "/c.vffn", compress: compress)
        let others = try FileManager.default.subpathsOfDirectory(atPath: src).filter { !$0.hasSuffix(".safetensors") && $0 != "1_Pooling" }
        #expect(summary.files == others.count && others.contains("1_Pooling/config.json"))
        try VFFNContainer(path: dir + "/c.vffn").unpack(to: dir + "/back")
        try expectIdenticalTrees(src, dir + "/back")
        // Read directly, the container is the same checkpoint.
        let packed = try Checkpoint(path: dir + "/c.vffn"), original = try Checkpoint(path: src)
        #expect(packed.format == .vffn && packed.tensorNames.sorted() == original.tensorNames.sorted())
        #expect(packed.config == original.config)
        for name in original.tensorNames { #expect(Array(try packed.bytes(name)!) == Array(try original.bytes(name)!)) }
        #expect(packed.auxiliaryFiles() == original.auxiliaryFiles())
    }

    /// Containers written by an earlier build of the tool (fixtures/vffn) still read: the format
    /// is a contract with files already on users' disks.
    @Test func committedContainersStillRead() throws {
        let packed = try Checkpoint(path: Fixtures.path("vffn/mistral-f16.vffn")), dir = try Checkpoint(path: Fixtures.path("mistral-f16"))
        for name in dir.tensorNames { #expect(Array(try packed.bytes(name)!) == Array(try dir.bytes(name)!)) }
        let out = makeTemporaryDirectory() + "/m"
        try VFFNContainer(path: Fixtures.path("vffn/mistral-f16.vffn")).unpack(to: out)
        try expectIdenticalTrees(Fixtures.path("mistral-f16"), out)
        let converted = try VFFNContainer(path: Fixtures.path("vffn/qwen2-bf16-e8k2d4-deflate.vffn"))
        #expect(converted.tensorEntries.allSatisfy { $0.encoding == .deflate })
        #expect(converted.config["versatile_ffn"]?["num_experts"]?.intValue == 8)
        #expect(converted.tensors.count == 30)
    }

    @Test func compressionShrinksRepetitiveData() throws {
        let dir = makeTemporaryDirectory()
        let src = dir + "/src"
        try FileManager.default.createDirectory(atPath: src, withIntermediateDirectories: false)
        writeFile(src + "/config.json", #"{"model_type": "llama"}"#)
        try SafeTensorsWriter.write([TensorRecord(name: "zeros", dtype: .F32, shape: [256, 256], bytes: .owned([UInt8](repeating: 0, count: 1 << 18)))],
                                    metadata: nil, to: src + "/model.safetensors")
        let plain = try VFFNContainer.pack(Checkpoint(path: src), to: dir + "/plain.vffn")
        let small = try VFFNContainer.pack(Checkpoint(path: src), to: dir + "/small.vffn", compress: true)
        #expect(plain.containerBytes > 1 << 18 && small.containerBytes < 4096)
        let c = try VFFNContainer(path: dir + "/small.vffn")
        #expect(c.tensorEntries[0].encoding == .deflate && c.tensorEntries[0].length == 1 << 18)
        #expect(try c.bytes(c.tensors[0]).allSatisfy { $0 == 0 })
    }

    @Test func aContainerCheckpointConvertsToSafetensorsNames() throws {
        let dir = makeTemporaryDirectory()
        try VFFNContainer.pack(Checkpoint(path: Fixtures.path("mistral-f16")), to: dir + "/m.vffn", compress: true)
        let c = try Checkpoint(path: dir + "/m.vffn")
        #expect(c.configPath == dir + "/m.vffn")
        #expect(c.safetensorsName(of: c.shards[0]) == "model.safetensors")
    }

    // MARK: malformed containers

    /// A valid container to break.
    func container() throws -> String {
        let path = makeTemporaryDirectory() + "/c.vffn"
        try VFFNContainer.pack(Checkpoint(path: Fixtures.path("mistral-f16")), to: path)
        return path
    }

    func expectError(_ path: String, _ message: String, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            let c = try VFFNContainer(path: path)
            for t in c.tensors { _ = try c.bytes(t) }
            Issue.record("read without error", sourceLocation: sourceLocation)
        } catch {
            #expect(error.description == path + ": " + message, sourceLocation: sourceLocation)
        }
    }

    /// Replaces the header JSON, padded to its old length so every offset stays valid.
    func rewriteHeader(_ path: String, _ edit: (String) -> String) {
        var bytes = Array(FileManager.default.contents(atPath: path)!)
        let n = Int(bytes[16..<24].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.1) << (8 * UInt64($1.0)) })
        let old = String(decoding: bytes[24..<24 + n], as: UTF8.self).trimmingCharacters(in: .whitespaces)
        var new = Array(edit(old).utf8)
        precondition(new.count <= n, "edited header is longer than the original")
        new += [UInt8](repeating: 0x20, count: n - new.count)
        bytes.replaceSubrange(24..<24 + n, with: new)
        writeFile(path, bytes)
    }

    func patch(_ path: String, at offset: Int, _ new: [UInt8]) {
        var bytes = Array(FileManager.default.contents(atPath: path)!)
        bytes.replaceSubrange(offset..<offset + new.count, with: new)
        writeFile(path, bytes)
    }

    @Test func corruptTensorByteIsReportedWithItsName() throws {
        let path = try container()
        let c = try VFFNContainer(path: path)
        let i = try #require(c.tensors.firstIndex { $0.name == "model.layers.1.mlp.up_proj.weight" })
        let e = c.tensorEntries[i]
        let original = Array(FileManager.default.contents(atPath: path)!)[e.offset + 100]
        patch(path, at: e.offset + 100, [original ^ 0x01])
        let broken = try VFFNContainer(path: path)
        // Other tensors still read; the corrupt one never does.
        #expect(throws: Never.self) { try broken.bytes(broken.info("model.norm.weight")!) }
        #expect { try broken.bytes(broken.info("model.layers.1.mlp.up_proj.weight")!) } throws: { e in
            (e as? VFFNError)?.description.contains("tensor \"model.layers.1.mlp.up_proj.weight\" is corrupt: CRC32 0x") == true
        }
        // And a conversion from it fails, leaving nothing behind.
        let dst = (path as NSString).deletingLastPathComponent + "/dst"
        #expect(throws: VFFNError.self) { try VFFNContainer(path: path).unpack(to: dst) }
        #expect(!FileManager.default.fileExists(atPath: dst))
    }

    @Test func corruptDeflatedEntryIsReported() throws {
        let path = makeTemporaryDirectory() + "/c.vffn"
        try VFFNContainer.pack(Checkpoint(path: Fixtures.path("mistral-f16")), to: path, compress: true)
        let c = try VFFNContainer(path: path)
        let i = c.tensors.firstIndex { $0.name == "model.embed_tokens.weight" }!
        patch(path, at: c.tensorEntries[i].offset + 10, [0xFF, 0x00, 0xFF])
        expectError(path, "tensor \"model.embed_tokens.weight\" is corrupt: CRC32 \(hexCRC(path, i)) of its \(c.tensorEntries[i].storedLength) stored bytes, expected \(hex(c.tensorEntries[i].crc32))")
    }

    func hexCRC(_ path: String, _ i: Int) -> String {
        let c = try! VFFNContainer(path: path)
        let e = c.tensorEntries[i]
        let bytes = Array(FileManager.default.contents(atPath: path)!)[e.offset..<e.offset + e.storedLength]
        return hex(crc32(Array(bytes)))
    }

    func hex(_ v: UInt32) -> String {
        let s = String(v, radix: 16)
        return "0x" + String(repeating: "0", count: 8 - s.count) + s
    }

    @Test func storedChecksumsAreStandardCRC32() throws {
        let path = try container()
        let c = try VFFNContainer(path: path)
        let data = Array(FileManager.default.contents(atPath: path)!)
        for e in c.tensorEntries + c.files {
            #expect(crc32(Array(data[e.offset..<e.offset + e.storedLength])) == e.crc32, "\(e.name)")
            #expect(e.offset % 64 == 0)
        }
        #expect(crc32(Array("123456789".utf8)) == 0xCBF4_3926)
    }

    @Test func malformedPreambles() throws {
        let dir = makeTemporaryDirectory()
        let good = Array(FileManager.default.contents(atPath: try container())!)
        func write(_ name: String, _ bytes: [UInt8]) -> String { writeFile(dir + "/" + name, bytes); return dir + "/" + name }
        expectError(write("empty.vffn", []), "truncated: 0 bytes, too short for the 24-byte .vffn preamble")
        expectError(write("short.vffn", Array(good.prefix(20))), "truncated: 20 bytes, too short for the 24-byte .vffn preamble")
        var v2 = good; v2[8] = 2
        expectError(write("v2.vffn", v2), ".vffn version 2 is not supported (this tool reads version 1)")
        var flags = good; flags[12] = 1
        expectError(write("flags.vffn", flags), ".vffn flags 1 are not understood (expected 0)")
        var huge = good; huge.replaceSubrange(16..<24, with: [0, 0, 0, 0, 1, 0, 0, 0])
        expectError(write("huge.vffn", huge), ".vffn header length 4294967296 is outside 1...100000000")
        let truncated = Array(good.prefix(200))
        expectError(write("trunc.vffn", truncated), ".vffn header length \(good[16..<24].enumerated().reduce(0) { $0 | Int($1.1) << (8 * $1.0) }) runs past the end of the 200-byte file (truncated?)")
        let cut = Array(good.prefix(good.count - 1000))
        let path = write("cut.vffn", cut)
        do { _ = try VFFNContainer(path: path); Issue.record("read a truncated container") } catch {
            #expect(error.description.contains("run past the end of the \(cut.count)-byte file (truncated?)"))
        }
    }

    @Test func malformedHeaders() throws {
        var path = try container()
        rewriteHeader(path) { _ in "{\"config\": {}, \"tensors\": [" }
        do { _ = try VFFNContainer(path: path); Issue.record("accepted a cut header") } catch {
            #expect(error.description.contains(".vffn header is not valid JSON: the header ends inside the JSON object"))
        }
        path = try container()
        rewriteHeader(path) { _ in "[1, 2]" }
        expectError(path, ".vffn header is not a JSON object")
        path = try container()
        rewriteHeader(path) { $0.replacingOccurrences(of: "\"config\":", with: "\"konfig\":") }
        expectError(path, ".vffn header has no \"config\" object")
        path = try container()
        rewriteHeader(path) { $0.replacingOccurrences(of: "\"dtype\":\"F16\"", with: "\"dtype\":\"F17\"") }
        do { _ = try VFFNContainer(path: path); Issue.record("accepted F17") } catch { #expect(error.description.contains("unknown dtype \"F17\"")) }
        path = try container()
        rewriteHeader(path) { $0.replacingOccurrences(of: "\"shape\":[256,32]", with: "\"shape\":[256,33]") }
        do { _ = try VFFNContainer(path: path); Issue.record("accepted a wrong shape") } catch {
            #expect(error.description.contains("shape [256, 33] of F16 needs 16896 bytes but the entry holds 16384"))
        }
        path = try container()
        rewriteHeader(path) { $0.replacingOccurrences(of: "\"shape\":[256,32]", with: "\"shape\":[4294967296,4294967296]") }
        do { _ = try VFFNContainer(path: path); Issue.record("accepted an overflowing shape") } catch { #expect(error.description.contains("overflows 64 bits")) }
        path = try container()
        rewriteHeader(path) { $0.replacingOccurrences(of: "\"encoding\":\"raw\"", with: "\"encoding\":\"lzma\"") }
        do { _ = try VFFNContainer(path: path); Issue.record("accepted lzma") } catch { #expect(error.description.contains("encoding must be \"raw\" or \"deflate\"")) }
        path = try container()
        rewriteHeader(path) { $0.replacingOccurrences(of: "\"name\":\"README.md\"", with: "\"name\":\"../README.md\"") }
        expectError(path, ".vffn file \"../README.md\" would be written outside the checkpoint directory")
    }

    @Test func offsetsThatOverlapOrMisalign() throws {
        let path = try container()
        let c = try VFFNContainer(path: path)
        let a = c.tensorEntries[0], b = c.tensorEntries[1]
        rewriteHeader(path) { $0.replacingOccurrences(of: "\"offset\":\(b.offset),", with: "\"offset\":\(a.offset),") }
        do { _ = try VFFNContainer(path: path); Issue.record("accepted overlapping entries") } catch {
            #expect(error.description.contains("overlap"))
        }
        let odd = try container()
        rewriteHeader(odd) { $0.replacingOccurrences(of: "\"offset\":\(b.offset),", with: "\"offset\":\(b.offset + 8),") }
        do { _ = try VFFNContainer(path: odd); Issue.record("accepted a misaligned entry") } catch {
            #expect(error.description.contains("offset \(b.offset + 8) is not a multiple of 64 after the header"))
        }
    }

    @Test func deflateClaimsThatCannotBeTrue() throws {
        let path = makeTemporaryDirectory() + "/c.vffn"
        try VFFNContainer.pack(Checkpoint(path: Fixtures.path("mistral-f16")), to: path, compress: true)
        let c = try VFFNContainer(path: path)
        let e = c.tensorEntries.first { $0.name == "model.norm.weight" }!
        // A declared length far beyond what deflate can produce from the stored bytes.
        rewriteHeader(path) { $0.replacingOccurrences(of: "\"stored_length\":\(e.storedLength),\"length\":\(e.length)", with: "\"stored_length\":\(e.storedLength),\"length\":\(e.length * 100000)") }
        do { _ = try VFFNContainer(path: path); Issue.record("accepted an impossible length") } catch {
            #expect(error.description.contains("deflate length \(e.length * 100000) from \(e.storedLength) stored bytes is impossible"))
        }
    }
}

import Foundation
import Testing
import TestSupport
import VFFNFormats

@Suite struct CheckpointTests {
    @Test func opensShardedCheckpointThroughItsIndex() throws {
        let c = try Checkpoint(path: Fixtures.path("llama-gqa-sharded"))
        #expect(c.isSharded)
        #expect(c.shards.count == 4)
        #expect(c.tensorNames.count == 21)
        #expect(c.info("lm_head.weight")!.shape == [256, 32])
        #expect((c.shard(of: "lm_head.weight")!.path as NSString).lastPathComponent == "model-00004-of-00004.safetensors")
        #expect(c.auxiliaryFiles() == ["README.md", "generation_config.json"])
    }

    /// A copy of the sharded fixture whose index is rewritten by `edit`.
    func shardedCopy(editIndex edit: (inout String) -> Void) throws -> String {
        let dir = makeTemporaryDirectory() + "/ckpt"
        try copyDirectory(Fixtures.path("llama-gqa-sharded"), to: dir)
        let indexPath = dir + "/" + Checkpoint.indexName
        var text = try String(contentsOfFile: indexPath, encoding: .utf8)
        edit(&text)
        writeFile(indexPath, text)
        return dir
    }

    func expectBadInput(_ dir: String, _ message: String, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try Checkpoint(path: dir)
            Issue.record("accepted", sourceLocation: sourceLocation)
        } catch {
            #expect(error.description.contains(message), "\(error)", sourceLocation: sourceLocation)
            #expect(error.kind == .badInput, sourceLocation: sourceLocation)
        }
    }

    @Test func indexNamingAMissingShard() throws {
        let dir = try shardedCopy { $0 = $0.replacingOccurrences(of: "\"lm_head.weight\": \"model-00004-of-00004.safetensors\"", with: "\"lm_head.weight\": \"model-00009-of-00009.safetensors\"") }
        expectBadInput(dir, "names shard \"model-00009-of-00009.safetensors\", which does not exist")
    }

    @Test func indexRoutingATensorToTheWrongShard() throws {
        let dir = try shardedCopy { $0 = $0.replacingOccurrences(of: "\"model.embed_tokens.weight\": \"model-00001-of-00004.safetensors\"", with: "\"model.embed_tokens.weight\": \"model-00002-of-00004.safetensors\"") }
        expectBadInput(dir, "routes \"model.embed_tokens.weight\" to model-00002-of-00004.safetensors but it is in model-00001-of-00004.safetensors")
    }

    @Test func indexListingATensorNoShardHolds() throws {
        let dir = try shardedCopy { $0 = $0.replacingOccurrences(of: "\"weight_map\": {", with: "\"weight_map\": {\n    \"ghost.weight\": \"model-00001-of-00004.safetensors\",") }
        expectBadInput(dir, "lists tensor \"ghost.weight\" but no shard holds it")
    }

    @Test func indexLeavingATensorOut() throws {
        let dir = try shardedCopy { $0 = $0.replacingOccurrences(of: "    \"model.embed_tokens.weight\": \"model-00001-of-00004.safetensors\",\n", with: "") }
        expectBadInput(dir, "does not list tensor \"model.embed_tokens.weight\" of model-00001-of-00004.safetensors")
    }

    @Test func indexEscapingTheDirectory() throws {
        let dir = try shardedCopy { $0 = $0.replacingOccurrences(of: "\"lm_head.weight\": \"model-00004-of-00004.safetensors\"", with: "\"lm_head.weight\": \"../model-00004-of-00004.safetensors\"") }
        expectBadInput(dir, "names \"../model-00004-of-00004.safetensors\", outside the checkpoint directory")
    }

    @Test func indexThatIsNotJSONOrLacksWeightMap() throws {
        expectBadInput(try shardedCopy { $0 = String($0.dropLast(5)) }, "model.safetensors.index.json: is not valid JSON")
        expectBadInput(try shardedCopy { $0 = "{\"metadata\": {}}" }, "has no \"weight_map\" object")
    }

    @Test func tensorInTwoShards() throws {
        let dir = makeTemporaryDirectory()
        writeFile(dir + "/config.json", "{}")
        let t = safetensorsBytes(header: #"{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#, data: [1])
        writeFile(dir + "/a.safetensors", t)
        writeFile(dir + "/b.safetensors", t)
        writeFile(dir + "/" + Checkpoint.indexName, #"{"weight_map":{"x":"a.safetensors","y":"b.safetensors"}}"#)
        expectBadInput(dir, "tensor \"x\" is also in a.safetensors; ambiguous checkpoint")
    }

    @Test func missingOrMalformedConfigAndDirectory() throws {
        expectBadInput("/nonexistent/model", "/nonexistent/model: no such file or directory")
        expectBadInput(Fixtures.path("qwen2-bf16-tied/model.safetensors"), "is a single safetensors file; give the checkpoint directory that holds it and config.json")
        let dir = makeTemporaryDirectory()
        let other = makeTemporaryDirectory()
        writeFile(other + "/config.json", "{\"model_type\": \"llama\"}")
        expectBadInput(other + "/config.json", "is a JSON file, not a checkpoint; pass the directory that holds it")
        writeFile(other + "/README.md", "# a model card\n")
        expectBadInput(other + "/README.md", "is a text file, not a checkpoint")
        writeFile(other + "/empty.safetensors", "")
        expectBadInput(other + "/empty.safetensors", "is empty (0 bytes), not a checkpoint")
        writeFile(other + "/logits.npy", NPY.encode([1, 2], shape: [2]))
        expectBadInput(other + "/logits.npy", "is a .npy array (what run writes), not a checkpoint")
        expectBadInput(dir, "is an empty directory, not a checkpoint (no config.json)")
        writeFile(dir + "/notes.txt", "x")
        expectBadInput(dir, "has no config.json, so it is not a Hugging Face checkpoint directory")
        writeFile(dir + "/config.json", "{\"model_type\": llama}")
        expectBadInput(dir, "config.json: is not valid JSON: unexpected character 'l' at byte 15")
        writeFile(dir + "/config.json", "[]")
        expectBadInput(dir, "config.json: is not a JSON object")
        writeFile(dir + "/config.json", "{}")
        expectBadInput(dir, "no model.safetensors, pytorch_model.bin or index in the directory")
    }
}

@Suite struct NPYTests {
    @Test func headerIsPaddedTo64AndDecodes() throws {
        let bytes = NPY.encode([1, 2, 3, 4, 5, 6], shape: [2, 3])
        #expect(Array(bytes[0..<8]) == [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 1, 0])
        let headerLength = Int(bytes[8]) | Int(bytes[9]) << 8
        #expect((10 + headerLength) % 64 == 0)
        #expect(bytes[10 + headerLength - 1] == 0x0A)
        #expect(String(decoding: bytes[10..<10 + headerLength], as: UTF8.self).hasPrefix("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"))
        let (values, shape) = try NPY.decode(bytes)
        #expect(values == [1, 2, 3, 4, 5, 6] && shape == [2, 3])
        #expect(String(decoding: NPY.encode([1], shape: [1])[10..<80], as: UTF8.self).contains("'shape': (1,)"))
    }

    @Test func readsNumpyWrittenGolden() throws {
        let (values, shape) = try Fixtures.golden("mistral-f16-dense-logits.npy")
        #expect(shape == [12, 256])
        #expect(values.count == 12 * 256 && values.allSatisfy(\.isFinite))
    }

    @Test func rejectsWhatItCannotRead() {
        #expect(throws: VFFNError.self) { try NPY.decode([1, 2, 3]) }
        var truncated = NPY.encode([1, 2], shape: [2])
        truncated.removeLast()
        #expect(throws: VFFNError.self) { try NPY.decode(truncated) }
    }
}

@Suite struct AtomicOutputTests {
    @Test func publishesOnlyOnCommitAndNeverOverwritesUnasked() throws {
        let dir = makeTemporaryDirectory()
        let dest = dir + "/out"
        do {
            let out = try AtomicOutput(destination: dest, kind: .directory, force: false)
            writeFile(out.temporary + "/f", "partial")
            #expect(!FileManager.default.fileExists(atPath: dest))
            // Dropped without commit: as if an error was thrown half way.
        }
        #expect(!FileManager.default.fileExists(atPath: dest))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)

        let out = try AtomicOutput(destination: dest, kind: .directory, force: false)
        writeFile(out.temporary + "/f", "one")
        try out.commit()
        #expect(try String(contentsOfFile: dest + "/f", encoding: .utf8) == "one")

        #expect(throws: VFFNError.self) { try AtomicOutput(destination: dest, kind: .directory, force: false) }
        let again = try AtomicOutput(destination: dest, kind: .directory, force: true)
        writeFile(again.temporary + "/g", "two")
        try again.commit()
        #expect(try FileManager.default.contentsOfDirectory(atPath: dest).sorted() == [AtomicOutput.markerName, "g"])
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["out"])
    }

    @Test func removesTemporariesOfDeadRuns() throws {
        let dir = makeTemporaryDirectory()
        // Process ids are below 2^22 on Linux, so this one cannot be running.
        let stale = dir + "/.out.partial-99999999"
        try FileManager.default.createDirectory(atPath: stale, withIntermediateDirectories: false)
        let out = try AtomicOutput(destination: dir + "/out", kind: .directory, force: false)
        #expect(!FileManager.default.fileExists(atPath: stale))
        out.abandon()
    }
}

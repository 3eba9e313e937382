import Foundation
import Testing
import TestSupport
import VFFNFormats

/// The CLI's contract with users and scripts (issue 22): any output path works or is refused
/// without touching anything; every error is one line with its exit code; scripting flags.
@Suite struct CLIContractTests {
    struct Outcome {
        let status: Int32
        /// Killed by a signal (a trap or an abort) rather than exited.
        let signaled: Bool
        let stdout: [UInt8]
        let stderr: String
        var text: String { String(decoding: stdout, as: UTF8.self) }
    }

    /// Runs the executable in `cwd`, so that relative output paths land in a scratch directory.
    func cli(_ args: [String], in cwd: String? = nil) throws -> Outcome {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Fixtures.executable)
        p.arguments = args
        if let cwd { p.currentDirectoryURL = URL(fileURLWithPath: cwd) }
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        // Both pipes drained at once: a large stdout must not block the child on a full stderr.
        let collected = Collected()
        let reader = Thread { collected.set(err.fileHandleForReading.readDataToEndOfFile()) }
        reader.start()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Outcome(status: p.terminationStatus, signaled: p.terminationReason == .uncaughtSignal, stdout: Array(o),
                       stderr: String(decoding: collected.wait(), as: UTF8.self))
    }

    let llama = Fixtures.path("llama-gqa-sharded")
    let tokens = "1,5,17,42"

    /// One line, `vffn-convert: error: ...`, with the exit code of its kind.
    func expectError(_ o: Outcome, _ code: Int32, _ message: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(o.status == code && !o.signaled, "status \(o.status): \(o.stderr)", sourceLocation: sourceLocation)
        #expect(o.stderr.hasPrefix("vffn-convert: error: ") && o.stderr.hasSuffix("\n") && o.stderr.dropLast().firstIndex(of: "\n") == nil,
                "not one error line: \(o.stderr)", sourceLocation: sourceLocation)
        #expect(o.stderr.contains(message), "\(o.stderr)", sourceLocation: sourceLocation)
    }

    /// The issue's crashes: one-character and relative outputs of every writer.
    @Test func oneCharacterRelativeOutputsOfEveryWriter() throws {
        let dir = makeTemporaryDirectory()
        #expect(try cli(["run", llama, "--tokens", tokens, "--out", "a"], in: dir).status == 0)
        #expect(try cli(["convert", llama, "c", "--quiet"], in: dir).status == 0)
        #expect(try cli(["pack", llama, "p", "--quiet"], in: dir).status == 0)
        #expect(try cli(["unpack", "p", "u", "--quiet"], in: dir).status == 0)
        #expect(try cli(["convert", llama, "v", "--output-format", "vffn", "--quiet"], in: dir).status == 0)
        #expect(try cli(["convert", llama, "o", "--output-format", "olmo", "--quiet"], in: dir).status == 0)
        let listing = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
        #expect(listing == ["a", "c", "o", "p", "u", "v"])
        let (values, shape) = try NPY.decode(Array(FileManager.default.contents(atPath: dir + "/a")!))
        #expect(shape == [4, 256] && values.allSatisfy(\.isFinite))
        // Names with spaces and non-ASCII letters, in parents that do not exist yet.
        #expect(try cli(["run", llama, "--tokens", tokens, "--out", "new dir/ü ñ/logits é.npy", "--quiet"], in: dir).status == 0)
        #expect(FileManager.default.fileExists(atPath: dir + "/new dir/ü ñ/logits é.npy"))
        // The README's first example, where out/ does not exist.
        let c = try cli(["convert", llama, "out/llama-vffn", "--experts", "8", "--top-k", "2", "--max-depth", "4"], in: dir)
        #expect(c.status == 0, "\(c.stderr)")
        #expect(try cli(["verify", "out/llama-vffn", "--source", llama, "--quiet"], in: dir).status == 0)
    }

    /// Refusals of the issue's destructive cases: each leaves every file where it was.
    @Test func refusalsLeaveTheFileSystemAsItWas() throws {
        let dir = makeTemporaryDirectory()
        try FileManager.default.createDirectory(atPath: dir + "/sand/results", withIntermediateDirectories: true)
        writeFile(dir + "/sand/results/notes.md", "a user's notes")
        #expect(try cli(["convert", llama, "out/first", "--quiet"], in: dir).status == 0)
        writeFile(dir + "/logits.npy", "old")
        let before = fileTree(dir)
        for (args, code, message) in [
            (["run", llama, "--tokens", tokens, "--out", "sand/results/"], 64, "sand/results/ ends in /, so it names a directory"),
            (["run", llama, "--tokens", tokens, "--out", "sand/results", "--force"], 64, "sand/results is a directory, but this output is one file"),
            (["run", llama, "--tokens", tokens, "--out", "logits.npy"], 64, "logits.npy already exists (a file of 3 bytes); pass --force to replace it"),
            (["run", llama, "--tokens", tokens, "--out", "q/"], 64, "q/ ends in /"),
            (["convert", llama, "out/", "--force"], 64, "out/ is a directory of 1 entry (first) that vffn-convert did not write; it is never replaced"),
            (["convert", llama, "sand", "--force"], 64, "sand is a directory of 1 entry (results) that vffn-convert did not write"),
            (["convert", llama, ".", "--force"], 64, ". names an existing directory itself"),
            (["convert", llama, "out/first"], 64, "out/first already exists (written by vffn-convert); pass --force to replace it"),
            (["convert", llama, llama, "--force"], 64, "overlaps the input"),
            (["convert", llama, "logits.npy/x"], 64, "logits.npy is a file, not a directory"),
            (["convert", llama, "-"], 64, "- (stdout) takes one file: add --output-format vffn"),
            (["unpack", "logits.npy", "u"], 65, "logits.npy: is 3 bytes long, too short to be a checkpoint"),
            (["unpack", "sand", "u"], 65, "sand: is a directory; give a .vffn file"),
        ] as [([String], Int32, String)] {
            expectError(try cli(args, in: dir), code, message)
            #expect(fileTree(dir) == before, "\(args) changed the file system")
        }
        // What it wrote itself, it replaces with --force.
        #expect(try cli(["convert", llama, "out/first", "--force", "--quiet"], in: dir).status == 0)
        #expect(try cli(["run", llama, "--tokens", tokens, "--out", "logits.npy", "--force", "--quiet"], in: dir).status == 0)
        #expect(try String(contentsOfFile: dir + "/sand/results/notes.md", encoding: .utf8) == "a user's notes")
    }

    /// `-` and /dev/stdout stream into the pipe; a symlink's target is written, the link kept.
    @Test func stdoutAndSymlinkOutputs() throws {
        let dir = makeTemporaryDirectory()
        #expect(try cli(["run", llama, "--tokens", tokens, "--out", dir + "/ref.npy", "--quiet"]).status == 0)
        let reference = Array(FileManager.default.contents(atPath: dir + "/ref.npy")!)
        for out in ["-", "/dev/stdout"] {
            let r = try cli(["run", llama, "--tokens", tokens, "--out", out], in: dir)
            #expect(r.status == 0, "\(r.stderr)")
            #expect(r.stdout == reference)
            #expect(r.stderr.hasPrefix("wrote "))
        }
        let p = try cli(["pack", llama, "-"], in: dir)
        #expect(p.status == 0 && p.stderr.hasPrefix("packed "), "the summary goes to stderr when the container goes to stdout")
        #expect(try cli(["pack", llama, dir + "/ref.vffn", "--quiet"]).status == 0)
        #expect(p.stdout == Array(FileManager.default.contents(atPath: dir + "/ref.vffn")!))
        let v = try cli(["convert", llama, "-", "--output-format", "vffn"], in: dir)
        #expect(v.status == 0 && v.stdout.starts(with: VFFNContainer.magic) && v.stderr.contains("converted"))

        try FileManager.default.createSymbolicLink(atPath: dir + "/link.npy", withDestinationPath: "ref.npy")
        expectError(try cli(["run", llama, "--tokens", "1", "--out", "link.npy"], in: dir), 64, "link.npy already exists")
        #expect(try cli(["run", llama, "--tokens", "1", "--out", "link.npy", "--force", "--quiet"], in: dir).status == 0)
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: dir + "/link.npy") == "ref.npy")
        #expect(try NPY.decode(Array(FileManager.default.contents(atPath: dir + "/ref.npy")!)).shape == [1, 256])
        #expect(try cli(["run", llama, "--tokens", tokens, "--out", "/dev/null", "--quiet"]).status == 0)

        // Process substitution: /dev/fd/63 links to "pipe:[N]", written through unresolved.
        let bash = Process()
        bash.executableURL = URL(fileURLWithPath: "/bin/bash")
        bash.arguments = ["-c", "'\(Fixtures.executable)' pack '\(llama)' >(cat > '\(dir)/substituted.vffn') --quiet; status=$?; wait; exit $status"]
        try bash.run()
        bash.waitUntilExit()
        #expect(bash.terminationStatus == 0)
        #expect(FileManager.default.contents(atPath: dir + "/substituted.vffn") == FileManager.default.contents(atPath: dir + "/ref.vffn"))
    }

    /// Binary output to a terminal is refused: `script` gives the child one as stdout.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/script")))
    func binaryIsNotWrittenToATerminal() throws {
        let dir = makeTemporaryDirectory()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/script")
        p.arguments = ["-qec", "\(Fixtures.executable) run \(llama) --tokens 1 --out -", "/dev/null"]
        p.currentDirectoryURL = URL(fileURLWithPath: dir)
        let pipe = Pipe()
        p.standardOutput = pipe
        try p.run()
        let shown = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus == 64)
        #expect(shown.contains("vffn-convert: error: stdout is a terminal; redirect it to a file or a pipe, or give a file name"), "\(shown)")
        #expect(!shown.contains("NUMPY"))
    }

    /// Bounds come before allocation: a huge D or token count is a usage error, not an abort.
    @Test func boundsBeforeAllocation() throws {
        let dir = makeTemporaryDirectory()
        for (args, message) in [
            (["convert", llama, "x", "--max-depth", "1000000000"], "--max-depth 1000000000 is more than 256 loops"),
            (["convert", llama, "x", "--max-depth", "100000"], "--max-depth 100000 is more than 256 loops"),
            (["convert", llama, "x", "--experts", "-8"], "--experts must be at least 1 (got -8)"),
            (["convert", llama, "x", "--experts", "1000000000000"], "--experts 1000000000000 is more than the FFN's 64 neurons"),
            (["convert", llama, "x", "--top-k", "0"], "--top-k must be at least 1 (got 0)"),
            (["convert", llama, "x", "--max-depth", "-1"], "--max-depth must be at least 1 (got -1)"),
            (["convert", llama, "x", "--seed", "-1"], "a seed is a whole number from 0 to 18446744073709551615, not -1"),
            (["convert", llama, "x", "--experts", "99999999999999999999999"], "'99999999999999999999999' is invalid for '--experts"),
            (["run", llama, "--tokens", "1,256", "--out", "x.npy"], "token id 256 is outside the vocabulary [0, 256)"),
            (["run", llama, "--tokens", "-3", "--out", "x.npy"], "--tokens: token 1 is \"-3\""),
            (["run", llama, "--tokens", "", "--out", "x.npy"], "--tokens: no token ids"),
            (["run", llama, "--out", "x.npy"], "give what to run: --tokens 5,17,42, --tokens-file FILE, --text S or --text-file FILE"),
            (["verify", llama, "--tokens", "1,2", "--tokens-file", "t"], "give one of --tokens, --tokens-file, --text and --text-file, not --tokens and --tokens-file"),
        ] as [([String], String)] {
            expectError(try cli(args, in: dir), 64, message)
        }
        // 200 000 tokens: [T, T] attention scores alone are 160 GB, refused before allocating.
        writeFile(dir + "/many.txt", Array(repeating: "1", count: 200_000).joined(separator: "\n"))
        expectError(try cli(["run", llama, "--tokens-file", "many.txt", "--out", "x.npy"], in: dir), 64,
                    "200000 tokens need about 160 GB for this model's activations and attention scores")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["many.txt"])
        // A token file too large to hold ids we would run is refused before it is read whole.
        FileManager.default.createFile(atPath: dir + "/huge.txt", contents: nil)
        #expect(truncate(dir + "/huge.txt", 64 << 20) == 0)
        expectError(try cli(["run", llama, "--tokens-file", "huge.txt", "--out", "x.npy"], in: dir), 65, "huge.txt: is larger than 25 MB")
        try FileManager.default.removeItem(atPath: dir + "/huge.txt")
        // Legal but degenerate: one warning line each, and the conversion goes on.
        let w = try cli(["convert", llama, "w", "--experts", "2", "--top-k", "2", "--max-depth", "20", "--dry-run"], in: dir)
        #expect(w.status == 0)
        #expect(w.stderr == "vffn-convert: warning: top-k 2 = 2 sub-experts: every token uses every slice, so the router only reweights them\n"
                + "vffn-convert: warning: max depth 20: up to 20 FFN passes per token, far beyond the paper's settings\n")
        let one = try cli(["convert", llama, "w", "--experts", "1", "--top-k", "1", "--dry-run", "--quiet"], in: dir)
        #expect(one.status == 0 && one.stderr.isEmpty && one.stdout.isEmpty)
    }

    /// Random argument lists built from real option names and hostile values: whatever comes,
    /// the process exits with a code of the contract and at most one error line, never a trap.
    @Test func randomArgumentsNeverCrash() throws {
        let dir = makeTemporaryDirectory()
        let commands = ["convert", "verify", "run", "inspect", "stats", "pack", "unpack", "help", "convrt", ""]
        let options = ["--experts", "--top-k", "--max-depth", "--seed", "--split", "--router-init", "--depth-init", "--calibration",
                       "--depth-target", "--output-format", "--tokens", "--tokens-file", "--out", "--source", "--filter", "--force",
                       "--quiet", "--json", "--dense", "--dry-run", "--compress", "--emit-modeling", "--no-fsync", "--version", "-q", "--bogus"]
        let values = ["-8", "0", "1", "2", "3", "65", "1000000000", "9223372036854775807", "-9223372036854775808", "18446744073709551616",
                      "1e9", "0x10", "", " ", "-", "--", ".", "/", "a", "x/", "ü", "1,2,3", "1,,2", "0.4,0.3,0.2,0.1", "nan", "cluster",
                      "centroid", "calibrated", "vffn", "olmo", "onnx", llama, Fixtures.path("llama-gqa-vffn"),
                      "q8.gguf", "config.json", "/dev/null", "nonexistent"]
        // Files a random command may read or, with --force, replace: copies, never the fixtures.
        try FileManager.default.copyItem(atPath: Fixtures.path("gguf/llama-gqa-q8_0.gguf"), toPath: dir + "/q8.gguf")
        try FileManager.default.copyItem(atPath: llama + "/config.json", toPath: dir + "/config.json")
        let fixturesBefore = fileTree(Fixtures.path(""))
        var rng = SplitMix(seed: 22)
        for _ in 0..<120 {
            var args = [commands[rng.below(commands.count)]].filter { !$0.isEmpty }
            for _ in 0..<rng.below(7) {
                switch rng.below(3) {
                case 0: args.append(options[rng.below(options.count)])
                case 1: args.append(values[rng.below(values.count)])
                default: args += [options[rng.below(options.count)], values[rng.below(values.count)]]
                }
            }
            let o = try cli(args, in: dir)
            #expect(!o.signaled && [0, 1, 64, 65, 74].contains(o.status), "\(args): status \(o.status), \(o.stderr)")
            if o.status >= 64 {
                let lines = o.stderr.split(separator: "\n").filter { !$0.hasPrefix("vffn-convert: warning: ") }
                // The bare command prints its help (exit 64); everything else is one error line.
                if !args.isEmpty {
                    #expect(lines.count == 1 && lines[0].hasPrefix("vffn-convert: error: "), "\(args): \(o.stderr)")
                }
            }
        }
        #expect(fileTree(Fixtures.path("")) == fixturesBefore)
    }

    @Test func oneErrorContract() throws {
        expectError(try cli(["conver", llama, "x"]), 64, "unknown command 'conver'; did you mean 'convert'?")
        expectError(try cli(["frobnicate"]), 64, "unknown command 'frobnicate'; the commands are convert, verify, run, stats, tokenize, strip, inspect, pack, unpack")
        expectError(try cli(["convert", llama]), 64, "missing expected argument '<destination>' (see: vffn-convert help convert)")
        expectError(try cli(["inspect", llama, "--bogus"]), 64, "unknown option '--bogus' (see: vffn-convert help inspect)")
        expectError(try cli(["convert", llama + "/config.json", "x"]), 65, "config.json: is a JSON file, not a checkpoint; pass the directory that holds it")
        expectError(try cli(["convert", Fixtures.path("goldens"), "x"]), 65, "has no config.json, so it is not a Hugging Face checkpoint directory")
        let bare = try cli([])
        #expect(bare.status == 64 && bare.stderr.contains("SUBCOMMANDS"))
        let v = try cli(["--version"])
        #expect(v.status == 0 && v.text.range(of: #"^\d+\.\d+\.\d+\n$"#, options: .regularExpression) != nil, "\(v.text)")
        let completion = try cli(["--generate-completion-script", "bash"])
        #expect(completion.status == 0 && completion.text.contains("_vffn-convert"))
        let help = try cli(["--help"])
        #expect(help.status == 0 && help.text.contains("Exit codes: 0 success; 1 verification failed; 64 usage error"))
    }

    /// Every command takes --quiet: nothing on stdout or stderr, the exit code tells.
    @Test func quietEverywhere() throws {
        let dir = makeTemporaryDirectory()
        let vffn = Fixtures.path("llama-gqa-vffn")
        for args in [["convert", llama, "c"], ["verify", vffn], ["run", vffn, "--tokens", tokens, "--out", "r.npy"], ["inspect", vffn],
                     ["stats", vffn], ["pack", llama, "p.vffn"], ["unpack", "p.vffn", "u"]] {
            let o = try cli(args + ["--quiet"], in: dir)
            #expect(o.status == 0 && o.stdout.isEmpty && o.stderr.isEmpty, "\(args): \(o.stderr)")
        }
        let failing = try cli(["verify", dir + "/c", "--source", Fixtures.path("mistral-f16"), "-q"])
        #expect(failing.status == 1 && failing.stdout.isEmpty)
    }

    /// --json carries what the tables show, for verify, stats and inspect.
    @Test func jsonForScripts() throws {
        let dir = makeTemporaryDirectory()
        #expect(try cli(["convert", llama, dir + "/c", "--experts", "32", "--top-k", "3", "--max-depth", "12", "--quiet"]).status == 0)
        let v = try cli(["verify", dir + "/c", "--source", llama, "--json"])
        #expect(v.status == 0, "\(v.stderr)")
        let report = try JSON.parse(v.stdout)
        #expect(report["passed"]?.boolValue == true && report["num_experts"]?.intValue == 32 && report["max_depth"]?.intValue == 12)
        let checks = try #require(report["checks"]?.arrayValue)
        #expect(checks.contains { $0["name"]?.stringValue == "dense tensors bit-identical" && $0["passed"]?.boolValue == true })
        let layers = try #require(report["layers"]?.arrayValue)
        #expect(layers.count == 2)
        #expect(layers[0]["depth_histogram"]?.arrayValue?.count == 12)
        #expect(layers[0]["expert_load"]?.arrayValue?.compactMap(\.intValue).reduce(0, +) == 32 * 3)
        #expect(layers[0]["dense_equivalence_max_abs"]?.doubleValue == 0)

        // The table shows every one of 32 loads and 12 depth bins (issue 22: stats cut them).
        let s = try cli(["stats", dir + "/c"])
        let statsJSON = try JSON.parse(try cli(["stats", dir + "/c", "--json"]).stdout)
        for layer in try #require(statsJSON["layers"]?.arrayValue) {
            let loads = layer["expert_load"]!.arrayValue!.map { String($0.intValue!) }.joined(separator: " ")
            let depths = layer["depth_histogram"]!.arrayValue!.map { String($0.intValue!) }.joined(separator: " ")
            #expect(loads.split(separator: " ").count == 32 && depths.split(separator: " ").count == 12)
            #expect(s.text.contains(depths) && s.text.contains(loads), "\(s.text)")
        }
        #expect(statsJSON["mean_energy_captured"]?.doubleValue != nil)

        let i = try JSON.parse(try cli(["inspect", dir + "/c", "--json"]).stdout)
        #expect(i["parameters"]?.intValue == 35_744 + 2 * (32 + 12) * 32 - 2 * (8 + 4) * 32)
        #expect(i["gate_parameters"]?.intValue == 2 * (32 + 12) * 32)
        #expect(i["versatile_ffn"]?["num_experts"]?.intValue == 32)
        #expect(i["tensors"]?.arrayValue?.count == 25)
        #expect(i["dtypes"]?["F32"]?.intValue == 25)
    }

    @Test func inspectFiltersInNaturalOrderAndOpensTheOLMoExport() throws {
        let dir = makeTemporaryDirectory()
        let f = try cli(["inspect", llama, "--filter", "*.mlp.*_proj.weight"])
        let names = f.text.split(separator: "\n").compactMap { $0.split(separator: " ").first.map(String.init) }.filter { $0.contains(".mlp.") }
        #expect(names == ["model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight",
                          "model.layers.1.mlp.down_proj.weight", "model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight"])
        #expect(f.text.contains("6 tensors, 49152 bytes"))
        #expect(try cli(["convert", llama, dir + "/olmo", "--output-format", "olmo", "--quiet"]).status == 0)
        let o = try cli(["inspect", dir + "/olmo"])
        #expect(o.status == 0, "\(o.stderr)")
        #expect(o.text.contains("OLMo export (config.yaml + unsharded model.pt)"))
        #expect(o.text.contains("attention     4 heads, 2 KV heads"))
        #expect(o.text.contains("VersatileFFN  8 sub-experts, top-2, max depth 4"))
        #expect(o.text.contains("transformer.blocks.0.att_proj.weight"))
        // Layers sort as numbers: blocks.10 comes after blocks.9 in a 12-layer listing.
        #expect(try cli(["inspect", Fixtures.path("gguf/llama-gqa-q8_0.gguf"), "--quiet"]).status == 0)
    }

    /// --dry-run makes every check convert makes and writes nothing.
    @Test func dryRunWritesNothing() throws {
        let dir = makeTemporaryDirectory()
        let d = try cli(["convert", llama, "a/b/c", "--split", "cluster", "--dry-run"], in: dir)
        #expect(d.status == 0, "\(d.stderr)")
        #expect(d.text.contains("dry run: would convert"))
        #expect(d.text.contains("15 dense tensors (90752 bytes) copied unchanged, 6 neuron-permuted, 4 gate tensors to add as F32"), "\(d.text)")
        let q8 = try cli(["convert", Fixtures.path("gguf/llama-gqa-q8_0.gguf"), "g", "--dry-run"], in: dir)
        #expect(q8.text.contains("5 dense tensors (640 bytes) copied unchanged, 16 Q8_0 dequantized to F32"), "\(q8.text)")
        expectError(try cli(["convert", Fixtures.path("gpt2-tiny"), "o", "--output-format", "olmo", "--dry-run"], in: dir), 64,
                    "--output-format olmo cannot express model_type gpt2")
        expectError(try cli(["convert", llama, "x", "--experts", "7", "--dry-run"], in: dir), 64, "does not divide")
        #expect(fileTree(dir) == [])
    }
}

/// Reproducible pseudo-random choices for the argument fuzzing.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E3779B97F4A7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) &* 0x94D049BB133111EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}

private final class Collected: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private var data = Data()
    func set(_ d: Data) { data = d; done.signal() }
    func wait() -> Data { done.wait(); return data }
}

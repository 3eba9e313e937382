import Foundation
import Testing
import TestSupport
@testable import VFFNFormats

/// Every kind of path a writer can be given (issue 22): what is created, what is replaced,
/// what is refused, and that a refusal leaves the file system exactly as it was.
@Suite struct OutputPathTests {
    func write(_ out: AtomicOutput, _ text: String) throws {
        let f = try OutputFile(path: out.kind == .directory ? out.temporary + "/f" : out.temporary)
        try f.write(text)
        try f.finish()
    }

    /// Refused with a usage error containing `message`, and nothing on disk changed.
    func expectRefused(_ destination: String, _ kind: AtomicOutput.Kind, force: Bool = false, inputs: [String] = [], in root: String,
                       _ message: String, sourceLocation: SourceLocation = #_sourceLocation) {
        let before = fileTree(root)
        do {
            _ = try AtomicOutput(destination: destination, kind: kind, force: force, inputs: inputs)
            Issue.record("accepted \(destination)", sourceLocation: sourceLocation)
        } catch {
            #expect(error.kind == .usage, "\(error)", sourceLocation: sourceLocation)
            #expect(error.description.contains(message), "\(error)", sourceLocation: sourceLocation)
        }
        #expect(fileTree(root) == before, sourceLocation: sourceLocation)
    }

    @Test func splitsPathsByHand() {
        #expect(AtomicOutput.split("a") == (".", "a"))
        #expect(AtomicOutput.split("a/") == (".", "a"))
        #expect(AtomicOutput.split("/a") == ("/", "a"))
        #expect(AtomicOutput.split("x//y///") == ("x", "y"))
        #expect(AtomicOutput.split("/") == ("/", "/"))
        #expect(AtomicOutput.split("dir/ü ñ.npy") == ("dir", "ü ñ.npy"))
        #expect(AtomicOutput.split(".") == (".", "."))
    }

    @Test func createsMissingParentsAndRemovesThemWhenAbandoned() throws {
        let root = makeTemporaryDirectory()
        do {
            let out = try AtomicOutput(destination: root + "/a/b/c", kind: .directory, force: false)
            #expect(FileManager.default.fileExists(atPath: root + "/a/b"))
            try write(out, "partial")
        }
        #expect(fileTree(root) == [])
        let out = try AtomicOutput(destination: root + "/a/b/c/", kind: .directory, force: false)
        try write(out, "done")
        try out.commit()
        #expect(fileTree(root).contains("a/b/c/f 4 bytes fnv \(fnv("done"))"))
        #expect(FileManager.default.fileExists(atPath: root + "/a/b/c/" + AtomicOutput.markerName))
    }

    @Test func replacesOnlyWithForceAndOnlyFilesOrItsOwnDirectories() throws {
        let root = makeTemporaryDirectory()
        writeFile(root + "/file.npy", "old")
        expectRefused(root + "/file.npy", .file, in: root, "already exists (a file of 3 bytes); pass --force")
        let f = try AtomicOutput(destination: root + "/file.npy", kind: .file, force: true)
        try write(f, "new")
        try f.commit()
        #expect(try String(contentsOfFile: root + "/file.npy", encoding: .utf8) == "new")

        // A directory of the user's: never replaced, with or without --force.
        try FileManager.default.createDirectory(atPath: root + "/notes/sub", withIntermediateDirectories: true)
        writeFile(root + "/notes/sub/todo.txt", "keep me")
        for force in [false, true] {
            expectRefused(root + "/notes", .directory, force: force, in: root, "is a directory of 1 entry (sub) that vffn-convert did not write")
            expectRefused(root + "/notes/", .directory, force: force, in: root, "To write inside it, name the output: \(root)/notes/NAME")
            expectRefused(root + "/notes", .file, force: force, in: root, "is a directory, but this output is one file")
        }

        // Its own output: replaced with --force; refused once the user has added a file.
        let own = try AtomicOutput(destination: root + "/ckpt", kind: .directory, force: false)
        try write(own, "1")
        try own.commit()
        expectRefused(root + "/ckpt", .directory, in: root, "already exists (written by vffn-convert); pass --force")
        let again = try AtomicOutput(destination: root + "/ckpt", kind: .directory, force: true)
        try write(again, "2")
        try again.commit()
        #expect(try String(contentsOfFile: root + "/ckpt/f", encoding: .utf8) == "2")
        writeFile(root + "/ckpt/trained.safetensors", "the user's")
        expectRefused(root + "/ckpt", .directory, force: true, in: root, "now also holds 1 file(s) it did not write (trained.safetensors)")

        // A trainer saved over the same names: the sizes and times no longer match the marker.
        writeFile(root + "/ckpt/trained.safetensors", "")
        try FileManager.default.removeItem(atPath: root + "/ckpt/trained.safetensors")
        writeFile(root + "/ckpt/f", "fine-tuned")
        expectRefused(root + "/ckpt", .directory, force: true, in: root, "but 1 of its files changed since (f)")

        // A conversion of an earlier release, or a trainer's save: no marker, so not replaced.
        try FileManager.default.createDirectory(atPath: root + "/legacy", withIntermediateDirectories: false)
        writeFile(root + "/legacy/config.json", #"{"model_type": "llama", "versatile_ffn": {"num_experts": 8}}"#)
        expectRefused(root + "/legacy", .directory, force: true, in: root, "holds a converted checkpoint without the .vffn-convert.json")
    }

    /// Only the directories it made are removed: not one reached through "..", not one that
    /// existed already.
    @Test func abandonsOnlyTheParentsItMade() throws {
        let root = makeTemporaryDirectory()
        try FileManager.default.createDirectory(atPath: root + "/existing", withIntermediateDirectories: false)
        do { _ = try AtomicOutput(destination: root + "/new/../existing/out", kind: .file, force: false) }
        #expect(fileTree(root) == ["existing/"])
    }

    @Test func symlinkLoopsAreNamed() throws {
        let root = makeTemporaryDirectory()
        try FileManager.default.createSymbolicLink(atPath: root + "/a", withDestinationPath: root + "/b")
        try FileManager.default.createSymbolicLink(atPath: root + "/b", withDestinationPath: root + "/a")
        expectRefused(root + "/a", .file, force: true, in: root, "is a loop of symlinks")
        // A directory holding a link to itself is listed once, not forever.
        try FileManager.default.createDirectory(atPath: root + "/d", withIntermediateDirectories: false)
        try FileManager.default.createSymbolicLink(atPath: root + "/d/self", withDestinationPath: ".")
        writeFile(root + "/d/x", "1")
        #expect(Checkpoint.filesBelow(root + "/d") == ["x"])
    }

    @Test func anEmptyDirectoryIsThePlaceToWrite() throws {
        let root = makeTemporaryDirectory()
        try FileManager.default.createDirectory(atPath: root + "/empty", withIntermediateDirectories: false)
        let out = try AtomicOutput(destination: root + "/empty", kind: .directory, force: false)
        try write(out, "x")
        try out.commit()
        #expect(FileManager.default.fileExists(atPath: root + "/empty/f"))
    }

    @Test func refusesPathsThatNameNoNewEntry() throws {
        let root = makeTemporaryDirectory()
        for path in [root + "/.", root + "/..", "/", root + "/x/.."] {
            expectRefused(path, .directory, force: true, in: root, "names an existing directory itself")
        }
        expectRefused(root + "/q/", .file, in: root, "ends in /, so it names a directory, but this output is one file")
        expectRefused("", .file, in: root, "the output path is empty")
        expectRefused("-", .directory, in: root, "- (stdout) can take one file")
        writeFile(root + "/plain", "x")
        expectRefused(root + "/plain/inside", .file, in: root, "\(root)/plain is a file, not a directory")
    }

    @Test func refusesToOverlapItsInputs() throws {
        let root = makeTemporaryDirectory()
        try FileManager.default.createDirectory(atPath: root + "/src", withIntermediateDirectories: false)
        writeFile(root + "/src/config.json", "{}")
        writeFile(root + "/in.vffn", "x")
        expectRefused(root + "/src", .directory, force: true, inputs: [root + "/src"], in: root, "overlaps the input")
        expectRefused(root + "/src/out", .directory, inputs: [root + "/src"], in: root, "overlaps the input")
        expectRefused(root + "/in.vffn", .file, force: true, inputs: [root + "/in.vffn"], in: root, "overlaps the input")
        expectRefused(root + "/src/../in.vffn", .file, force: true, inputs: [root + "/in.vffn"], in: root, "overlaps the input")
        expectRefused(root, .directory, force: true, inputs: [root + "/src"], in: root, "overlaps the input")
    }

    @Test func writesThroughSymlinks() throws {
        let root = makeTemporaryDirectory()
        writeFile(root + "/target.npy", "old")
        try FileManager.default.createSymbolicLink(atPath: root + "/link.npy", withDestinationPath: "target.npy")
        expectRefused(root + "/link.npy", .file, in: root, "already exists (a file of 3 bytes)")
        let out = try AtomicOutput(destination: root + "/link.npy", kind: .file, force: true)
        try write(out, "new")
        try out.commit()
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: root + "/link.npy") == "target.npy")
        #expect(try String(contentsOfFile: root + "/target.npy", encoding: .utf8) == "new")
        // A dangling link: its target is created, in a directory that is made for it.
        try FileManager.default.createSymbolicLink(atPath: root + "/dangling", withDestinationPath: root + "/made/later.npy")
        let d = try AtomicOutput(destination: root + "/dangling", kind: .file, force: false)
        try write(d, "here")
        try d.commit()
        #expect(try String(contentsOfFile: root + "/made/later.npy", encoding: .utf8) == "here")
    }

    @Test func streamsIntoFIFOsAndDevicesWithoutRenamingOverThem() throws {
        let root = makeTemporaryDirectory()
        let fifo = root + "/pipe"
        #expect(mkfifo(fifo, 0o644) == 0)
        let received = Received()
        // Read as `cat` would: open (which waits for the writer), then read to end of file.
        let reader = Thread {
            let fd = open(fifo, O_RDONLY)
            var bytes: [UInt8] = [], chunk = [UInt8](repeating: 0, count: 4096)
            while fd >= 0 {
                let n = read(fd, &chunk, chunk.count)
                if n <= 0 { break }
                bytes += chunk[0..<n]
            }
            if fd >= 0 { close(fd) }
            received.set(String(decoding: bytes, as: UTF8.self))
        }
        reader.start()
        let out = try AtomicOutput(destination: fifo, kind: .file, force: false)
        #expect(out.isStream && !out.temporary.hasPrefix(root))
        try write(out, "through the pipe")
        try out.commit()
        #expect(received.wait() == "through the pipe")
        var st = stat()
        #expect(lstat(fifo, &st) == 0 && st.st_mode & S_IFMT == S_IFIFO)
        #expect(!FileManager.default.fileExists(atPath: out.temporary))

        let null = try AtomicOutput(destination: "/dev/null", kind: .file, force: false)
        try write(null, "discarded")
        try null.commit()
        #expect(lstat("/dev/null", &st) == 0 && st.st_mode & S_IFMT == S_IFCHR)
        expectRefused(fifo, .directory, in: root, "is a FIFO, but this output is a directory")
    }

    @Test func aDryRunCreatesNothing() throws {
        let root = makeTemporaryDirectory()
        let out = try AtomicOutput(destination: root + "/a/b/c", kind: .directory, force: false, dryRun: true)
        #expect(out.temporary.isEmpty)
        #expect(fileTree(root) == [])
    }

    func fnv(_ text: String) -> String {
        var h: UInt64 = 0xcbf29ce484222325
        for b in text.utf8 { h = (h ^ UInt64(b)) &* 0x100000001b3 }
        return String(h, radix: 16)
    }
}

private final class Received: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private var text = ""
    func set(_ t: String) { text = t; done.signal() }
    func wait() -> String { _ = done.wait(timeout: .now() + 10); return text }
}

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An output (file or directory) that is built under a temporary name and appears at its
/// destination only when complete, so a failed or interrupted run never leaves something that
/// looks like a finished output, and never destroys what this tool did not write.
///
/// Every path a user can type is handled here, the one place that decides it:
/// - relative, `.`-free, one character, trailing `/`, spaces, non-ASCII: split by hand, never by
///   Foundation's path helpers (which trap on some of them);
/// - a symlink is written through: its target is what gets created or replaced;
/// - a FIFO, a character device, `/dev/stdout` and `-` (stdout) are streamed into, never renamed
///   over; the output is built in a private temporary file first because writers seek;
/// - missing parent directories are created, and removed again if the output is abandoned;
/// - an existing output is replaced only with `force`, and only if it is a regular file or a
///   directory this tool wrote (its `.vffn-convert.json` marker lists every file in it);
/// - anything else is refused before anything is created, with one line saying what is there.
public final class AtomicOutput {
    /// Whether the output is one file or a directory.
    public enum Kind: Sendable {
        case file
        case directory
    }

    /// The destination as the user gave it (for messages).
    public let destination: String
    /// The destination as an absolute path, symlinks of its last component resolved; for
    /// outputs that record where they live (OLMo's `load_path`). Nil when streaming.
    public let absoluteDestination: String?
    /// Where to write; moved to the destination by `commit`.
    public let temporary: String
    /// True when the destination is a pipe, a device or stdout, written through rather than
    /// renamed into place.
    public let isStream: Bool

    public let kind: Kind
    private let target: Target
    private var createdParents: [String] = []
    private var committed = false

    private enum Target {
        /// Rename the temporary to `path`; `replacing` says it exists and may be replaced.
        case rename(path: String, replacing: Bool)
        /// Copy the temporary into this descriptor of ours (stdout), or into the FIFO or device
        /// at `path`, opened only then: opening a FIFO waits for its reader.
        case stream(fd: Int32)
        case streamPath(String)
    }

    /// The file that marks a directory as written by this tool, listing what it wrote.
    public static let markerName = ".vffn-convert.json"

    /// Temporaries being written right now, so a signal handler can remove them.
    private static let live = LiveSet()
    /// Held while an output is renamed into place, and forever by a signal handler about to exit.
    private static let renaming = NSLock()

    /// Removes every temporary still being written. For signal handlers: after it, exit.
    public static func removeLiveTemporaries() {
        renaming.lock()
        let (paths, parents) = live.drain()
        for path in paths { try? FileManager.default.removeItem(atPath: path) }
        // Directories made for outputs go too, innermost first; rmdir keeps any that filled up.
        for dir in parents.reversed() { rmdir(dir) }
    }

    /// - Parameters:
    ///   - inputs: paths being read for this output; a destination that is one of them, holds
    ///     one, or lies inside one is refused, because replacing it would destroy the input.
    ///   - dryRun: make every check, create nothing; `commit` is then not to be called.
    public init(destination: String, kind: Kind, force: Bool, inputs: [String] = [], dryRun: Bool = false) throws(VFFNError) {
        self.destination = destination
        self.kind = kind
        guard !destination.isEmpty else { throw .usage("the output path is empty") }

        if let fd = Self.standardStream(destination) {
            // Binary bytes would only garble a terminal; a pipe or a redirect is what is meant.
            if isatty(fd) == 1 {
                throw .usage("\(destination == "-" ? "stdout" : destination) is a terminal; redirect it to a file or a pipe, or give a file name")
            }
            guard kind == .file else {
                throw .usage(destination == "-" ? "- (stdout) can take one file, but this output is a directory" : "\(destination) is a stream, but this output is a directory")
            }
            (target, temporary, isStream, absoluteDestination) = (.stream(fd: fd), try Self.streamTemporary(dryRun: dryRun), true, nil)
            return
        }
        if kind == .file && destination.hasSuffix("/") {
            throw .usage("\(destination) ends in /, so it names a directory, but this output is one file; give a file name, e.g. \(destination)out")
        }

        // A pipe or device is written through under the name given: /dev/fd/63 of a process
        // substitution is a link to "pipe:[N]", which names nothing once resolved.
        var given = stat()
        if stat(destination, &given) == 0, [S_IFIFO, S_IFCHR].contains(given.st_mode & S_IFMT) {
            let type = given.st_mode & S_IFMT
            guard kind == .file else { throw .usage("\(destination) is a \(type == S_IFIFO ? "FIFO" : "character device"), but this output is a directory") }
            guard access(destination, W_OK) == 0 else { throw .io(destination, "cannot write: \(String(cString: strerror(errno)))") }
            if type == S_IFCHR {
                let fd = open(destination, O_WRONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC)
                let terminal = fd >= 0 && isatty(fd) == 1
                if fd >= 0 { close(fd) }
                if terminal { throw .usage("\(destination) is a terminal; redirect it to a file or a pipe, or give a file name") }
            }
            (target, temporary, isStream, absoluteDestination) = (.streamPath(destination), try Self.streamTemporary(dryRun: dryRun), true, nil)
            return
        }
        let path = Self.resolvingLastSymlinks(Self.trimmingTrailingSlashes(destination))
        let (parent, base) = Self.split(path)
        guard base != "." && base != ".." && base != "/" else {
            throw .usage("\(destination) names an existing directory itself; name a new \(kind == .file ? "file" : "directory") inside it, e.g. \(Self.trimmingTrailingSlashes(destination) + "/out")")
        }
        var st = stat()
        let exists = stat(path, &st) == 0
        let statError = errno
        let type = st.st_mode & S_IFMT
        if statError == ELOOP { throw .usage("\(destination) is a loop of symlinks") }
        let absolute = Self.absolute(path)
        try Self.refuseOverlap(absolute, inputs: inputs, shown: destination)
        var replacing = false
        if exists {
            switch type {
            case S_IFREG:
                guard force else { throw .usage("\(destination) already exists (a file of \(st.st_size) bytes); pass --force to replace it") }
                replacing = true
            case S_IFDIR:
                guard kind == .directory else {
                    throw .usage("\(destination) is a directory, but this output is one file; give a file name inside it, e.g. \(Self.trimmingTrailingSlashes(destination))/out")
                }
                try Self.refuseReplacingDirectory(path, shown: destination, force: force)
                replacing = true
            case S_IFBLK: throw .usage("\(destination) is a block device; refusing to write to it")
            case S_IFSOCK: throw .usage("\(destination) is a socket; refusing to write to it")
            default: throw .usage("\(destination) exists and is neither a file nor a directory")
            }
        } else if statError != ENOENT && statError != ENOTDIR {
            throw .io(destination, "cannot examine: \(String(cString: strerror(statError)))")
        }
        let missing = try Self.missingParents(of: parent, shown: destination)
        target = .rename(path: path, replacing: replacing)
        isStream = false
        absoluteDestination = Self.canonical(absolute)
        if dryRun {
            temporary = ""
            committed = true
            return
        }
        for dir in missing {
            if mkdir(dir, 0o755) == 0 {
                createdParents.append(dir)
                Self.live.insertParent(dir)
                continue
            }
            // Made meanwhile by someone else (or reached through ".."): theirs, not ours to remove.
            guard errno == EEXIST else {
                let reason = String(cString: strerror(errno))
                for d in createdParents.reversed() { rmdir(d) }
                throw .io(dir, "cannot create the directory: \(reason)")
            }
        }
        // NAME_MAX is 255 bytes: long names are shortened in the temporary's name only.
        let shortBase = base.utf8.count > 200 ? String(decoding: Array(base.utf8.prefix(200)), as: UTF8.self) : base
        Self.removeStaleTemporaries(in: parent, base: shortBase)
        temporary = (parent == "/" ? "" : parent) + "/." + shortBase + ".partial-\(getpid())"
        try? FileManager.default.removeItem(atPath: temporary)
        Self.live.insert(temporary)
        if kind == .directory {
            guard mkdir(temporary, 0o755) == 0 else {
                let reason = String(cString: strerror(errno))
                Self.live.remove(temporary)
                for d in createdParents.reversed() { rmdir(d) }
                throw .io(temporary, "cannot create: \(reason)")
            }
        }
    }

    deinit { if !committed { abandon() } }

    /// Publishes the output. An existing destination (allowed by `force`) is swapped out first
    /// and removed only after the new one is in place. A directory gets its marker first.
    public func commit() throws(VFFNError) {
        switch target {
        case .stream(let fd):
            try Self.stream(temporary, into: fd, shown: destination)
            try? FileManager.default.removeItem(atPath: temporary)
        case .streamPath(let path):
            let fd = open(path, O_WRONLY | O_CLOEXEC)
            guard fd >= 0 else { throw .io(destination, "cannot open for writing: \(String(cString: strerror(errno)))") }
            defer { close(fd) }
            try Self.stream(temporary, into: fd, shown: destination)
            try? FileManager.default.removeItem(atPath: temporary)
        case .rename(let path, let replacing):
            if kind == .directory { try writeMarker() }
            // The signal handler waits for this lock: between the two renames, an interrupt
            // would leave neither the old output nor the new one in place.
            Self.renaming.lock()
            defer { Self.renaming.unlock() }
            // Checked again: the user may have put files into it while we were writing.
            var st = stat()
            if replacing, kind == .directory, stat(path, &st) == 0, st.st_mode & S_IFMT == S_IFDIR {
                try Self.refuseReplacingDirectory(path, shown: destination, force: true)
            }
            var old: String?
            if replacing {
                let aside = temporary + ".old"
                guard rename(path, aside) == 0 else {
                    throw .io(destination, "cannot move the existing output aside: \(String(cString: strerror(errno)))")
                }
                old = aside
            }
            guard rename(temporary, path) == 0 else {
                let reason = String(cString: strerror(errno))
                if let old { _ = rename(old, path) }
                throw .io(destination, "cannot rename the finished output into place: \(reason)")
            }
            if let old { try? FileManager.default.removeItem(atPath: old) }
        }
        committed = true
        Self.live.remove(temporary)
        for d in createdParents { Self.live.removeParent(d) }
    }

    public func abandon() {
        guard !temporary.isEmpty else { return }
        try? FileManager.default.removeItem(atPath: temporary)
        Self.live.remove(temporary)
        for d in createdParents.reversed() { rmdir(d); Self.live.removeParent(d) }
        createdParents = []
        committed = true
    }

    /// The marker: which tool wrote the directory and every file in it (nothing else, so that
    /// unpacking a packed conversion gives back the same bytes), so that a later
    /// `--force` can tell its own output from a directory of the user's.
    private func writeMarker() throws(VFFNError) {
        let files = Checkpoint.filesBelow(temporary)
        let marker = JSON.object([
            ("written_by", .string("vffn-convert")),
            ("files", .array(files.map { name in
                let s = Self.fileStamp(temporary + "/" + name)
                return .object([("path", .string(name)), ("bytes", .int(s?.bytes ?? -1)), ("mtime_ns", .int(s?.mtime ?? -1))])
            })),
        ])
        try OutputFile.write(marker.pretty, to: temporary + "/" + Self.markerName)
    }

    /// Why an existing directory may not be replaced, or nothing if it may.
    /// An empty directory holds nothing to lose: it is taken as the place to write.
    static func refuseReplacingDirectory(_ path: String, shown: String, force: Bool) throws(VFFNError) {
        let entries: [String]
        do { entries = try FileManager.default.contentsOfDirectory(atPath: path).sorted() } catch {
            throw .io(shown, "cannot list the existing directory, so it is not replaced: \(error.localizedDescription)")
        }
        if entries.isEmpty { return }
        let markerPath = path + "/" + markerName
        guard let data = FileManager.default.contents(atPath: markerPath),
              let marker = try? JSON.parse(Array(data)), marker["written_by"]?.stringValue == "vffn-convert",
              let entriesListed = marker["files"]?.arrayValue
        else {
            if let config = FileManager.default.contents(atPath: path + "/config.json"),
               (try? JSON.parse(Array(config)))?["versatile_ffn"] != nil {
                throw .usage("\(shown) holds a converted checkpoint without the \(markerName) that marks vffn-convert's own outputs "
                             + "(written by a release before 0.14, or saved by a trainer); it is not replaced: remove it yourself or choose another path")
            }
            let what = "a directory of \(entries.count) entr\(entries.count == 1 ? "y" : "ies") (\(entries.prefix(3).joined(separator: ", "))\(entries.count > 3 ? ", ..." : ""))"
            throw .usage("\(shown) is \(what) that vffn-convert did not write; it is never replaced. "
                         + "To write inside it, name the output: \(trimmingTrailingSlashes(shown))/NAME")
        }
        var listed: [String: (bytes: Int, mtime: Int)] = [:]
        for e in entriesListed {
            guard let name = e["path"]?.stringValue, let bytes = e["bytes"]?.intValue, let mtime = e["mtime_ns"]?.intValue else {
                throw .usage("\(shown) has a \(markerName) that this version cannot read; it is not replaced: remove it yourself")
            }
            listed[name] = (bytes, mtime)
        }
        let present = Checkpoint.filesBelow(path)
        let extra = present.filter { $0 != markerName && listed[$0] == nil }
        let changed = present.filter { name in
            guard let l = listed[name] else { return false }
            let s = fileStamp(path + "/" + name)
            return s?.bytes != l.bytes || s?.mtime != l.mtime
        }
        guard changed.isEmpty else {
            throw .usage("\(shown) was written by vffn-convert, but \(changed.count) of its files changed since (\(changed.prefix(3).joined(separator: ", "))), "
                         + "as a trainer's save would change them; it is not replaced: move it or choose another path")
        }
        guard extra.isEmpty else {
            throw .usage("\(shown) was written by vffn-convert but now also holds \(extra.count) file(s) it did not write (\(extra.prefix(3).joined(separator: ", "))); "
                         + "it is not replaced: move them out first")
        }
        guard force else { throw .usage("\(shown) already exists (written by vffn-convert); pass --force to replace it") }
    }

    /// Size and modification time (ns) of a file, following symlinks.
    static func fileStamp(_ path: String) -> (bytes: Int, mtime: Int)? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return (Int(st.st_size), Int(st.st_mtim.tv_sec) * 1_000_000_000 + Int(st.st_mtim.tv_nsec))
    }

    /// Refuses a destination that would overwrite or contain an input, or the working directory.
    static func refuseOverlap(_ absolute: String, inputs: [String], shown: String) throws(VFFNError) {
        let dst = canonical(absolute)
        let cwd = canonical(FileManager.default.currentDirectoryPath)
        if cwd == dst || cwd.hasPrefix(dst + "/") {
            throw .usage("\(shown) holds the current directory; refusing to replace it")
        }
        for input in inputs {
            let src = canonical(Self.absolute(input))
            if dst == src || dst.hasPrefix(src + "/") || src.hasPrefix(dst + "/") {
                throw .usage("the output \(shown) overlaps the input \(input)")
            }
        }
    }

    /// The missing directories above an output, outermost first; refuses a file in the way.
    static func missingParents(of parent: String, shown: String) throws(VFFNError) -> [String] {
        var missing: [String] = []
        var dir = parent
        while true {
            var st = stat()
            if stat(dir, &st) == 0 {
                guard st.st_mode & S_IFMT == S_IFDIR else {
                    throw .usage("cannot create \(shown): \(dir) is a file, not a directory")
                }
                return missing.reversed()
            }
            // ENOTDIR: a file is in the way further up; the loop finds it and names it.
            guard errno == ENOENT || errno == ENOTDIR else { throw .io(dir, "cannot examine: \(String(cString: strerror(errno)))") }
            missing.append(dir)
            let up = split(dir).parent
            if up == dir { return missing.reversed() }
            dir = up
        }
    }

    /// Copies a finished temporary file into a pipe, device or stdout.
    static func stream(_ path: String, into fd: Int32, shown: String) throws(VFFNError) {
        let src = open(path, O_RDONLY | O_CLOEXEC)
        guard src >= 0 else { throw .io(path, "cannot reopen: \(String(cString: strerror(errno)))") }
        defer { close(src) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(src, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw .io(path, "read failed: \(String(cString: strerror(errno)))") }
            if n == 0 { return }
            var done = 0
            while done < n {
                let w = buffer.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, n - done) }
                if w < 0 && errno == EINTR { continue }
                guard w > 0 else { throw .io(shown, "write failed: \(String(cString: strerror(errno)))") }
                done += w
            }
        }
    }

    /// The private file a streamed output is built in, registered for signal cleanup ("" for a dry run).
    static func streamTemporary(dryRun: Bool) throws(VFFNError) -> String {
        guard !dryRun else { return "" }
        let path = try privateTemporary()
        live.insert(path)
        return path
    }

    /// A private file to build a streamed output in, under $TMPDIR.
    static func privateTemporary() throws(VFFNError) -> String {
        let base = ProcessInfo.processInfo.environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        let dir = trimmingTrailingSlashes(base)
        removeStaleTemporaries(in: dir, prefix: "vffn-convert-stream-")
        var template = Array((dir + "/vffn-convert-stream-\(getpid())-XXXXXX").utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw .io(base, "cannot create a temporary file: \(String(cString: strerror(errno)))") }
        close(fd)
        return template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    /// Whether an output path means this process's stdout (where a summary must not go).
    public static func isStandardOutput(_ path: String) -> Bool {
        standardStream(path) == STDOUT_FILENO
    }

    /// `-`, and stdout and stderr under their device names: written to the process's own
    /// descriptor, which may be a pipe, a terminal or a file the shell opened.
    static func standardStream(_ path: String) -> Int32? {
        switch path {
        case "-", "/dev/stdout", "/proc/self/fd/1", "/dev/fd/1": return STDOUT_FILENO
        case "/dev/stderr", "/proc/self/fd/2", "/dev/fd/2": return STDERR_FILENO
        default: return nil
        }
    }

    // MARK: paths, split by hand

    static func trimmingTrailingSlashes(_ path: String) -> String {
        var p = Substring(path)
        while p.count > 1 && p.hasSuffix("/") { p = p.dropLast() }
        return String(p)
    }

    /// Parent and last component, as a shell would see them: "a" -> (".", "a"), "/a" -> ("/", "a").
    static func split(_ path: String) -> (parent: String, base: String) {
        let p = trimmingTrailingSlashes(path)
        if p == "/" { return ("/", "/") }
        guard let slash = p.lastIndex(of: "/") else { return (".", p) }
        var parent = String(p[..<slash])
        while parent.count > 1 && parent.hasSuffix("/") { parent.removeLast() }
        return (parent.isEmpty ? "/" : parent, String(p[p.index(after: slash)...]))
    }

    static func absolute(_ path: String) -> String {
        path.hasPrefix("/") ? path : trimmingTrailingSlashes(FileManager.default.currentDirectoryPath) + "/" + path
    }

    /// The path with every existing symlink and `.`/`..` resolved (realpath of the longest
    /// existing prefix, the rest appended), for comparing two paths.
    static func canonical(_ path: String) -> String {
        var head = absolute(path), tail: [String] = []
        while true {
            if let r = realpath(head, nil) {
                defer { free(r) }
                var out = String(cString: r)
                for c in tail.reversed() where c != "." {
                    if c == ".." { out = split(out).parent } else { out = (out == "/" ? "" : out) + "/" + c }
                }
                return out
            }
            let (parent, base) = split(head)
            if parent == head { return path }
            tail.append(base)
            head = parent
        }
    }

    /// Follows the last component while it is a symlink (dangling ones included), so that the
    /// link's target is what gets written.
    static func resolvingLastSymlinks(_ path: String) -> String {
        var p = path
        for _ in 0..<40 {
            var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            let n = readlink(p, &buffer, Int(PATH_MAX))
            guard n > 0 else { return p }
            let link = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            p = link.hasPrefix("/") ? link : (split(p).parent == "/" ? "" : split(p).parent) + "/" + link
        }
        return p
    }

    /// Temporaries left by runs that were killed: their process id no longer exists.
    private static func removeStaleTemporaries(in parent: String, base: String) {
        removeStaleTemporaries(in: parent, prefix: "." + base + ".partial-")
    }

    private static func removeStaleTemporaries(in parent: String, prefix: String) {
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: parent)) ?? [] where entry.hasPrefix(prefix) {
            let pidText = entry.dropFirst(prefix.count).prefix { $0.isNumber }
            guard let pid = Int32(pidText), pid != getpid(), kill(pid, 0) != 0, errno == ESRCH else { continue }
            try? FileManager.default.removeItem(atPath: parent + "/" + entry)
        }
    }
}

private final class LiveSet: @unchecked Sendable {
    private let lock = NSLock()
    private var paths = Set<String>()
    private var parents: [String] = []

    func insert(_ p: String) { lock.withLock { _ = paths.insert(p) } }
    func remove(_ p: String) { lock.withLock { _ = paths.remove(p) } }
    func insertParent(_ p: String) { lock.withLock { parents.append(p) } }
    func removeParent(_ p: String) { lock.withLock { parents.removeAll { $0 == p } } }
    func drain() -> (Set<String>, [String]) { lock.withLock { defer { paths = []; parents = [] }; return (paths, parents) } }
}

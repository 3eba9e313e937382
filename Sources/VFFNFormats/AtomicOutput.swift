import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An output (file or directory) that is built under a temporary sibling name and appears at its
/// destination only when complete, so a failed or interrupted run never leaves something that
/// looks like a finished checkpoint.
public final class AtomicOutput {
    public let destination: String
    /// Where to write; renamed to `destination` by `commit`.
    public let temporary: String
    private let force: Bool
    private var committed = false

    /// Temporaries being written right now, so a signal handler can remove them.
    private static let live = LiveSet()

    /// Removes every temporary still being written. For signal handlers: after it, exit.
    public static func removeLiveTemporaries() {
        for path in live.drain() { try? FileManager.default.removeItem(atPath: path) }
    }

    public init(destination: String, force: Bool, directory: Bool) throws(VFFNError) {
        let dest = destination.hasSuffix("/") && destination.count > 1 ? String(destination.dropLast()) : destination
        self.destination = dest
        self.force = force
        let parent = (dest as NSString).deletingLastPathComponent
        let base = (dest as NSString).lastPathComponent
        let parentDir = parent.isEmpty ? "." : parent
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: parentDir, isDirectory: &isDir), isDir.boolValue else {
            throw .io(dest, "parent directory \(parentDir) does not exist")
        }
        if FileManager.default.fileExists(atPath: dest), !force {
            throw .usage("\(dest) already exists; pass --force to replace it")
        }
        Self.removeStaleTemporaries(in: parentDir, base: base)
        temporary = parentDir + "/." + base + ".partial-\(getpid())"
        try? FileManager.default.removeItem(atPath: temporary)
        Self.live.insert(temporary)
        if directory {
            do { try FileManager.default.createDirectory(atPath: temporary, withIntermediateDirectories: false) } catch {
                throw .io(temporary, "cannot create: \(error.localizedDescription)")
            }
        }
    }

    deinit { if !committed { abandon() } }

    /// Publishes the output. An existing destination (allowed by `force`) is swapped out first
    /// and removed only after the new one is in place.
    public func commit() throws(VFFNError) {
        var old: String?
        if FileManager.default.fileExists(atPath: destination) {
            precondition(force)
            let aside = temporary + ".old"
            guard rename(destination, aside) == 0 else {
                throw .io(destination, "cannot move the existing output aside: \(String(cString: strerror(errno)))")
            }
            old = aside
        }
        guard rename(temporary, destination) == 0 else {
            let reason = String(cString: strerror(errno))
            if let old { _ = rename(old, destination) }
            throw .io(destination, "cannot rename the finished output into place: \(reason)")
        }
        committed = true
        Self.live.remove(temporary)
        if let old { try? FileManager.default.removeItem(atPath: old) }
    }

    public func abandon() {
        try? FileManager.default.removeItem(atPath: temporary)
        Self.live.remove(temporary)
    }

    /// Temporaries left by runs that were killed: their process id no longer exists.
    private static func removeStaleTemporaries(in parent: String, base: String) {
        let prefix = "." + base + ".partial-"
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

    func insert(_ p: String) { lock.withLock { _ = paths.insert(p) } }
    func remove(_ p: String) { lock.withLock { _ = paths.remove(p) } }
    func drain() -> Set<String> { lock.withLock { defer { paths = [] }; return paths } }
}

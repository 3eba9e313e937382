import Foundation
import VFFNSurgery

/// A one-line progress display on stderr for conversions that take more than a second: only
/// when stderr is a terminal (logs and pipes stay clean) and not with --quiet.
final class ProgressLine: @unchecked Sendable {
    private let enabled: Bool
    private let started = Date()
    private var lastDraw = Date.distantPast
    private var drawn = false
    private let lock = NSLock()

    init(quiet: Bool) {
        enabled = !quiet && isatty(STDERR_FILENO) == 1
    }

    func update(_ p: ConversionProgress) {
        guard enabled else { return }
        lock.lock()
        defer { lock.unlock() }
        let now = Date(), elapsed = now.timeIntervalSince(started)
        let finished = p.tensorsDone == p.tensorsTotal
        guard elapsed >= 1, finished || now.timeIntervalSince(lastDraw) >= 0.1 else { return }
        lastDraw = now
        drawn = true
        let rate = Double(p.bytesDone) / elapsed
        let line = "  \(p.tensorsDone)/\(p.tensorsTotal) tensors, \(Self.size(p.bytesDone)) of \(Self.size(p.bytesTotal)), \(Self.size(Int(rate)))/s"
        FileHandle.standardError.write(Data(("\r\u{1B}[K" + line).utf8))
    }

    /// Ends the line so what follows starts on a fresh one.
    func finish() {
        lock.lock()
        defer { lock.unlock() }
        if drawn { FileHandle.standardError.write(Data("\n".utf8)) }
        drawn = false
    }

    static func size(_ bytes: Int) -> String {
        let b = Double(bytes)
        if b >= 1e9 { return String(format: "%.2f GB", b / 1e9) }
        if b >= 1e6 { return String(format: "%.1f MB", b / 1e6) }
        return String(format: "%.0f kB", b / 1e3)
    }
}

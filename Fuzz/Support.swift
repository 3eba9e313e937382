// Shared by the libFuzzer targets (`make fuzz`). Each target is compiled together with the
// VFFNFormats sources into one module, with -sanitize=fuzzer,address, so internal readers are
// reachable and every out-of-bounds access or trap is a finding.
import Foundation

/// The readers take paths (they map files), so each input is written to a RAM-backed file.
let fuzzPath = "/dev/shm/vffn-fuzz-\(getpid())"

func withInputFile(_ data: UnsafePointer<UInt8>, _ size: Int, suffix: String = "", _ body: (String) throws -> Void) {
    let path = fuzzPath + suffix
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    guard fd >= 0 else { fatalError("cannot create \(path)") }
    var done = 0
    while done < size {
        let n = write(fd, data + done, size - done)
        guard n > 0 else { fatalError("cannot write \(path)") }
        done += n
    }
    close(fd)
    try? body(path)
}

/// Reads every tensor: decoding, inflating, dequantizing and gathering are part of the attack surface.
func readAll(_ file: any TensorFile) {
    for t in file.tensors {
        guard let b = try? file.bytes(t) else { continue }
        precondition(b.count == t.byteCount, "\(t.name): \(b.count) bytes returned for \(t.byteCount)")
    }
}

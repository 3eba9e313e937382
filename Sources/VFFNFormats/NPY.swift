import Foundation

/// NumPy `.npy` v1.0, float32 little-endian, C order: how `run` hands logits to Python.
public enum NPY {
    public static func encode(_ values: [Float], shape: [Int]) -> [UInt8] {
        header(shape: shape, count: values.count) + FloatCodec.encode(values, as: .F32)
    }

    /// Magic, version, header length and the padded header dict.
    static func header(shape: [Int], count: Int) -> [UInt8] {
        precondition(shape.reduce(1, *) == count)
        let shapeText = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
        var header = "{'descr': '<f4', 'fortran_order': False, 'shape': \(shapeText), }"
        // numpy pads so that data starts on a 64-byte boundary and ends the header with '\n'.
        let unpadded = 10 + header.utf8.count + 1
        header += String(repeating: " ", count: (64 - unpadded % 64) % 64) + "\n"
        var out: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0]
        let n = UInt16(header.utf8.count)
        out += [UInt8(n & 0xFF), UInt8(n >> 8)]
        out += Array(header.utf8)
        return out
    }

    /// Reads a float32 `.npy` written by this tool or by numpy (`<f4`, C order).
    public static func decode(_ bytes: [UInt8], path: String = "<npy>") throws(VFFNError) -> (values: [Float], shape: [Int]) {
        guard bytes.count >= 10, bytes[0] == 0x93, Array(bytes[1..<6]) == Array("NUMPY".utf8) else {
            throw .badInput(path, "not a .npy file (bad magic)")
        }
        let major = bytes[6]
        let headerStart = major == 1 ? 10 : 12
        guard major == 1 || major == 2, bytes.count >= headerStart else { throw .badInput(path, "unsupported .npy version \(major)") }
        let len = major == 1 ? Int(bytes[8]) | Int(bytes[9]) << 8
            : Int(bytes[8]) | Int(bytes[9]) << 8 | Int(bytes[10]) << 16 | Int(bytes[11]) << 24
        guard headerStart + len <= bytes.count else { throw .badInput(path, "truncated .npy header") }
        let header = String(decoding: bytes[headerStart..<headerStart + len], as: UTF8.self)
        guard header.contains("'descr': '<f4'"), header.contains("'fortran_order': False"),
              let open = header.range(of: "'shape': ("), let close = header[open.upperBound...].firstIndex(of: ")")
        else { throw .badInput(path, "only C-order float32 .npy files are supported") }
        let shape = header[open.upperBound..<close].split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        let count = shape.reduce(1, *)
        let data = headerStart + len
        guard bytes.count - data == count * 4 else { throw .badInput(path, "data holds \(bytes.count - data) bytes, shape \(shape) needs \(count * 4)") }
        let values = bytes[data...].withUnsafeBytes { FloatCodec.decode($0, as: .F32) }
        return (values, shape)
    }

    public static func write(_ values: [Float], shape: [Int], to path: String, force: Bool = false, inputs: [String] = []) throws(VFFNError) {
        let out = try AtomicOutput(destination: path, kind: .file, force: force, inputs: inputs)
        let file = try OutputFile(path: out.temporary)
        try file.write(header(shape: shape, count: values.count))
        // Little-endian hosts hold f32 exactly as .npy stores it: write the values in place
        // rather than building a second copy of a [T, vocab] array.
        #if _endian(little)
        let written = values.withUnsafeBytes { b in Result { () throws(VFFNError) in try file.write(b) } }
        try written.get()
        #else
        try file.write(FloatCodec.encode(values, as: .F32))
        #endif
        try file.finish()
        try out.commit()
    }
}

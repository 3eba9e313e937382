import CKernels
/// Element types of safetensors, with their names as the format spells them (case-sensitive).
public enum DType: String, CaseIterable, Sendable {
    case BOOL, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ
    case I16, U16, F16, BF16, I32, U32, F32, C64, F64, I64, U64
    case F4, F6_E2M3, F6_E3M2

    public var bitSize: Int {
        switch self {
        case .F4: return 4
        case .F6_E2M3, .F6_E3M2: return 6
        case .BOOL, .U8, .I8, .F8_E5M2, .F8_E4M3, .F8_E8M0, .F8_E4M3FNUZ, .F8_E5M2FNUZ: return 8
        case .I16, .U16, .F16, .BF16: return 16
        case .I32, .U32, .F32: return 32
        case .C64, .F64, .I64, .U64: return 64
        }
    }

    /// Floating point of any width (parameters, where BOOL masks and integer ids are buffers).
    public var isFloatingPoint: Bool {
        switch self {
        case .BOOL, .U8, .I8, .I16, .U16, .I32, .U32, .I64, .U64: return false
        default: return true
        }
    }

    /// The float types the forward pass computes from and the gates can be stored in.
    public var isComputeFloat: Bool { self == .F32 || self == .F16 || self == .BF16 }

    static let supportedList = DType.allCases.map(\.rawValue).joined(separator: ", ")
}

/// Conversions between storage floats and the f32 the forward pass computes in.
public enum FloatCodec {
    /// Decodes little-endian F32, F16 or BF16 bytes to f32. Other dtypes are not float weights.
    public static func decode(_ data: TensorData, as dtype: DType) -> [Float] {
        data.withUnsafeBytes { decode($0, as: dtype) }
    }

    public static func decode(_ bytes: UnsafeRawBufferPointer, as dtype: DType) -> [Float] {
        let n = bytes.count / (dtype.bitSize / 8)
        return [Float](unsafeUninitializedCapacity: n) { buf, count in
            decode(bytes, as: dtype, into: UnsafeMutableBufferPointer(rebasing: buf[0..<n]))
            count = n
        }
    }

    /// Decodes into `out`, which holds exactly as many values as `bytes` encodes.
    public static func decode(_ bytes: UnsafeRawBufferPointer, as dtype: DType, into out: UnsafeMutableBufferPointer<Float>) {
        switch dtype {
        case .F32:
            precondition(bytes.count == 4 * out.count)
            for i in 0..<out.count { out[i] = Float(bitPattern: UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
        case .F16:
            precondition(bytes.count == 2 * out.count)
            guard out.count > 0 else { return }
            if vffn_f16_to_f32(bytes.baseAddress!, out.baseAddress!, out.count) == 0 {
                for i in 0..<out.count { out[i] = Float(Float16(bitPattern: UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))) }
            }
        case .BF16:
            precondition(bytes.count == 2 * out.count)
            guard out.count > 0 else { return }
            vffn_bf16_to_f32(bytes.baseAddress!, out.baseAddress!, out.count)
        default:
            preconditionFailure("decode called on non-float dtype \(dtype)")
        }
    }

    /// Encodes f32 values to little-endian bytes of `dtype`, rounding to nearest even.
    public static func encode(_ values: [Float], as dtype: DType) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(values.count * dtype.bitSize / 8)
        func append16(_ v: UInt16) { out.append(UInt8(v & 0xFF)); out.append(UInt8(v >> 8)) }
        switch dtype {
        case .F32:
            for v in values {
                let b = v.bitPattern
                out.append(UInt8(b & 0xFF)); out.append(UInt8((b >> 8) & 0xFF))
                out.append(UInt8((b >> 16) & 0xFF)); out.append(UInt8(b >> 24))
            }
        case .F16:
            for v in values { append16(Float16(v).bitPattern) }
        case .BF16:
            for v in values { append16(bfloat16Bits(v)) }
        default:
            preconditionFailure("encode called on non-float dtype \(dtype)")
        }
        return out
    }

    /// Round-to-nearest-even truncation of an f32 to its top 16 bits, as torch does.
    static func bfloat16Bits(_ v: Float) -> UInt16 {
        let b = v.bitPattern
        if v.isNaN { return UInt16(b >> 16) | 0x40 }
        let rounding = 0x7FFF + ((b >> 16) & 1)
        return UInt16((b &+ rounding) >> 16)
    }
}

import Foundation

/// The paper's from-scratch initialization of the new gates: normal with std 0.02, truncated at
/// 3 std, drawn from a generator keyed by (seed, layer, tensor) so that any one gate can be
/// regenerated alone and a conversion is reproducible bit for bit.
public struct GateInitializer: Sendable {
    public static let std: Double = 0.02
    public static let truncation: Double = 3
    public static let description = "trunc_normal(std=0.02, a=-3std, b=3std), xoshiro256** keyed by (seed, layer, tensor)"

    /// Which gate a stream of the generator draws for.
    public enum Tensor: UInt64, Sendable {
        case expertGate = 1
        case depthPredictor = 2
    }

    public let seed: UInt64

    public init(seed: UInt64) { self.seed = seed }

    public func values(layer: Int, tensor: Tensor, count: Int) -> [Float] {
        var rng = Xoshiro256StarStar(seed: seed, stream: UInt64(layer) << 8 | tensor.rawValue)
        return (0..<count).map { _ in Float(rng.truncatedNormal(limit: Self.truncation) * Self.std) }
    }
}

/// xoshiro256** (Blackman and Vigna), seeded through SplitMix64: small, fast, and specified
/// exactly, so other tools can reproduce our gates.
struct Xoshiro256StarStar {
    var s: (UInt64, UInt64, UInt64, UInt64)

    init(seed: UInt64, stream: UInt64) {
        var x = seed ^ (stream &* 0x9E37_79B9_7F4A_7C15)
        func splitmix() -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        s = (splitmix(), splitmix(), splitmix(), splitmix())
    }

    mutating func next() -> UInt64 {
        let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
        let t = s.1 << 17
        s.2 ^= s.0
        s.3 ^= s.1
        s.1 ^= s.2
        s.0 ^= s.3
        s.2 ^= t
        s.3 = s.3 << 45 | s.3 >> 19
        return result
    }

    /// Uniform in (0, 1]: 53 random bits, never 0 so the logarithm below is finite.
    mutating func unitInterval() -> Double {
        Double((next() >> 11) + 1) * 0x1.0p-53
    }

    /// Standard normal by Box-Muller, redrawn until |z| <= limit.
    mutating func truncatedNormal(limit: Double) -> Double {
        while true {
            let z = (-2 * log(unitInterval())).squareRoot() * cos(2 * Double.pi * unitInterval())
            if abs(z) <= limit { return z }
        }
    }
}

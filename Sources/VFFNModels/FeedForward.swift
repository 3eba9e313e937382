/// A position-wise feed-forward function `f` with `intermediateSize` hidden neurons, which can
/// be restricted to a contiguous block of those neurons (a sub-expert).
public protocol FeedForward: Sendable {
    var intermediateSize: Int { get }
    /// The bias added after the output projection, if any: it is not split among sub-experts,
    /// so the partition identity is `sum_e f_e(h) = f(h) + (N-1) * outputBias`.
    var outputBias: [Float]? { get }
    /// The projection whose row n (`[d]`) is what neuron n responds to: gate_proj, c_fc,
    /// intermediate.dense. Informed gate initializations read it.
    var inputProjection: Linear { get }
    /// The hidden activations `[T, I]` of `h`: what the output projection reads.
    func activations(_ h: Matrix) -> Matrix
    /// The output projection (and its bias) of activations `a` of neurons `neurons`
    /// (`a.cols == neurons.count`): sub-expert e's output from its columns of `activations`.
    func project(_ a: Matrix, neurons: Range<Int>) -> Matrix
    /// `f` restricted to intermediate neurons `neurons`.
    func restricted(to neurons: Range<Int>) -> Self
}

extension FeedForward {
    public func callAsFunction(_ h: Matrix) -> Matrix { project(activations(h), neurons: 0..<intermediateSize) }

    /// Sub-expert `e` of `n`: the e-th of n equal contiguous neuron slices.
    public func subExpert(_ e: Int, of n: Int) -> Self {
        precondition(intermediateSize % n == 0 && e < n)
        let width = intermediateSize / n
        return restricted(to: e * width..<(e + 1) * width)
    }
}

/// `down(act(gate(h)) * up(h))`: the SwiGLU FFN of Llama, Mistral and Qwen2 (Gemma's GeGLU with
/// the tanh GELU).
public struct GatedFeedForward: FeedForward {
    public let gate: Linear   // [I, d]
    public let up: Linear     // [I, d]
    public let down: Linear   // [d, I]
    public let activation: Activation

    public init(gate: Linear, up: Linear, down: Linear, activation: Activation = .silu) {
        precondition(gate.outFeatures == up.outFeatures && down.inFeatures == gate.outFeatures)
        self.gate = gate
        self.up = up
        self.down = down
        self.activation = activation
    }

    public var intermediateSize: Int { gate.outFeatures }
    public var outputBias: [Float]? { down.bias }
    public var inputProjection: Linear { gate }

    public func activations(_ h: Matrix) -> Matrix {
        var a = gate(h)
        let b = up(h)
        let act = activation
        b.data.withUnsafeBufferPointer { bp in
            nonisolated(unsafe) let bb = bp.baseAddress!
            a.updateInParallel { ab, part in
                if act == .silu {
                    for i in part { ab[i] = silu(ab[i]) * bb[i] }
                } else {
                    for i in part { ab[i] = act(ab[i]) * bb[i] }
                }
            }
        }
        return a
    }

    public func project(_ a: Matrix, neurons: Range<Int>) -> Matrix { down.columns(neurons)(a) }

    public func restricted(to neurons: Range<Int>) -> GatedFeedForward {
        GatedFeedForward(gate: gate.rows(neurons), up: up.rows(neurons), down: down.columns(neurons), activation: activation)
    }
}

/// `output(act(input(h)))`: the two-projection FFN of GPT-2 (`c_fc`, `c_proj`, Conv1D layout)
/// and BERT (`intermediate.dense`, `output.dense`), each with a bias.
public struct UngatedFeedForward: FeedForward {
    public let input: Linear    // I outputs from d inputs
    public let output: Linear   // d outputs from I inputs
    public let activation: Activation

    public init(input: Linear, output: Linear, activation: Activation) {
        precondition(output.inFeatures == input.outFeatures)
        self.input = input
        self.output = output
        self.activation = activation
    }

    public var intermediateSize: Int { input.outFeatures }
    public var outputBias: [Float]? { output.bias }
    public var inputProjection: Linear { input }

    public func activations(_ h: Matrix) -> Matrix {
        var a = input(h)
        let act = activation
        a.updateInParallel { ab, part in
            for i in part { ab[i] = act(ab[i]) }
        }
        return a
    }

    public func project(_ a: Matrix, neurons: Range<Int>) -> Matrix { output.columns(neurons)(a) }

    public func restricted(to neurons: Range<Int>) -> UngatedFeedForward {
        UngatedFeedForward(input: input.rows(neurons), output: output.columns(neurons), activation: activation)
    }
}

/// The FFN sub-layer `S`: the FFN with its normalization and residual connection.
public struct FFNSublayer: Sendable {
    /// Where the FFN sub-layer's norm sits relative to the FFN.
    public enum Placement: Sendable {
        /// `S(x) = x + r·f(norm(x))` (Llama, Mistral, Qwen2, GPT-2; r is Granite's
        /// residual_multiplier, 1 elsewhere)
        case preNorm
        /// `S(x) = norm(x + f(x))` (BERT)
        case postNorm
        /// `S(x) = x + norm(f(x))` (OLMo 2)
        case outputNorm
        /// `S(x) = x + post(f(norm(x)))` (Gemma 2)
        case sandwich
    }

    public let placement: Placement
    public let norm: Norm
    public let ffn: any FeedForward
    /// The residual multiplier r of SPEC section 5's scaled pre-norm topology (Granite).
    public let residualScale: Float
    /// The sandwich's second norm, on the FFN's output (Gemma 2's post_feedforward_layernorm).
    public let postNorm: Norm?

    public init(placement: Placement, norm: Norm, ffn: any FeedForward, residualScale: Float = 1, postNorm: Norm? = nil) {
        precondition((placement == .sandwich) == (postNorm != nil), "a sandwich has two norms, every other placement one")
        self.placement = placement
        self.norm = norm
        self.ffn = ffn
        self.residualScale = residualScale
        self.postNorm = postNorm
    }

    /// `S(x)` with the whole FFN.
    public func callAsFunction(_ x: Matrix) -> Matrix { apply(ffn, to: x) }

    /// `S_e(x)`: the sub-layer with `f` replaced by one of its sub-experts.
    public func apply(_ f: any FeedForward, to x: Matrix) -> Matrix { combine(x, f(ffnInput(x))) }

    /// `S(x)` from the FFN's output `f` on `ffnInput(x)`: the residual and the norms around it.
    public func combine(_ x: Matrix, _ f: Matrix) -> Matrix {
        switch placement {
        case .preNorm: return x + f.scaled(by: residualScale)
        case .postNorm: return norm(x + f)
        case .outputNorm: return x + norm(f)
        case .sandwich: return x + postNorm!(f)
        }
    }

    /// What the FFN itself reads: `norm(x)` before a pre-norm FFN, `x` before a post-norm one.
    public func ffnInput(_ x: Matrix) -> Matrix {
        placement == .preNorm || placement == .sandwich ? norm(x) : x
    }
}

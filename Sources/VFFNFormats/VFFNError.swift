/// The one error type every layer throws. Its description is the single line the CLI prints:
/// the file it concerns (when there is one), then what is wrong with it.
public struct VFFNError: Error, CustomStringConvertible, Sendable {
    /// The kind of failure, which sets the exit code.
    public enum Kind: Sendable {
        /// A file that cannot be read as what it claims to be, or a model it cannot describe.
        case badInput
        /// Arguments that contradict each other or the checkpoint (e.g. top-k > experts).
        case usage
        /// The operating system refused a read or write.
        case io
    }

    public let kind: Kind
    public let path: String?
    public let message: String

    public init(_ kind: Kind, _ path: String?, _ message: String) {
        self.kind = kind
        self.path = path
        self.message = message
    }

    public static func badInput(_ path: String?, _ message: String) -> VFFNError { .init(.badInput, path, message) }
    public static func usage(_ message: String) -> VFFNError { .init(.usage, nil, message) }
    public static func io(_ path: String?, _ message: String) -> VFFNError { .init(.io, path, message) }

    public var description: String {
        if let path { return "\(path): \(message)" }
        return message
    }
}

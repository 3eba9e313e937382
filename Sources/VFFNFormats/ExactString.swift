/// A string compared and hashed by its UTF-8 bytes. Swift's `String` equality is canonical
/// equivalence ("Å" as U+00C5, as A + U+030A and as U+212B are one key), but JSON keys, tensor
/// names and vocabulary entries are distinct whenever their bytes are, as in Rust and Python.
public struct ExactString: Hashable, Sendable, CustomStringConvertible {
    public let string: String

    public init(_ string: String) { self.string = string }

    public var description: String { string }

    public static func == (a: ExactString, b: ExactString) -> Bool {
        a.string.utf8.elementsEqual(b.string.utf8)
    }

    public func hash(into hasher: inout Hasher) {
        var s = string
        s.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
    }
}

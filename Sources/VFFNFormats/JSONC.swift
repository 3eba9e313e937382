import CJSONC

/// A json-c value, read-only, kept alive by its root. json-c parses the container header; the
/// config inside it is re-read by our own strict parser, which keeps key order and number text.
final class JSONC: @unchecked Sendable {
    private let object: OpaquePointer?
    private let root: JSONC?

    init(parsing bytes: UnsafeRawBufferPointer, path: String) throws(VFFNError) {
        guard let tok = json_tokener_new() else { throw .io(path, "json-c: cannot allocate a tokener") }
        defer { json_tokener_free(tok) }
        json_tokener_set_flags(tok, Int32(JSON_TOKENER_STRICT) | Int32(JSON_TOKENER_VALIDATE_UTF8))
        let obj = json_tokener_parse_ex(tok, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(bytes.count))
        let err = json_tokener_get_error(tok)
        // The header is padded with spaces after the object; json-c stops at the object's end.
        let rest = bytes[Int(json_tokener_get_parse_end(tok))...]
        guard let obj, err == json_tokener_success, rest.allSatisfy({ $0 == 0x20 }) else {
            if let obj { json_object_put(obj) }
            let reason = err == json_tokener_success ? "bytes after the JSON object"
                : err == json_tokener_continue ? "the header ends inside the JSON object" : String(cString: json_tokener_error_desc(err))
            throw .badInput(path, ".vffn header is not valid JSON: \(reason) at header byte \(json_tokener_get_parse_end(tok))")
        }
        guard json_object_get_type(obj) == json_type_object else {
            json_object_put(obj)
            throw .badInput(path, ".vffn header is not a JSON object")
        }
        object = obj
        root = nil
    }

    private init(_ object: OpaquePointer?, root: JSONC) {
        self.object = object
        self.root = root
    }

    deinit { if root == nil, let object { json_object_put(object) } }

    private var type: json_type { json_object_get_type(object) }
    var isObject: Bool { type == json_type_object }

    subscript(key: String) -> JSONC? {
        guard isObject else { return nil }
        var child: OpaquePointer?
        guard json_object_object_get_ex(object, key, &child) != 0 else { return nil }
        return JSONC(child, root: root ?? self)
    }

    var members: [(String, JSONC)] {
        guard isObject else { return [] }
        var out: [(String, JSONC)] = []
        var it = json_object_iter_begin(object)
        var end = json_object_iter_end(object)
        while json_object_iter_equal(&it, &end) == 0 {
            out.append((String(cString: json_object_iter_peek_name(&it)), JSONC(json_object_iter_peek_value(&it), root: root ?? self)))
            json_object_iter_next(&it)
        }
        return out
    }

    var array: [JSONC]? {
        guard type == json_type_array else { return nil }
        return (0..<json_object_array_length(object)).map { JSONC(json_object_array_get_idx(object, $0), root: root ?? self) }
    }

    var string: String? { type == json_type_string ? String(cString: json_object_get_string(object)) : nil }

    /// An integer in 0...Int.max; anything else (negative, fractional, out of range) is nil.
    var nonNegativeInt: Int? {
        guard type == json_type_int else { return nil }
        // Values past Int64.max saturate here; no real offset or length is anywhere near that,
        // and every one is checked against the file size afterwards.
        let v = json_object_get_int64(object)
        return v >= 0 ? Int(v) : nil
    }

    var serialized: String { String(cString: json_object_to_json_string_ext(object, JSON_C_TO_STRING_PLAIN)) }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzJSON(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    // Whatever parses must survive a compact round trip unchanged.
    if let value = try? JSON.parse(UnsafeBufferPointer(start: data, count: size)) {
        let again = try? JSON.parse(value.compact)
        precondition(again == value, "compact round trip changed the value")
        _ = value.pretty
    }
    return 0
}

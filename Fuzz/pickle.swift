@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPickle(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    _ = try? Pickle.stateDict(UnsafeRawBufferPointer(start: data, count: size), path: "fuzz")
    return 0
}

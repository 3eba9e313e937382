@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzGGUF(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    withInputFile(data, size, suffix: ".gguf") { path in
        let f = try GGUFFile(path: path)
        _ = try? f.checkpointConfig()
        readAll(f)
    }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVFFN(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    withInputFile(data, size, suffix: ".vffn") { path in
        let c = try VFFNContainer(path: path)
        readAll(c)
        for f in c.files { _ = try? c.contents(of: f, what: "file") }
    }
    return 0
}

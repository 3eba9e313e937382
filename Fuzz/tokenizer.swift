import Foundation

// Text into two fixture tokenizers (run from the repository root, as `make fuzz` does): any
// input must tokenize, and a byte-level BPE without normalizer must give the text back.
let byteLevel = try! Tokenizer.load(path: "fixtures/tokenizers/llama3")
let wordPiece = try! Tokenizer.load(path: "fixtures/tokenizers/bert")
let spm = try! Tokenizer.load(path: "fixtures/tokenizers/llama2")

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTokenizer(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    let ids = byteLevel.encode(text, addSpecialTokens: false)
    precondition(byteLevel.decode(ids) == text, "byte-level BPE does not round-trip")
    _ = wordPiece.decode(wordPiece.encode(text))
    _ = spm.decode(spm.encode(text), skipSpecialTokens: true)
    return 0
}

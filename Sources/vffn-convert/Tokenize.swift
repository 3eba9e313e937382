import ArgumentParser
import Foundation
import VFFNFormats
import VFFNText

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the token ids of text, by a checkpoint's own tokenizer.",
        discussion: """
        The ids are Hugging Face tokenizers' own for the same tokenizer.json: added and special \
        tokens are matched first, then the normalizer, pre-tokenizer, model (BPE or WordPiece) and \
        post-processor run as there. Special tokens (BOS, EOS, CLS, SEP) are added unless \
        --no-special is given; special-token text in the input is matched either way. Truncation \
        and padding stored in tokenizer.json are not applied, as transformers does not apply them \
        unless asked. With --text-file each line (split at \\n only) is tokenized on its own and \
        printed on its own line; an empty line gives no ids. The output is what --tokens and \
        --tokens-file read.
        """)

    @Argument(help: ArgumentHelp("A checkpoint (a directory with tokenizer.json, a .vffn or a .gguf file) or a tokenizer.json.", valueName: "path"),
              completion: .file())
    var path: String

    @Option(parsing: .unconditional, help: ArgumentHelp("The text to tokenize.", valueName: "text"))
    var text: String?

    @Option(name: .customLong("text-file"), help: ArgumentHelp("A UTF-8 text file; each line is tokenized on its own.", valueName: "file"),
            completion: .file())
    var textFile: String?

    @Flag(name: .customLong("no-special"), help: "Add no special tokens (add_special_tokens=False).")
    var noSpecial = false

    @Flag(help: "Print a JSON array of ids per text (per line with --text-file).")
    var json = false

    @Flag(help: "Also print each id's token, as id:token pairs (a JSON array of [id, token] with --json).")
    var pieces = false

    @OptionGroup var common: CommonOptions

    func validate() throws {
        if (text == nil) == (textFile == nil) { throw ValidationError("give the text: --text S or --text-file FILE (one of them)") }
    }

    func run() throws {
        try reportingErrors {
            let tokenizer = try Tokenizer.load(path: path)
            let lines: [String]
            if let text {
                lines = [text]
            } else {
                // At \n bytes only: Swift's own split would keep "\r\n", one Character, together.
                var split = try TextInput.read(textFile!).utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
                    .map { String(decoding: $0, as: UTF8.self) }
                if split.last == "" { split.removeLast() }
                lines = split
            }
            var out = ""
            for line in lines {
                let ids = tokenizer.encode(line, addSpecialTokens: !noSpecial)
                if json {
                    let items: [JSON] = ids.map { id in pieces ? .array([.int(id), .string(tokenizer.token(id) ?? "")]) : .int(id) }
                    out += JSON.array(items).compact + "\n"
                } else {
                    out += ids.map { id in pieces ? "\(id):\(tokenizer.token(id) ?? "")" : String(id) }.joined(separator: pieces ? " " : ",") + "\n"
                }
                if out.utf8.count > 1 << 16 { FileHandle.standardOutput.write(Data(out.utf8)); out = "" }
            }
            FileHandle.standardOutput.write(Data(out.utf8))
        }
    }
}

import ArgumentParser
import CSystem
import Foundation
import VFFNFormats
import VFFNText
import VFFNModels

@main
struct VFFNConvert: ParsableCommand {
    static let version = "0.14.0"

    static let configuration = CommandConfiguration(
        commandName: "vffn-convert",
        abstract: "Turn dense transformer checkpoints into VersatileFFN checkpoints, and prove them sound.",
        discussion: """
        A checkpoint is a Hugging Face directory (config.json plus safetensors or pytorch_model.bin \
        files, single or sharded), a llama.cpp .gguf file, or a .vffn container; the format is \
        told by content, not by name. Conversion adds one expert_gate [N, d] and one \
        depth_predictor [D, d] per layer and keeps every dense tensor bit-identical. Supported \
        model types: \(Architectures.supportedModelTypes.joined(separator: ", ")) (README.md lists \
        what each covers).

        Outputs: a path is created with its missing parent directories; `-` is stdout where the \
        output is one file; a symlink, FIFO or device is written through. An existing output is \
        replaced only with --force, and only if it is a file or a directory vffn-convert wrote.

        Exit codes: 0 success; 1 verification failed; 64 usage error; 65 bad input \
        (unreadable, malformed or unsupported checkpoint); 74 I/O error; 128+N killed by signal N \
        (partial output removed).

        Shell completion: vffn-convert --generate-completion-script bash|zsh|fish.
        """,
        version: version,
        subcommands: [Convert.self, Verify.self, Run.self, Stats.self, Tokenize.self, Strip.self, Inspect.self, Pack.self, Unpack.self])

    /// One contract for every error, the argument parser's included: one line on stderr,
    /// `vffn-convert: error: ...`, and the exit code of its kind (64 for usage).
    static func main() {
        // The forward pass allocates activations of megabytes per product. glibc serves those
        // with fresh mmaps and trims freed heap at once, so every product faulted in zeroed
        // pages again (3% of a VersatileFFN run); serve up to 32 MiB (glibc's largest threshold)
        // from the heap and keep up to 256 MiB of it for reuse instead.
        _ = vffn_malloc_keep_freed(32 << 20, 256 << 20)
        let arguments = Array(CommandLine.arguments.dropFirst())
        if arguments.isEmpty {
            FileHandle.standardError.write(Data(helpMessage().utf8))
            Glibc.exit(64)
        }
        if let unknown = unknownSubcommand(arguments) { fail(usage: unknown) }
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                // --help, --version, completion scripts: the parser's text, as it wrote it.
                let text = fullMessage(for: error)
                print(text, terminator: text.hasSuffix("\n") ? "" : "\n")
                Glibc.exit(0)
            }
            let message = Self.message(for: error)
            if message.isEmpty { Glibc.exit(code.rawValue) }
            // Our own validate() messages are complete; the parser's get a pointer to the help.
            let command = error is ValidationError ? nil : arguments.first.flatMap { subcommandNames.contains($0) ? $0 : "" }
            fail(usage: oneLine(message, helpFor: command), code: code.rawValue)
        }
    }

    static var subcommandNames: [String] { configuration.subcommands.map { $0._commandName } + ["help"] }

    /// The first argument names a subcommand; an unknown one gets the closest name.
    static func unknownSubcommand(_ arguments: [String]) -> String? {
        guard let first = arguments.first, !first.hasPrefix("-"), !subcommandNames.contains(first) else { return nil }
        let closest = subcommandNames.map { ($0, editDistance($0, first)) }.min { $0.1 < $1.1 }
        let hint = closest.flatMap { $0.1 <= max(2, first.count / 3) ? "; did you mean '\($0.0)'?" : nil }
            ?? "; the commands are " + subcommandNames.dropLast().joined(separator: ", ")
        return "unknown command '\(first)'\(hint)"
    }

    /// The parser's message as one line, pointing at the help that lists what is allowed.
    static func oneLine(_ message: String, helpFor command: String?) -> String {
        var text = message.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }.joined(separator: "; ")
        if text.hasPrefix("Error: ") { text.removeFirst(7) }
        if let first = text.first, first.isUppercase, text.count > 1, text.dropFirst().first?.isLowercase == true {
            text = first.lowercased() + text.dropFirst()
        }
        guard let command else { return text }
        return text + " (see: vffn-convert help\(command.isEmpty ? "" : " " + command))"
    }

    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        var row = Array(0...b.count)
        for (i, ca) in a.enumerated() {
            var previous = row[0]
            row[0] = i + 1
            for (j, cb) in b.enumerated() {
                let current = row[j + 1]
                row[j + 1] = min(row[j + 1] + 1, row[j] + 1, previous + (ca == cb ? 0 : 1))
                previous = current
            }
        }
        return row[b.count]
    }
}

/// Prints the one error line and exits.
func fail(usage message: String, code: Int32 = 64) -> Never {
    FileHandle.standardError.write(Data("vffn-convert: error: \(message)\n".utf8))
    Glibc.exit(code)
}

/// Runs a command body, turning the library's errors into one line on stderr and an exit code.
func reportingErrors(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let error as VFFNError {
        FileHandle.standardError.write(Data("vffn-convert: error: \(error)\n".utf8))
        switch error.kind {
        case .usage: throw ExitCode(64)
        case .badInput: throw ExitCode(65)
        case .io: throw ExitCode(74)
        }
    }
}

/// On SIGINT, SIGTERM or SIGHUP, removes any half-written output before exiting with
/// 128 + the signal number, so an interrupted command leaves nothing that looks finished.
/// (SIGKILL cannot be caught; its leftover temporary is removed by the next run.)
func removePartialOutputOnSignals() {
    // A reader that goes away (`| head`) is not a crash: the write fails with EPIPE instead.
    signal(SIGPIPE, SIG_IGN)
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        signal(sig, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
        source.setEventHandler {
            AtomicOutput.removeLiveTemporaries()
            note("vffn-convert: interrupted; partial output removed")
            _exit(128 + sig)
        }
        source.resume()
        signalSources.append(source)
    }
}

nonisolated(unsafe) private var signalSources: [any DispatchSourceSignal] = []

func note(_ text: String) {
    FileHandle.standardError.write(Data((text + "\n").utf8))
}

/// Options every command has.
struct CommonOptions: ParsableArguments {
    @Flag(name: .shortAndLong, help: "Print nothing but errors; the exit code tells the outcome.")
    var quiet = false
}

/// Options of every command that runs the model.
struct ComputeOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Threads for the forward pass (default: OPENBLAS_NUM_THREADS, else OMP_NUM_THREADS, else every processor this process may use).",
                               valueName: "n"))
    var threads: Int?

    func validate() throws {
        if let threads, threads < 1 || threads > 1024 { throw ValidationError("--threads must be between 1 and 1024 (got \(threads))") }
    }

    /// Applies `--threads`; call before the first forward.
    func apply() {
        if let threads { ComputeThreads.set(threads) }
    }
}

/// Options of every command that writes.
struct WriteOptions: ParsableArguments {
    @Flag(help: "Replace the output if it exists and is a file, or a directory vffn-convert wrote (never anything else).")
    var force = false
}

/// The tokens every command that runs the model takes: ids (`--tokens 5,17,42`, `--tokens-file
/// FILE`) or text (`--text S`, `--text-file FILE`), which the checkpoint's own tokenizer turns into
/// ids, special tokens added as transformers adds them by default.
struct TokenOptions: ParsableArguments {
    @Option(parsing: .unconditional, help: ArgumentHelp("Token ids, separated by commas, spaces or newlines, e.g. 5,17,42.", valueName: "ids"))
    var tokens: String?

    @Option(name: .customLong("tokens-file"), help: ArgumentHelp("A file of token ids, separated by commas, spaces or newlines.", valueName: "file"),
            completion: .file())
    var tokensFile: String?

    @Option(parsing: .unconditional, help: ArgumentHelp("Text, tokenized by the checkpoint's own tokenizer (its tokenizer.json, or a GGUF's tokenizer).", valueName: "text"))
    var text: String?

    @Option(name: .customLong("text-file"), help: ArgumentHelp("A UTF-8 text file, tokenized as one text by the checkpoint's own tokenizer.", valueName: "file"),
            completion: .file())
    var textFile: String?

    var given: Bool { tokens != nil || tokensFile != nil || text != nil || textFile != nil }

    func validate() throws {
        let named = [("--tokens", tokens), ("--tokens-file", tokensFile), ("--text", text), ("--text-file", textFile)].filter { $0.1 != nil }.map(\.0)
        if named.count > 1 { throw ValidationError("give one of --tokens, --tokens-file, --text and --text-file, not \(named.joined(separator: " and "))") }
        if let tokens, case .failure(let p) = TokenIDs.parse(tokens) { throw ValidationError("--tokens: \(p.text)") }
    }

    /// The ids given, if any. Text is tokenized with the tokenizer of `checkpoint` and cut to the
    /// model's `positions`, with a note saying so.
    func ids(checkpoint: String, positions: Int?, quiet: Bool = false) throws(VFFNError) -> [Int]? {
        if let tokens { return try TokenIDs.parse(tokens, what: "--tokens") }
        if let tokensFile { return try TokenIDs.read(tokensFile) }
        let input: String
        let what: String
        if let text { input = text; what = "--text" } else if let textFile { input = try TextInput.read(textFile); what = textFile } else { return nil }
        return try TextInput.tokenize(input, what: what, checkpoint: checkpoint, positions: positions, quiet: quiet)
    }
}

/// Text in, for every command that takes it.
enum TextInput {
    /// More text than this is refused before it is read: 1 GB.
    static let maxBytes = 1 << 30

    /// A UTF-8 file's text; anything else is refused with the offset of the first bad byte.
    static func read(_ path: String) throws(VFFNError) -> String {
        let data = try readCapped(path, cap: maxBytes, kind: "a text file", tooLarge: "is larger than \(maxBytes >> 20) MiB")
        guard let s = String(validating: data, as: UTF8.self) else {
            var decoder = UTF8(), iterator = data.makeIterator(), offset = 0
            loop: while true {
                switch decoder.decode(&iterator) {
                case let .scalarValue(c): offset += String(c).utf8.count
                case .emptyInput: break loop
                case .error: break loop
                }
            }
            throw .badInput(path, "is not UTF-8 text (an invalid byte sequence at byte \(offset))")
        }
        return s
    }

    /// The ids of `text` by the tokenizer of `checkpoint`, cut to `positions` with a note.
    static func tokenize(_ text: String, what: String, checkpoint: String, positions: Int?, addSpecialTokens: Bool = true,
                         quiet: Bool = false) throws(VFFNError) -> [Int] {
        let tokenizer = try Tokenizer.load(path: checkpoint)
        var ids = tokenizer.encode(text, addSpecialTokens: addSpecialTokens)
        if ids.isEmpty { throw .usage("\(what) gives no tokens") }
        if let positions, ids.count > positions {
            if !quiet { note("vffn-convert: note: \(what) is \(ids.count) tokens; the model covers \(positions) positions, so the first \(positions) are used") }
            ids = Array(ids.prefix(positions))
        }
        return ids
    }
}

/// A regular file's bytes, at most `cap` of them: read with a cap, so /dev/zero or a stray
/// multi-GB file cannot exhaust memory. `kind` names what the file should be, for a directory.
func readCapped(_ path: String, cap: Int, kind: String, tooLarge: String) throws(VFFNError) -> Data {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { throw .badInput(path, "no such file") }
    guard !isDir.boolValue else { throw .badInput(path, "is a directory; give \(kind)") }
    guard let handle = FileHandle(forReadingAtPath: path) else { throw .io(path, "cannot read") }
    defer { try? handle.close() }
    let data: Data
    do { data = try handle.read(upToCount: cap + 1) ?? Data() } catch { throw .io(path, "cannot read: \(error.localizedDescription)") }
    guard data.count <= cap else { throw .badInput(path, tooLarge) }
    return data
}

/// The one token syntax: non-negative integers separated by commas, spaces or newlines.
enum TokenIDs {
    /// More ids than any context length we run; checked before anything is allocated.
    static let maxCount = 1 << 20

    /// The ids, or what is wrong with the text.
    static func parse(_ text: String) -> Result<[Int], ProblemText> {
        let words = text.split { $0 == "," || $0.isWhitespace }
        guard !words.isEmpty else { return .failure("no token ids; give non-negative integers such as 5,17,42") }
        guard words.count <= maxCount else { return .failure("\(words.count) token ids; at most \(maxCount) are run at once") }
        var ids: [Int] = []
        ids.reserveCapacity(words.count)
        for (i, w) in words.enumerated() {
            guard let id = Int(w), id >= 0 else {
                return .failure("token \(i + 1) is \"\(w.prefix(20))\"; token ids are non-negative integers separated by commas, spaces or newlines")
            }
            ids.append(id)
        }
        return .success(ids)
    }

    static func parse(_ text: String, what: String) throws(VFFNError) -> [Int] {
        switch parse(text) {
        case .success(let ids): return ids
        case .failure(let p): throw .usage("\(what): \(p.text)")
        }
    }

    static func read(_ path: String) throws(VFFNError) -> [Int] {
        let cap = maxCount * 24
        let data = try readCapped(path, cap: cap, kind: "a file of token ids",
                                  tooLarge: "is larger than \(cap / 1_000_000) MB; more than \(maxCount) token ids are never run at once")
        guard let text = String(data: data, encoding: .utf8) else { throw .badInput(path, "is not text; give token ids separated by commas, spaces or newlines") }
        switch parse(text) {
        case .success(let ids): return ids
        case .failure(let p): throw .badInput(path, p.text)
        }
    }
}

struct ProblemText: Error, ExpressibleByStringLiteral, ExpressibleByStringInterpolation {
    let text: String
    init(stringLiteral value: String) { text = value }
    init(stringInterpolation: DefaultStringInterpolation) { text = String(stringInterpolation: stringInterpolation) }
}

/// A command's summary: on stdout, unless the output itself went there.
func printSummary(_ text: String, besides destination: String) {
    if AtomicOutput.isStandardOutput(destination) { note(text) } else { print(text) }
}

/// Writes a JSON document to stdout.
func printJSON(_ value: JSON) {
    let text = value.pretty
    print(text, terminator: text.hasSuffix("\n") ? "" : "\n")
}

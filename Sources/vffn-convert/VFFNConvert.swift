import ArgumentParser
import Foundation
import VFFNFormats

@main
struct VFFNConvert: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vffn-convert",
        abstract: "Turn dense transformer checkpoints into VersatileFFN checkpoints, and prove them sound.",
        discussion: """
        A dense checkpoint directory (Hugging Face layout: config.json plus model.safetensors or \
        sharded model-*.safetensors with model.safetensors.index.json) is converted by adding one \
        expert_gate [N, d] and one depth_predictor [D, d] per layer; every dense tensor is kept \
        bit-identical. Supported model types: llama, mistral, qwen2 (SwiGLU, pre-norm), gpt2 \
        (Conv1D, pre-norm; keys with or without "transformer.") and bert (encoder, post-norm; keys \
        with or without "bert.").

        Exit codes: 0 success; 1 verification failed; 64 usage error; 65 bad input \
        (unreadable, malformed or unsupported checkpoint); 74 I/O error.
        """,
        subcommands: [Convert.self, Verify.self, Run.self, Inspect.self, Stats.self, Pack.self, Unpack.self])
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

/// Token ids given as `5,17,42`.
struct TokenList: ExpressibleByArgument {
    let ids: [Int]

    init?(argument: String) {
        let parts = argument.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        let ids = parts.compactMap { Int($0) }
        guard !parts.isEmpty, ids.count == parts.count, ids.allSatisfy({ $0 >= 0 }) else { return nil }
        self.ids = ids
    }
}

"""The Hugging Face `tokenizers` side of bench/tokenize.sh.

  make-text OUT              about 5 MB of mixed text: Python's standard library sources (code,
                             English docstrings) and the tokenizer corpus (many scripts, emoji,
                             numbers) twenty times over
  make-tokenizer TEXT OUT    a 32k-token Llama-3-style BPE (cl100k Split + ByteLevel, ignore_merges,
                             BOS template) trained on TEXT
  encode TOKENIZER TEXT IDS  encodes each line with encode_batch (RAYON_NUM_THREADS=1 makes it one
                             thread), prints "load_s encode_s tokens", and compares with the ids
                             vffn-convert printed to IDS (one JSON array per line): exit 1 if any differ
"""
import glob
import json
import os
import sys
import sysconfig
import time


def make_text(out):
    root = sysconfig.get_paths()["stdlib"]
    parts, size = [], 0
    for f in sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True)):
        if "site-packages" in f or os.sep + "test" in f:
            continue
        t = open(f, encoding="utf-8", errors="replace").read()
        parts.append(t)
        size += len(t.encode())
        if size > 4_200_000:
            break
    corpus = open(os.path.join(os.path.dirname(__file__), "..", "fixtures", "tokenizers", "corpus.txt"), encoding="utf-8").read()
    open(out, "w", encoding="utf-8").write("".join(parts) + corpus * 20)


def make_tokenizer(text, out):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    pattern = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), "isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=32000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|begin_of_text|>", "<|end_of_text|>"], show_progress=False)
    tok.train([text], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)])
    tok.save(out)


def lines_of(path):
    data = open(path, "rb").read().split(b"\n")
    if data and data[-1] == b"":
        data.pop()
    return [line.decode("utf-8") for line in data]


def encode(tokenizer, text, ids):
    t0 = time.perf_counter()
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(tokenizer)
    tok.no_truncation()
    tok.no_padding()
    t1 = time.perf_counter()
    lines = lines_of(text)
    t2 = time.perf_counter()
    encodings = tok.encode_batch(lines)
    t3 = time.perf_counter()
    ours = open(ids).read().split("\n")[:-1]
    bad = sum(1 for e, o in zip(encodings, ours) if json.loads(o) != e.ids) + abs(len(ours) - len(encodings))
    print(f"{t1 - t0:.3f} {t3 - t2:.3f} {sum(len(e.ids) for e in encodings)}")
    if bad:
        print(f"{bad} of {len(lines)} lines differ from vffn-convert's ids", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    {"make-text": make_text, "make-tokenizer": make_tokenizer, "encode": encode}[sys.argv[1]](*sys.argv[2:])

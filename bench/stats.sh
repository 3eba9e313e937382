#!/usr/bin/env bash
# The cost of the start-distance report: `stats --tokens` (256 tokens) on the 1.24B bf16 Llama
# (Llama-3.2-1B's shape) converted with N 8, k 2, D 4, against the two forward passes it needs,
# `run --dense` and `run` on the same tokens, in the same run. Whole processes, median of REPEAT.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${BENCH_DIR:-.build/bench}
REPEAT=${REPEAT:-3}
TOOL=.build/release/vffn-convert
PY=$WORK/venv/bin/python
[ -x "$PY" ] || PY=.build/interop/venv/bin/python
mkdir -p "$WORK"
BF16=$WORK/llama-1b-bf16
BF16V=$WORK/llama-1b-vffn
[ -f "$BF16/config.json" ] || $PY bench/peers.py make-llama-bf16 "$BF16" --hidden 2048 --layers 16 --intermediate 8192 --vocab 128256 --heads 32 --kv 8 --tied >&2
[ -f "$BF16V/config.json" ] || $TOOL convert "$BF16" "$BF16V" --experts 8 --top-k 2 --max-depth 4 --emit-modeling --quiet --no-fsync
TOKENS=$(python3 -c 'print(",".join(str((i * 7919) % 32000) for i in range(256)))')
median() {
  local times=()
  for _ in $(seq "$REPEAT"); do
    s=$(date +%s.%N); "$@" > /dev/null 2>&1; e=$(date +%s.%N)
    times+=("$(python3 -c "print($e - $s)")")
  done
  printf '%s\n' "${times[@]}" | sort -g | sed -n "$(( (REPEAT + 1) / 2 ))p"
}
"$TOOL" run "$BF16V" --tokens "$TOKENS" --out /dev/null --force > /dev/null 2>&1   # warm the page cache
dense=$(median "$TOOL" run "$BF16V" --tokens "$TOKENS" --out /dev/null --force --dense)
versatile=$(median "$TOOL" run "$BF16V" --tokens "$TOKENS" --out /dev/null --force)
stats=$(median "$TOOL" stats "$BF16V" --tokens "$TOKENS" --json)
python3 -c "
d, v, s = $dense, $versatile, $stats
print('%-52s %8s' % ('1.24B bf16 Llama, N 8 k 2 D 4, 256 tokens', 'seconds'))
print('%-52s %8.2f' % ('run --dense (one dense forward)', d))
print('%-52s %8.2f' % ('run (one VersatileFFN forward)', v))
print('%-52s %8.2f  %.2fx of the two runs' % ('stats (both, traced, + energy captured)', s, s / (d + v)))
"

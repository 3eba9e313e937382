#!/usr/bin/env bash
# Peak anonymous memory (RssAnon from /proc: the process's own pages, file-backed ones excluded)
# and time of the jobs whose inputs must be decoded, on a 1.24B Llama (Llama-3.2-1B's shape):
#
#   convert from a Q8_0 GGUF (gguf-py's writer, llama.cpp's Q/K permutation) and from one 2.5 GB
#   pytorch_model.bin (torch.save); run 64 tokens and verify on the GGUF; convert to a deflated
#   .vffn and pack --compress from the 2.5 GB bf16 safetensors.
#
# BASELINE=/path/to/an/older/vffn-convert adds that binary's numbers on the same files beside
# ours (how the issue-18 table in the README was made: the commit before the change). `make
# bench` runs this after run.sh; it needs the bench venv (bench/run.sh makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${BENCH_DIR:-.build/bench}
TOOL=.build/release/vffn-convert
PY=$WORK/venv/bin/python
BF16=$WORK/llama-1b-bf16
GGUF=$WORK/llama-1b-q8_0.gguf
BIN=$WORK/llama-1b-bin
[ -f "$BF16/config.json" ] || $PY bench/peers.py make-llama-bf16 "$BF16" --hidden 2048 --layers 16 --intermediate 8192 --vocab 128256 --heads 32 --kv 8 --tied >&2
[ -f "$GGUF" ] || $PY bench/peers.py make-gguf-q8 "$BF16" "$GGUF" >&2
[ -f "$BIN/pytorch_model.bin" ] || $PY bench/peers.py make-bin "$BF16" "$BIN" >&2
TOKENS=$(python3 -c 'print(",".join(str((i * 7919) % 32000) for i in range(64)))')

# shellcheck source=bench/anon.sh
. bench/anon.sh

# anon from a clean slate: no earlier output, no writeback pending.
fresh() {
  rm -rf "$WORK/mem-out" "$WORK/mem-out.vffn" "$WORK/mem-out.npy"
  sync
  anon "$@"
}

jobs=(
  "convert Q8_0 GGUF -> safetensors|convert $GGUF $WORK/mem-out --quiet --no-fsync --force|256"
  "convert pytorch_model.bin -> safetensors|convert $BIN $WORK/mem-out --quiet --no-fsync --force|256"
  "run 64 tokens on the Q8_0 GGUF|run $GGUF --dense --tokens $TOKENS --out $WORK/mem-out.npy --force|1024"
  "convert the GGUF, then verify --source it|VERIFY|1024"
  "convert --output-format vffn --compress (2.5 GB bf16)|convert $BF16 $WORK/mem-out.vffn --output-format vffn --compress --quiet --no-fsync --force|256"
  "pack --compress (2.5 GB bf16)|pack $BF16 $WORK/mem-out.vffn --compress --force|256"
)

measure_job() {   # tool, command -> "seconds anon_kb"
  local tool=$1 cmd=$2
  if [ "$cmd" = VERIFY ]; then
    rm -rf "$WORK/mem-verify"
    "$tool" convert "$GGUF" "$WORK/mem-verify" --quiet --no-fsync > /dev/null
    # shellcheck disable=SC2086
    fresh "$tool" verify "$WORK/mem-verify" --source "$GGUF" --quiet
    rm -rf "$WORK/mem-verify"
  else
    # shellcheck disable=SC2086
    fresh "$tool" $cmd
  fi
}

echo "| task | time | peak anonymous memory | target |${BASELINE:+ before: time | before: peak anonymous |}"
echo "|---|---|---|---|${BASELINE:+---|---|}"
for job in "${jobs[@]}"; do
  IFS='|' read -r name cmd target <<< "$job"
  read -r t a < <(measure_job "$TOOL" "$cmd") || { echo "bench/memory.sh: $name failed" >&2; exit 1; }
  row="| $name | $(printf %.1f "$t") s | $((a / 1024)) MiB | ≤ $target MiB |"
  if [ -n "${BASELINE:-}" ]; then
    if read -r bt ba < <(measure_job "$BASELINE" "$cmd"); then
      row="$row $(printf %.1f "$bt") s | $((ba / 1024)) MiB |"
    else
      row="$row failed | |"
    fi
  fi
  echo "$row"
done
rm -rf "$WORK/mem-out" "$WORK/mem-out.vffn" "$WORK/mem-out.npy"

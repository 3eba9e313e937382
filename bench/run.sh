#!/usr/bin/env bash
# Benchmarks vffn-convert against named peers in the same run and prints a table of time, peak
# RSS, throughput and the ratio to each peer. `make bench` runs it. It needs PyPI once: the
# peers (transformers, safetensors) and the checkpoints they make live under .build/bench.
#
#   convert a 1.3 GB Llama (f32, 5 shards)  vs  cp -r,  a safetensors load+save copy
#   run 256 tokens on a 125M Llama (f32)    vs  transformers eager forward (whole process)
#   export it to OLMo's model.pt            vs  the same fusing in Python + torch.save
#   run 256 tokens on a 1.24B bf16 Llama (Llama-3.2-1B's shape), dense and converted (N 8, k 2,
#   D 4), whole process              vs  transformers' and the remote code's forward alone,
#                                        warm (the second forward in its process, f32, eager)
#   verify --source at 1.24B and at Llama-3-8B's shape (bf16), with peak anonymous memory
#
# The bf16 checkpoints are written with numpy, straight to safetensors (torch would need the 8B
# model in memory). BENCH_8B=0 skips the 8B rows (16 GB on disk).
#
# Timings are the median of REPEAT runs with warm page caches (every tool reads the same
# cached files); peak RSS is GNU time's maximum resident set size.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${BENCH_DIR:-.build/bench}
REPEAT=${REPEAT:-3}
VENV=$WORK/venv
TOOL=.build/release/vffn-convert
mkdir -p "$WORK"

if [ ! -x "$VENV/bin/python" ]; then
  echo "bench: installing the peers (torch, transformers, safetensors) into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet torch transformers safetensors numpy
fi
PY=$VENV/bin/python

BIG=$WORK/llama-1gb
SMALL=$WORK/llama-100m
[ -f "$BIG/config.json" ] || $PY bench/peers.py make-llama "$BIG" --hidden 1024 --layers 16 --intermediate 4096 --vocab 32000 --heads 16 --kv 16 --shard 300MB >&2
[ -f "$SMALL/config.json" ] || $PY bench/peers.py make-llama "$SMALL" --hidden 768 --layers 12 --intermediate 2048 --vocab 32000 --heads 12 --kv 4 --shard 5GB >&2
BF16=$WORK/llama-1b-bf16
BF16V=$WORK/llama-1b-vffn
EIGHT=$WORK/llama-8b-bf16
EIGHTV=$WORK/llama-8b-vffn
[ -f "$BF16/config.json" ] || $PY bench/peers.py make-llama-bf16 "$BF16" --hidden 2048 --layers 16 --intermediate 8192 --vocab 128256 --heads 32 --kv 8 --tied >&2
[ -f "$BF16V/config.json" ] || $TOOL convert "$BF16" "$BF16V" --experts 8 --top-k 2 --max-depth 4 --emit-modeling --quiet --no-fsync
if [ "${BENCH_8B:-1}" != 0 ]; then
  [ -f "$EIGHT/config.json" ] || $PY bench/peers.py make-llama-bf16 "$EIGHT" --hidden 4096 --layers 32 --intermediate 14336 --vocab 128256 --heads 32 --kv 8 --shard-gb 5 >&2
  [ -f "$EIGHTV/config.json" ] || $TOOL convert "$EIGHT" "$EIGHTV" --experts 8 --top-k 2 --max-depth 4 --quiet --no-fsync
fi
TOKENS=$(python3 -c 'print(",".join(str((i * 7919) % 32000) for i in range(256)))')
SIZE=$(du -sb "$BIG" | cut -f1)
TASK="copy/convert $(du -sh "$BIG" | cut -f1)B checkpoint"

# Runs a command REPEAT times; prints "median_seconds peak_rss_kb".
measure() {
  local times=() rss=0
  for _ in $(seq "$REPEAT"); do
    rm -rf "$WORK/out" "$WORK/out.npy"
    sync   # the previous run's writeback must not land in this run's time
    /usr/bin/time -f "%e %M" -o "$WORK/time.txt" "$@" > /dev/null 2> "$WORK/stderr.txt" || { cat "$WORK/stderr.txt" >&2; exit 1; }
    read -r t m < "$WORK/time.txt"
    times+=("$t"); [ "$m" -gt "$rss" ] && rss=$m
  done
  printf '%s\n' "${times[@]}" | sort -g | awk -v r="$rss" '{a[NR]=$1} END {print a[int((NR+1)/2)], r}'
}

# shellcheck source=bench/anon.sh
. bench/anon.sh

cat "$BIG"/*.safetensors > /dev/null; cat "$SMALL"/*.safetensors > /dev/null   # warm the page cache

read -r t_cp m_cp < <(measure cp -r "$BIG" "$WORK/out")
read -r t_cps m_cps < <(measure sh -c "cp -r '$BIG' '$WORK/out' && sync")
read -r t_st m_st < <(measure "$PY" bench/peers.py safetensors-copy "$BIG" "$WORK/out")
read -r t_cv m_cv < <(measure "$TOOL" convert "$BIG" "$WORK/out" --quiet)
read -r t_cvn m_cvn < <(measure "$TOOL" convert "$BIG" "$WORK/out" --quiet --no-fsync)
read -r t_op m_op < <(measure "$PY" bench/peers.py olmo-export "$BIG" "$WORK/out")
read -r t_ov m_ov < <(measure "$TOOL" convert "$BIG" "$WORK/out" --output-format olmo --quiet --no-fsync)
read -r t_run m_run < <(measure "$TOOL" run "$SMALL" --tokens "$TOKENS" --out "$WORK/out.npy" --dense)
read -r t_py m_py < <(measure "$PY" bench/peers.py forward "$SMALL" --tokens 256)
inner=$("$PY" bench/peers.py forward "$SMALL" --tokens 256 2>/dev/null)

cat "$BF16"/*.safetensors "$BF16V"/*.safetensors > /dev/null   # both runs start with warm page caches, as the peers do
read -r t_bd m_bd < <(measure "$TOOL" run "$BF16" --tokens "$TOKENS" --out "$WORK/out.npy" --dense)
read -r t_bv m_bv < <(measure "$TOOL" run "$BF16V" --tokens "$TOKENS" --out "$WORK/out.npy")
# The peers' forward alone, warm: the best of two more forwards after the first in one process.
peer_d=$("$PY" bench/peers.py forward "$BF16" --tokens 256 --warm 2 2>/dev/null | tail -1)
peer_v=$(HF_HUB_OFFLINE=1 "$PY" bench/peers.py forward "$BF16V" --tokens 256 --warm 2 2>/dev/null | tail -1)
t_pd=$(echo "$peer_d" | $PY -c 'import json, sys; print(json.load(sys.stdin)["warm_forward_s"])')
t_pv=$(echo "$peer_v" | $PY -c 'import json, sys; print(json.load(sys.stdin)["warm_forward_s"])')
read -r t_vf a_vf < <(anon "$TOOL" verify "$BF16V" --source "$BF16" --quiet)
read -r t_r1 a_r1 < <(anon "$TOOL" run "$BF16V" --tokens "$TOKENS" --out "$WORK/out.npy" --force)
if [ "${BENCH_8B:-1}" != 0 ]; then
  # As after convert, the converted copy is what the page cache holds; the source, 16 GB more
  # than 24 GiB can keep with it, comes partly from disk.
  cat "$EIGHTV"/*.safetensors > /dev/null
  read -r t_v8 a_v8 < <(anon "$TOOL" verify "$EIGHTV" --source "$EIGHT" --quiet)
  read -r t_r8 a_r8 < <(anon "$TOOL" run "$EIGHTV" --tokens "$TOKENS" --out "$WORK/out.npy" --force)
fi

calc() { awk "BEGIN { printf \"$1\", $2 }"; }
row() { # task tool seconds rss_kb throughput ratio_text
  printf '| %-34s | %-44s | %7.2f s | %6.0f MB | %-11s | %s |\n' "$1" "$2" "$3" "$(calc %f "$4 / 1024")" "$5" "$6"
}
gbps() { echo "$(calc %.2f "$SIZE / $1 / 1e9") GB/s"; }
ratio() { calc %.2fx "$1 / $2"; }

echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r)"
echo "checkpoint: $(du -sh "$BIG" | cut -f1)B f32 Llama (334M parameters) in $(ls "$BIG"/*.safetensors | wc -l) shards; forward: 125M-parameter f32 Llama (GQA 12/4), 256 tokens"
echo
echo "| task                               | tool                                         |    time   |  peak RSS | throughput  | ratio |"
echo "|---|---|---|---|---|---|"
row "$TASK" "cp -r (peer)" "$t_cp" "$m_cp" "$(gbps "$t_cp")" "1.00x"
row "$TASK" "cp -r && sync (peer, durable)" "$t_cps" "$m_cps" "$(gbps "$t_cps")" "$(ratio "$t_cps" "$t_cp") of cp"
row "$TASK" "safetensors load+save, Python (peer)" "$t_st" "$m_st" "$(gbps "$t_st")" "$(ratio "$t_st" "$t_cp") of cp"
row "$TASK" "vffn-convert convert --no-fsync" "$t_cvn" "$m_cvn" "$(gbps "$t_cvn")" "$(ratio "$t_cvn" "$t_cp") of cp"
row "$TASK" "vffn-convert convert (fsync, the default)" "$t_cv" "$m_cv" "$(gbps "$t_cv")" "$(ratio "$t_cv" "$t_cps") of cp+sync, $(ratio "$t_cv" "$t_st") of safetensors"
row "export to OLMo model.pt" "safetensors + torch.cat + torch.save (peer)" "$t_op" "$m_op" "$(gbps "$t_op")" "1.00x"
row "export to OLMo model.pt" "vffn-convert convert --output-format olmo --no-fsync" "$t_ov" "$m_ov" "$(gbps "$t_ov")" "$(ratio "$t_ov" "$t_op") of torch.save"
row "forward, 256 tokens, whole process" "transformers eager f32, python (peer)" "$t_py" "$m_py" "-" "1.00x"
row "forward, 256 tokens, whole process" "vffn-convert run --dense" "$t_run" "$m_run" "-" "$(ratio "$t_run" "$t_py") of transformers"
echo
echo "transformers inside its process: $inner"
echo
echo "bf16 forward: 1.24B Llama (Llama-3.2-1B's shape: hidden 2048, 16 layers, GQA 32/8, vocab 128256, tied), 256 tokens, $(nproc) threads each"
echo
echo "| task | tool | time | ratio |"
echo "|---|---|---|---|"
printf '| dense forward, 256 tokens | transformers f32 eager, forward alone, warm (peer) | %.2f s | 1.00x |\n' "$t_pd"
printf '| dense forward, 256 tokens | vffn-convert run --dense, whole process | %.2f s | %s of transformers |\n' "$t_bd" "$(ratio "$t_bd" "$t_pd")"
printf '| VersatileFFN forward (N 8, k 2, D 4) | remote code eval, forward alone, warm (peer) | %.2f s | 1.00x |\n' "$t_pv"
printf '| VersatileFFN forward (N 8, k 2, D 4) | vffn-convert run, whole process | %.2f s | %s of the remote code |\n' "$t_bv" "$(ratio "$t_bv" "$t_pv")"
echo
echo "| task | time | peak anonymous memory |"
echo "|---|---|---|"
printf '| verify --source, 1.24B bf16 | %.1f s | %.0f MB |\n' "$t_vf" "$(calc %f "$a_vf / 1024")"
printf '| run, 256 tokens, 1.24B bf16 converted | %.1f s | %.0f MB |\n' "$t_r1" "$(calc %f "$a_r1 / 1024")"
if [ "${BENCH_8B:-1}" != 0 ]; then
  printf '| verify --source, 8.0B bf16 (Llama-3-8B shape) | %.1f s | %.0f MB |\n' "$t_v8" "$(calc %f "$a_v8 / 1024")"
  printf '| run, 256 tokens, 8.0B bf16 converted | %.1f s | %.0f MB |\n' "$t_r8" "$(calc %f "$a_r8 / 1024")"
fi
echo
echo "peers inside their processes: dense $peer_d; VersatileFFN $peer_v"

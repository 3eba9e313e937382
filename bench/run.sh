#!/usr/bin/env bash
# Benchmarks vffn-convert against named peers in the same run and prints a table of time, peak
# RSS, throughput and the ratio to each peer. `make bench` runs it. It needs PyPI once: the
# peers (transformers, safetensors) and the checkpoints they make live under .build/bench.
#
#   convert a 1.3 GB Llama (f32, 5 shards)  vs  cp -r,  a safetensors load+save copy
#   run 256 tokens on a 125M Llama (f32)    vs  transformers eager forward (whole process)
#   export it to OLMo's model.pt            vs  the same fusing in Python + torch.save
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

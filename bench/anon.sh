# Sourced by bench/run.sh and bench/memory.sh. anon CMD...: peak anonymous memory (RssAnon: the
# process's own pages, not the mapped checkpoint) of a command, sampled from /proc every 20 ms
# while it runs; prints "seconds peak_anon_kb", or nothing (and the command's stderr on stderr,
# and a non-zero status) when it fails, so that the caller's `read` fails. Needs $WORK.
anon() {
  local start end peak=0 pid v
  start=$(date +%s.%N)
  "$@" > /dev/null 2> "$WORK/stderr.txt" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    v=$(awk '/RssAnon/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [ -n "$v" ] && [ "$v" -gt "$peak" ] && peak=$v
    sleep 0.02
  done
  wait "$pid" || { cat "$WORK/stderr.txt" >&2; return 1; }
  end=$(date +%s.%N)
  echo "$(awk "BEGIN {print $end - $start}") $peak"
}

#!/usr/bin/env bash
# What logging, statistics and metrics cost the NBD request path: `blockmirror serve` exporting a null-co node
# (so the request path is all there is), driven by `qemu-img bench` over a Unix socket, for two builds side by
# side: BASE (before issue 18: no statistics, no logging, no metrics) and NEW in the settings of
# bench/stats-settings.sh (logging off, default, metrics, histograms, everything on).
# Runs are interleaved, and their order rotates each round, so that a machine's changing load spreads over all
# of them. Two figures per run: the wall time of REQUESTS 4 KiB writes then as many reads (16 in flight), and
# the daemon's CPU time (user + system, from /proc/PID/stat) divided by the requests it served. The second is
# what the request path costs and moves far less with the machine's load than the first: on a loaded machine
# compare CPU per request. 4 KiB requests are the worst case: the per-request cost is largest against the data.
# Needs qemu-img.
#
#   bench/stats-ab.sh BASE/blockmirror NEW/blockmirror [ROUNDS] [REQUESTS]
#
# Prints one line per run, then per setting the median wall time and CPU per request and their ratio to BASE.
set -euo pipefail
base=$1 new=$2 rounds=${3:-5} count=${4:-200000}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
port=$((20000 + RANDOM % 20000))
ticks=$(getconf CLK_TCK)

run() { # NAME BINARY [OPTIONS...]
  local name=$1 bin=$2; shift 2
  rm -f "$dir/nbd.sock"
  "$bin" serve --blockdev driver=null-co,node-name=n0,size=4G --nbd-server "addr.type=unix,addr.path=$dir/nbd.sock" \
    --export type=nbd,id=e0,node-name=n0,writable=on "$@" >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 100); do [ -S "$dir/nbd.sock" ] && break; sleep 0.1; done
  local uri="nbd+unix:///n0?socket=$dir/nbd.sock" w r cpu0 cpu1
  # CPU before the requests: start-up is not the request path.
  cpu0=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
  w=$(qemu-img bench -f raw -w -t none -s 4k -c "$count" -d 16 "$uri" | sed -n 's/Run completed in \([0-9.]*\) seconds./\1/p')
  r=$(qemu-img bench -f raw -t none -s 4k -c "$count" -d 16 "$uri" | sed -n 's/Run completed in \([0-9.]*\) seconds./\1/p')
  cpu1=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local us=$(awk -v t=$((cpu1 - cpu0)) -v hz="$ticks" -v n=$((2 * count)) 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
  echo "$name wall_s=$(awk -v w="$w" -v r="$r" 'BEGIN { printf "%.2f", w + r }') write_s=$w read_s=$r cpu_us_per_request=$us load=$(cut -d' ' -f1 /proc/loadavg)"
}

. "$(dirname "$0")/stats-settings.sh"

log=$dir/runs
for round in $(seq "$rounds"); do
  n=${#settings[@]}
  for i in $(seq 0 $((n - 1))); do
    one "${settings[$(((i + round) % n))]}" | tee -a "$log"
  done
done

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
field() { # SETTING FIELD
  grep "^$1 " "$log" | sed -n "s/.* $2=\([0-9.]*\).*/\1/p" | median
}
echo
echo "setting       median wall s  vs base  median CPU us/request  vs base"
bw=$(field base wall_s) bc=$(field base cpu_us_per_request)
for s in "${settings[@]}"; do
  w=$(field "$s" wall_s) c=$(field "$s" cpu_us_per_request)
  awk -v s="$s" -v w="$w" -v c="$c" -v bw="$bw" -v bc="$bc" \
    'BEGIN { printf "%-13s %13s  %7.3f  %21s  %7.3f\n", s, w, w / bw, c, c / bc }'
done

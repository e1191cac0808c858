#!/usr/bin/env bash
# What logging, statistics and metrics cost the NBD request path, counted in instructions, which unlike seconds
# do not move with the machine's load: `blockmirror serve` exporting a null-co node runs under valgrind's
# callgrind; its counters are zeroed once it serves, `qemu-img bench` sends REQUESTS 4 KiB writes then as many
# reads (16 in flight) over a Unix socket, and the counters are dumped. Every thread of the daemon counts
# (the thread pool, the GC, the metrics exporter's timer). Same builds and settings as bench/stats-ab.sh:
# BASE (before issue 18) and NEW off / default / metrics / histograms / all. Needs qemu-img and valgrind.
#
#   bench/stats-instructions.sh BASE/blockmirror NEW/blockmirror [ROUNDS] [REQUESTS]
#
# Prints one line per run, then per setting the median instructions per request and the ratio to BASE.
set -euo pipefail
base=$1 new=$2 rounds=${3:-3} count=${4:-20000}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
port=$((20000 + RANDOM % 20000))

run() { # NAME BINARY [OPTIONS...]
  local name=$1 bin=$2; shift 2
  rm -f "$dir"/nbd.sock "$dir"/cg.*
  valgrind --tool=callgrind --callgrind-out-file="$dir/cg.%p" "$bin" serve --blockdev driver=null-co,node-name=n0,size=4G \
    --nbd-server "addr.type=unix,addr.path=$dir/nbd.sock" --export type=nbd,id=e0,node-name=n0,writable=on "$@" >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 300); do [ -S "$dir/nbd.sock" ] && break; sleep 0.1; done
  local uri="nbd+unix:///n0?socket=$dir/nbd.sock"
  # One request first, so that what runs once (the connection, the first request's set-up) is not counted;
  # retried, as under valgrind the socket's file exists a while before the daemon listens on it.
  for _ in $(seq 60); do qemu-img bench -f raw -t none -s 4k -c 1 "$uri" >/dev/null 2>&1 && break; sleep 0.5; done
  callgrind_control -z "$pid" >/dev/null 2>&1
  qemu-img bench -f raw -w -t none -s 4k -c "$count" -d 16 "$uri" >/dev/null
  qemu-img bench -f raw -t none -s 4k -c "$count" -d 16 "$uri" >/dev/null
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local total
  total=$(sed -n 's/^totals: \([0-9]*\).*/\1/p' "$dir/cg.$pid.1")
  echo "$name instructions=$total per_request=$((total / (2 * count)))"
}

. "$(dirname "$0")/stats-settings.sh"

log=$dir/runs
for round in $(seq "$rounds"); do
  for s in "${settings[@]}"; do
    one "$s" | tee -a "$log"
  done
done

echo
echo "setting       median instructions/request  vs base"
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
b=$(grep '^base ' "$log" | sed 's/.*per_request=//' | median)
for s in "${settings[@]}"; do
  m=$(grep "^$s " "$log" | sed 's/.*per_request=//' | median)
  awk -v s="$s" -v m="$m" -v b="$b" 'BEGIN { printf "%-13s %27d  %7.3f\n", s, m, m / b }'
done

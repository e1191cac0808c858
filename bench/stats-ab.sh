#!/usr/bin/env bash
# NBD request rate through `blockmirror serve` (a null-co node, so the request path is all there is), for two
# builds side by side: BASE (before a change) and NEW, NEW also with --metrics-listen (OpenTelemetry attached).
# Runs are interleaved so that a machine's changing load spreads over all of them. Needs qemu-img.
#
#   bench/stats-ab.sh BASE/blockmirror NEW/blockmirror [ROUNDS] [REQUESTS]
#
# Prints one line per run: seconds for REQUESTS 4 KiB writes, then as many reads, 16 in flight.
set -euo pipefail
base=$1 new=$2 rounds=${3:-3} count=${4:-200000}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
port=$((20000 + RANDOM % 20000))

run() { # NAME BINARY [OPTIONS...]
  local name=$1 bin=$2; shift 2
  rm -f "$dir/nbd.sock"
  "$bin" serve --blockdev driver=null-co,node-name=n0,size=4G --nbd-server "addr.type=unix,addr.path=$dir/nbd.sock" \
    --export type=nbd,id=e0,node-name=n0,writable=on "$@" >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 50); do [ -S "$dir/nbd.sock" ] && break; sleep 0.1; done
  local uri="nbd+unix:///n0?socket=$dir/nbd.sock" w r
  w=$(qemu-img bench -f raw -w -t none -s 4k -c "$count" -d 16 "$uri" | sed -n 's/Run completed in \([0-9.]*\) seconds./\1/p')
  r=$(qemu-img bench -f raw -t none -s 4k -c "$count" -d 16 "$uri" | sed -n 's/Run completed in \([0-9.]*\) seconds./\1/p')
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$name write_s=$w read_s=$r load=$(cut -d' ' -f1 /proc/loadavg)"
}

for _ in $(seq "$rounds"); do
  run base "$base"
  run new "$new"
  run new+metrics-listen "$new" --metrics-listen "127.0.0.1:$port"
  run new "$new"
  run base "$base"
done

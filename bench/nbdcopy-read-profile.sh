#!/bin/bash
# Where a daemon's CPU goes while nbdcopy reads its NBD export: starts `blockmirror serve` (ours) or
# qemu-storage-daemon (qsd) exporting a raw file over a Unix socket, drops the page cache, reads the whole
# export with `nbdcopy ... null:` under `perf record -g` on the daemon, and prints nbdcopy's time, the
# daemon's user and system CPU (clock ticks) and its top kernel and user symbols.
# Usage (root, for drop_caches and perf): BIN=/path/to/blockmirror IMAGE=/path/to/1g.raw bench/nbdcopy-read-profile.sh ours|qsd
set -u
which=$1
BIN=${BIN:-blockmirror}
IMAGE=${IMAGE:?a raw image to export, e.g. 1 GiB of random data}
dir=$(mktemp -d)
args="--blockdev driver=file,node-name=f,filename=$IMAGE --blockdev driver=raw,node-name=disk,file=f
      --nbd-server addr.type=unix,addr.path=$dir/nbd.sock --export type=nbd,id=e,node-name=disk,name=disk"
if [ "$which" = ours ]; then "$BIN" serve $args & else qemu-storage-daemon $args & fi
pid=$!
for _ in $(seq 200); do [ -S "$dir/nbd.sock" ] && break; sleep 0.05; done
sync; echo 3 > /proc/sys/vm/drop_caches
read -r u0 s0 < <(awk '{print $14, $15}' /proc/$pid/stat)
perf record -q -g -p $pid -o "$dir/perf.data" -- sleep 4 >/dev/null 2>&1 & perf_pid=$!
sleep 0.3
/usr/bin/time -f "nbdcopy: %e s, user %U s, sys %S s" nbdcopy "nbd+unix:///disk?socket=$dir/nbd.sock" null:
read -r u1 s1 < <(awk '{print $14, $15}' /proc/$pid/stat)
echo "$which: daemon user $((u1 - u0)) ticks, sys $((s1 - s0)) ticks ($(getconf CLK_TCK) a second)"
wait $perf_pid
kill $pid; wait $pid 2>/dev/null
perf report -i "$dir/perf.data" --no-children --sort sym -g none 2>/dev/null | grep -v '^#' | grep '%' | head -10
rm -rf "$dir"

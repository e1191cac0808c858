#!/usr/bin/env bash
# Issue 19's speed rows, measured with the blockmirror command line on a dense source of SIZE MiB (default 4096):
#
#  1. Resume after a crash half way: `blockmirror mirror --write-intent-log` is killed (SIGKILL) once its progress
#     passes half, then `blockmirror mirror --resume` finishes it. Row: bytes the resumed job copied against the
#     bytes that were left at the kill (target: at most 1.1x).
#  2. Incremental re-sync: a qcow2 copy of the source with a persistent bitmap (qemu-img bitmap --add), mirrored
#     whole onto a raw target; then 1 % of it rewritten by qemu-io (64 KiB writes spread over the disk, the bitmap
#     marking them); then `blockmirror mirror --bitmap` onto the same target. Rows: bytes copied against the disk
#     (target: about 1 %), time against the full copy's (target: under a tenth), and qemu-img compare.
#
# The write-intent log's cost to a writer is the other row of the issue: bench/resume-wil-cost.py.
# Page cache dropped before every timed run. Needs qemu-img and qemu-io.
#
#   bench/resume-resync.sh BLOCKMIRROR DATA_DIR [SIZE_MIB]
set -euo pipefail
bm=$1 dir=$2 size=${3:-4096}
mkdir -p "$dir"
src=$dir/resume-src.raw
drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
# The last PROGRESS line of a --json run: "offset len".
last_progress() { grep '"event":"PROGRESS"' "$1" | tail -1 | sed -E 's/.*"offset":([0-9]+),"len":([0-9]+).*/\1 \2/'; }

if [ ! -f "$src" ] || [ "$(stat -c %s "$src")" -ne $((size << 20)) ]; then
  dd if=/dev/urandom of="$src" bs=1M count="$size" status=none
fi

echo "== 1. resume after a crash half way ($size MiB dense raw)"
tgt=$dir/resume-tgt.raw
rm -f "$tgt" "$src.blockmirror-wil"
truncate -s "${size}M" "$tgt"
drop
"$bm" mirror -f raw -O raw --write-intent-log --json "$src" "$tgt" > "$dir/resume-1.json" 2>/dev/null &
pid=$!
# Poll the progress lines (one a second) and a short interval, so the kill lands just past half.
while kill -0 "$pid" 2>/dev/null; do
  read -r done len < <(last_progress "$dir/resume-1.json" || echo "0 0")
  if [ "${len:-0}" -gt 0 ] && [ $((done * 2)) -ge "$len" ]; then
    kill -KILL "$pid"
    break
  fi
  sleep 0.05
done
wait "$pid" 2>/dev/null || true
read -r done len < <(last_progress "$dir/resume-1.json")
left=$((len - done))
drop
start=$(date +%s.%N)
"$bm" mirror -f raw -O raw --resume --json "$src" "$tgt" > "$dir/resume-2.json" 2>/dev/null
end=$(date +%s.%N)
read -r copied _ < <(last_progress "$dir/resume-2.json")
echo "killed at $done of $len bytes (left $left); the resumed job copied $copied bytes in $(echo "$end - $start" | bc) s"
echo "row: resumed copy / left at the kill = $(echo "scale=3; $copied / $left" | bc) (target <= 1.1)"
cmp -s "$src" "$tgt" && echo "target equals source" || { echo "TARGET DIFFERS"; exit 1; }
rm -f "$tgt"

echo "== 2. incremental re-sync after 1 % changed ($size MiB dense qcow2)"
q=$dir/resync-src.qcow2 t=$dir/resync-tgt.raw
rm -f "$q" "$t"
qemu-img convert -f raw -O qcow2 "$src" "$q"
qemu-img bitmap --add "$q" b0
truncate -s "${size}M" "$t"
drop
start=$(date +%s.%N)
"$bm" mirror -f qcow2 -O raw --json "$q" "$t" > "$dir/resync-full.json" 2>/dev/null
end=$(date +%s.%N)
full=$(echo "$end - $start" | bc)
# 1 % of the disk in 64 KiB writes, spread evenly (the persistent bitmap is enabled: qemu-io's writes mark it).
writes=$(( (size << 20) / 100 / 65536 ))
step=$(( (size << 20) / writes / 65536 * 65536 ))
script=$dir/resync-writes.txt
: > "$script"
for i in $(seq 0 $((writes - 1))); do echo "write -P $((i % 250 + 1)) $((i * step)) 64k" >> "$script"; done
qemu-io -f qcow2 "$q" < "$script" > /dev/null
drop
start=$(date +%s.%N)
"$bm" mirror -f qcow2 -O raw --bitmap b0 --bitmap-mode never --json "$q" "$t" > "$dir/resync-inc.json" 2>/dev/null
end=$(date +%s.%N)
inc=$(echo "$end - $start" | bc)
read -r copied _ < <(last_progress "$dir/resync-inc.json")
echo "full copy $full s; re-sync after $writes writes of 64 KiB copied $copied bytes in $inc s"
echo "row: copied / disk = $(echo "scale=4; $copied / ($size * 1048576)" | bc) (target about 0.01)"
echo "row: re-sync time / full copy time = $(echo "scale=3; $inc / $full" | bc) (target < 0.1)"
qemu-img compare -f qcow2 -F raw "$q" "$t"
rm -f "$q" "$t"

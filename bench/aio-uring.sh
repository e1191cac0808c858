#!/bin/bash
# The file engines side by side, interleaved (threads, io_uring, threads, ...): fio 4 KiB randread and
# randwrite at depth 1 and 16 through `blockmirror serve` exporting a 1 GiB raw (cache.direct=$DIRECT, on unless
# set), and an offline `blockmirror mirror --cache none` of a 1 GiB dense raw. "default" names no aio (and leaves
# BLOCKMIRROR_AIO unset): whatever engine the build picks by default. One line per run on stdout (and in $OUT).
# Usage: bench/aio-uring.sh BLOCKMIRROR [SCRATCH_DIR]; RUNTIME (s per fio run), ROUNDS, AIOS ("threads io_uring",
# may add "default") and DIRECT (on|off) in the environment.
set -u
BM=${1:?usage: bench/aio-uring.sh PATH/TO/blockmirror}
D=${2:-/var/tmp/aio-uring-bench}
mkdir -p $D
IMG=$D/disk.raw
SRC=$D/src.raw
[ -f $IMG ] || dd if=/dev/urandom of=$IMG bs=1M count=1024 status=none
[ -f $SRC ] || dd if=/dev/urandom of=$SRC bs=1M count=1024 status=none
RUNTIME=${RUNTIME:-10}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-/dev/null}
AIOS=${AIOS:-threads io_uring}
DIRECT=${DIRECT:-on}
for round in $(seq 1 $ROUNDS); do
  for aio in $AIOS; do
    SOCK=$D/nbd.sock; rm -f $SOCK
    option=$([ $aio = default ] || echo ",aio=$aio")
    $BM serve --blockdev driver=file,node-name=file0,filename=$IMG,cache.direct=$DIRECT$option \
      --blockdev driver=raw,node-name=disk,file=file0 \
      --nbd-server addr.type=unix,addr.path=$SOCK \
      --export type=nbd,id=exp0,node-name=disk,name=disk,writable=on 2>$D/serve-$aio.log &
    pid=$!
    for i in $(seq 100); do [ -S $SOCK ] && break; sleep 0.05; done
    for rw in randread randwrite; do
      for depth in 1 16; do
        lat=$(fio --name=lat --ioengine=nbd --uri="nbd+unix:///disk?socket=$SOCK" --rw=$rw --bs=4k --iodepth=$depth \
          --size=1g --runtime=$RUNTIME --time_based --randseed=1 --output-format=json 2>/dev/null \
          | python3 -c "import json,sys; s=sys.stdin.read(); d=json.loads(s[s.index('{'):])['jobs'][0]; k='read' if 'read' in '$rw' else 'write'; c=d[k]['clat_ns']; print('%.1f %.0f %.1f' % (c['mean']/1000, d[k]['iops'], c['percentile']['99.000000']/1000))")
        echo "round=$round aio=$aio fio=$rw depth=$depth mean_us/iops/p99_us=$lat load=$(cut -d' ' -f1 /proc/loadavg)" | tee -a $OUT
      done
    done
    kill $pid; wait $pid 2>/dev/null
    rm -f $D/dst.raw
    t0=$(date +%s.%N)
    BLOCKMIRROR_AIO=$([ $aio = default ] || echo $aio) $BM mirror --cache none $SRC $D/dst.raw >/dev/null 2>$D/mirror-$aio.log || echo "mirror failed: $(tail -2 $D/mirror-$aio.log)"
    t1=$(date +%s.%N)
    echo "round=$round aio=$aio mirror_1GiB_s=$(echo "$t1 - $t0" | bc) load=$(cut -d' ' -f1 /proc/loadavg)" | tee -a $OUT
  done
done
rm -f $D/dst.raw

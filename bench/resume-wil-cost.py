#!/usr/bin/env python3
"""What the write-intent log costs a writer (issue 19): `blockmirror serve` exports a dense raw source over NBD and
mirrors it onto a raw target (blockdev-mirror, background mode), with and without
__org.blockmirror_write-intent-log. Once the job is READY and the log has had time to clear its regions (so the
first write into each region pays its mark and flush again), fio writes random blocks flat out through the export
for a fixed time; the row is fio's bandwidth with the log against without it (target: at least 0.95).
Runs alternate (without, with, without, with, ...) so that the machine's drift spreads over both.

    bench/resume-wil-cost.py BLOCKMIRROR DATA_DIR [SIZE_MIB] [ROUNDS] [SECONDS]
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import time

bm, data = sys.argv[1], sys.argv[2]
size = int(sys.argv[3]) if len(sys.argv) > 3 else 4096
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
seconds = int(sys.argv[5]) if len(sys.argv) > 5 else 10
os.makedirs(data, exist_ok=True)
src, tgt = f'{data}/wil-src.raw', f'{data}/wil-tgt.raw'
qmp_path, nbd_path = f'{data}/wil-qmp.sock', f'{data}/wil-nbd.sock'
if not os.path.exists(src) or os.path.getsize(src) != size << 20:
    subprocess.run(['dd', 'if=/dev/urandom', f'of={src}', 'bs=1M', f'count={size}', 'status=none'], check=True)


def run(block_size, log):
    for path in (tgt, qmp_path, nbd_path, src + '.blockmirror-wil'):
        if os.path.exists(path):
            os.remove(path)
    subprocess.run(['truncate', '-s', f'{size}M', tgt], check=True)
    daemon = subprocess.Popen([bm, 'serve',
        '--blockdev', f'driver=file,node-name=f0,filename={src},cache.direct=on',
        '--blockdev', 'driver=raw,node-name=src,file=f0',
        '--blockdev', f'driver=file,node-name=t0,filename={tgt},cache.direct=on',
        '--blockdev', 'driver=raw,node-name=tgt,file=t0',
        '--nbd-server', f'addr.type=unix,addr.path={nbd_path}',
        '--export', 'type=nbd,id=e,node-name=src,name=disk,writable=on',
        '--chardev', f'socket,id=m,path={qmp_path},server=on,wait=off', '--monitor', 'chardev=m'],
        stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if os.path.exists(qmp_path):
                break
            time.sleep(0.05)
        qmp = socket.socket(socket.AF_UNIX)
        qmp.connect(qmp_path)
        stream = qmp.makefile('rw')

        def command(name, **arguments):
            stream.write(json.dumps({'execute': name, 'arguments': arguments}) + '\n')
            stream.flush()
            while True:
                reply = json.loads(stream.readline())
                if 'return' in reply or 'error' in reply:
                    return reply

        stream.readline()
        command('qmp_capabilities')
        arguments = {'job-id': 'j', 'device': 'src', 'target': 'tgt', 'sync': 'full'}
        if log:
            arguments['__org.blockmirror_write-intent-log'] = True
        reply = command('blockdev-mirror', **arguments)
        if 'error' in reply:
            sys.exit(f'blockdev-mirror: {reply["error"]["desc"]}')
        while not any(job.get('ready') for job in command('query-block-jobs')['return']):
            time.sleep(0.1)
        # The log clears a region once it has been idle across two looks 2 s apart: let them all clear.
        time.sleep(6)
        fio = subprocess.run(['fio', '--name=w', '--ioengine=nbd', f'--uri=nbd+unix:///disk?socket={nbd_path}',
            '--rw=randwrite', f'--bs={block_size}', '--iodepth=16', f'--size={size}M', '--time_based',
            f'--runtime={seconds}', '--output-format=json'], capture_output=True, text=True, check=True)
        # fio may print notes before its JSON.
        bandwidth = json.loads(fio.stdout[fio.stdout.index('{'):])['jobs'][0]['write']['bw'] / 1024
        command('block-job-cancel', device='j')
        command('quit')
        return bandwidth
    finally:
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


print(f'{size} MiB dense raw source, fio randwrite iodepth 16 for {seconds} s through the NBD export, mirror READY')
for block_size in ('4k', '64k'):
    without, with_log = [], []
    for r in range(rounds):
        without.append(run(block_size, False))
        with_log.append(run(block_size, True))
        print(f'{block_size} round {r + 1}: without the log {without[-1]:.1f} MiB/s, with it {with_log[-1]:.1f} MiB/s', flush=True)
    a, b = statistics.median(without), statistics.median(with_log)
    print(f'row: {block_size} with the log / without = {b / a:.3f} (medians {b:.1f} / {a:.1f} MiB/s; target >= 0.95)')

#!/usr/bin/env python3
"""Peak resident memory of a daemon through one dense mirror over QMP, for quick comparisons of builds: a raw source
(random data, O_DIRECT) mirrored onto a raw target with blockdev-mirror, READY, then the daemon is killed. Prints
VmHWM (kB) and, at the highest VmRSS sampled (every 50 ms), the resident kB of each file mapping and of anonymous
memory. The scenarios' rows (blockmirror-scenarios --scenarios mirror) are the reference; this is the small case.

    bench/peak-rss.py DAEMON [SIZE_GIB] [RUNS]     DAEMON: a blockmirror executable or qemu-storage-daemon
"""
import collections
import json
import os
import socket
import subprocess
import sys
import time

daemon = sys.argv[1]
size = int(sys.argv[2]) if len(sys.argv) > 2 else 1
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 1
data = '/var/tmp/bm-peak-rss'
os.makedirs(data, exist_ok=True)
src, tgt, qmp = f'{data}/src.raw', f'{data}/tgt.raw', f'{data}/qmp.sock'
if not os.path.exists(src) or os.path.getsize(src) != size << 30:
    subprocess.run(['dd', 'if=/dev/urandom', f'of={src}', 'bs=1M', f'count={size << 10}', 'status=none'], check=True)


def resident(pid):
    by, name = collections.Counter(), None
    for line in open(f'/proc/{pid}/smaps'):
        fields = line.split()
        if '-' in fields[0] and not fields[0].endswith(':'):
            name = fields[5] if len(fields) > 5 else '[anonymous]'
        elif fields[0] == 'Rss:':
            by[name] += int(fields[1])
    return by


def run():
    for path in (tgt, qmp):
        if os.path.exists(path):
            os.remove(path)
    subprocess.run(['truncate', '-s', f'{size}G', tgt], check=True)
    command = ([daemon, 'serve'] if 'blockmirror' in os.path.basename(daemon) else [daemon]) + [
        '--blockdev', f'driver=file,node-name=src-file,filename={src},cache.direct=on',
        '--blockdev', 'driver=raw,node-name=src,file=src-file',
        '--chardev', f'socket,id=mon0,path={qmp},server=on,wait=off', '--monitor', 'chardev=mon0']
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    while not os.path.exists(qmp):
        time.sleep(0.01)
    monitor = socket.socket(socket.AF_UNIX)
    monitor.connect(qmp)
    lines = monitor.makefile('rb')

    def execute(name, arguments=None):
        monitor.sendall(json.dumps({'execute': name, 'arguments': arguments or {}}).encode() + b'\n')
        while 'return' not in (reply := json.loads(lines.readline())):
            if 'error' in reply:
                raise RuntimeError(f'{name}: {reply["error"]}')

    lines.readline()
    execute('qmp_capabilities')
    execute('blockdev-add', {'driver': 'file', 'node-name': 'tgt-file', 'filename': tgt, 'cache': {'direct': True}})
    execute('blockdev-add', {'driver': 'raw', 'node-name': 'tgt', 'file': 'tgt-file'})
    execute('blockdev-mirror', {'job-id': 'm', 'device': 'src', 'target': 'tgt', 'sync': 'full'})
    monitor.setblocking(False)
    received, peak, at_peak = b'', 0, None
    while b'BLOCK_JOB_READY' not in received:
        try:
            received += monitor.recv(65536)
        except BlockingIOError:
            pass
        status = open(f'/proc/{process.pid}/status').read()
        rss = int(status.split('VmRSS:')[1].split()[0])
        if rss > peak:
            peak, at_peak = rss, resident(process.pid)
        time.sleep(0.05)
    hwm = int(open(f'/proc/{process.pid}/status').read().split('VmHWM:')[1].split()[0])
    process.kill()
    process.wait()
    return hwm, at_peak


for _ in range(runs):
    hwm, at_peak = run()
    print(f'VmHWM {hwm} kB; at the peak sampled: ' +
          ', '.join(f'{os.path.basename(k)} {v}' for k, v in at_peak.most_common(4)))

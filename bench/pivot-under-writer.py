#!/usr/bin/env python3
# The switch under a busy guest (bench/README.md, "The switch under a busy guest"): blockmirror serve exports a
# 4 GiB O_DIRECT raw source over NBD; fio writes 64 KiB at random through it, flat out, depth 4; a background
# mirror copies onto a new O_DIRECT raw; 2 s after READY, block-job-complete. Prints the time from complete to
# BLOCK_JOB_COMPLETED, and strace records every fdatasync of the daemon with its duration (DIR/strace.log), to
# tell a slow flush from a loop that cannot find the bitmap clean.
# env: BIN (the blockmirror to run), DIR (scratch, ~8.5 GiB), SOURCE (a 4 GiB raw to copy from). Needs strace, fio.
import json, os, socket, subprocess, sys, time
B = os.environ.get('BIN', 'artifacts/blockmirror/blockmirror'); d = os.environ.get('DIR', '/var/tmp/pivot-under-writer'); os.makedirs(d, exist_ok=True); src = f'{d}/src.raw'; tgt = f'{d}/tgt.raw'
subprocess.run(['cp', '--sparse=never', os.environ.get('SOURCE', '/var/tmp/i17-bench/data/dense-4096M.raw'), src], check=True)
if os.path.exists(tgt): os.remove(tgt)
subprocess.run(['truncate', '-s', '4G', tgt], check=True)
subprocess.run('sync; echo 3 > /proc/sys/vm/drop_caches', shell=True); time.sleep(1)
for f in ('q.sock', 'nbd.sock'):
    try: os.remove(f'{d}/{f}')
    except FileNotFoundError: pass
p = subprocess.Popen([B, 'serve', '--blockdev', f'driver=file,node-name=sf,filename={src},cache.direct=on',
    '--blockdev', 'driver=raw,node-name=src,file=sf', '--nbd-server', f'addr.type=unix,addr.path={d}/nbd.sock',
    '--export', 'type=nbd,id=e,node-name=src,name=disk,writable=on',
    '--chardev', f'socket,id=m,path={d}/q.sock,server=on,wait=off', '--monitor', 'chardev=m'], stderr=subprocess.DEVNULL)
while not (os.path.exists(f'{d}/q.sock') and os.path.exists(f'{d}/nbd.sock')): time.sleep(0.05)
time.sleep(0.2)
st = subprocess.Popen(['strace', '-f', '-tt', '-T', '-e', 'trace=fdatasync,fsync', '-p', str(p.pid), '-o', f'{d}/strace.log'])
time.sleep(0.5)
s = socket.socket(socket.AF_UNIX); s.connect(f'{d}/q.sock'); f = s.makefile('rw')
events = []
def cmd(c, **a):
    f.write(json.dumps({'execute': c, 'arguments': a}) + '\n'); f.flush()
    while True:
        r = json.loads(f.readline())
        if 'event' in r: events.append((time.time(), r['event'])); continue
        if 'return' in r or 'error' in r: return r
f.readline(); cmd('qmp_capabilities')
cmd('blockdev-add', driver='file', **{'node-name': 'tf', 'filename': tgt, 'cache': {'direct': True}})
cmd('blockdev-add', driver='raw', **{'node-name': 'tgt', 'file': 'tf'})
fio = subprocess.Popen(f"fio --name=vm --ioengine=nbd --uri='nbd+unix:///disk?socket={d}/nbd.sock' --rw=randwrite --bs=64k --iodepth=4 --size=4G --runtime=40 --time_based --randseed=3 --output-format=json --output={d}/fio.json", shell=True)
time.sleep(1)
t0 = time.time()
cmd('blockdev-mirror', **{'job-id': 'j', 'device': 'src', 'target': 'tgt', 'sync': 'full'})
ready = None
while ready is None and time.time() - t0 < 35:
    j = cmd('query-block-jobs')['return']
    if j and j[0].get('ready'): ready = time.time() - t0
    time.sleep(0.05)
print('READY', ready and round(ready, 2), flush=True)
time.sleep(2)
tc = time.time(); print('complete at', time.strftime('%H:%M:%S', time.gmtime(tc)) + f'.{int(tc%1*1e6):06d}')
cmd('block-job-complete', device='j')
while not any(e == 'BLOCK_JOB_COMPLETED' for _, e in events):
    f.write(json.dumps({'execute': 'query-block-jobs'}) + '\n'); f.flush()
    while True:
        r = json.loads(f.readline())
        if 'event' in r: events.append((time.time(), r['event'])); continue
        break
    time.sleep(0.002)
done = [t for t, e in events if e == 'BLOCK_JOB_COMPLETED'][0]
print(f'pause {1000*(done-tc):.1f} ms')
fio.kill(); time.sleep(0.5); st.terminate(); cmd('quit'); p.wait()

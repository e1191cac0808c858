#!/usr/bin/env python3
# A guest's writes on the source while a mirror copies, with each node's file engine set on its own: which
# node's engine starves the guest (bench/README.md, "An adaptive default file engine, measured and not kept").
# blockmirror serve exports a 4 GiB O_DIRECT raw source over NBD; fio writes 64 KiB at random at 256 MiB/s,
# depth 4; after 1 s a mirror (background unless told) copies onto a new O_DIRECT raw. The writer is counted
# from fio's latency log between the mirror's start and READY, as the bench's live scenario counts it.
# usage: bench/live-starvation.py SRC_AIO TGT_AIO [copy-mode]   (aio: threads, io_uring, or none for the default)
# env: BIN (the blockmirror to run), DIR (scratch, ~8.5 GiB), SOURCE (a 4 GiB raw to copy from), RECOPY=1 (copy
# the source again before the run, as the bench does), PREALLOC=1 (fallocate the target instead of truncate),
# BUFSIZE (the mirror's buf-size in bytes; 1 MiB copies, so buf-size / 1 MiB of them in flight).
import json, os, socket, subprocess, sys, time
B = os.environ.get('BIN', 'artifacts/blockmirror/blockmirror')
saio, taio = sys.argv[1], sys.argv[2]; mode = sys.argv[3] if len(sys.argv) > 3 else 'background'
d = os.environ.get('DIR', '/var/tmp/live-starvation'); os.makedirs(d, exist_ok=True); src = f'{d}/src.raw'; tgt = f'{d}/tgt.raw'
if os.environ.get('RECOPY') or not os.path.exists(src):
    subprocess.run(['cp', '--sparse=never', os.environ.get('SOURCE', '/var/tmp/i17-bench/data/dense-4096M.raw'), src], check=True)
if os.path.exists(tgt): os.remove(tgt)
subprocess.run(['fallocate' if os.environ.get('PREALLOC') else 'truncate', *(['-l'] if os.environ.get('PREALLOC') else ['-s']), '4G', tgt], check=True)
subprocess.run('sync; echo 3 > /proc/sys/vm/drop_caches', shell=True); time.sleep(1)
for f in ('q.sock', 'nbd.sock'):
    try: os.remove(f'{d}/{f}')
    except FileNotFoundError: pass
aio = lambda a: '' if a == 'none' else f',aio={a}'
p = subprocess.Popen([B, 'serve', '--blockdev', f'driver=file,node-name=sf,filename={src},cache.direct=on{aio(saio)}',
    '--blockdev', 'driver=raw,node-name=src,file=sf', '--nbd-server', f'addr.type=unix,addr.path={d}/nbd.sock',
    '--export', 'type=nbd,id=e,node-name=src,name=disk,writable=on',
    '--chardev', f'socket,id=m,path={d}/q.sock,server=on,wait=off', '--monitor', 'chardev=m'], stderr=subprocess.DEVNULL)
while not (os.path.exists(f'{d}/q.sock') and os.path.exists(f'{d}/nbd.sock')): time.sleep(0.05)
time.sleep(0.2)
s = socket.socket(socket.AF_UNIX); s.connect(f'{d}/q.sock'); f = s.makefile('rw')
def cmd(c, **a):
    f.write(json.dumps({'execute': c, 'arguments': a}) + '\n'); f.flush()
    while True:
        r = json.loads(f.readline())
        if 'return' in r or 'error' in r: return r
f.readline(); cmd('qmp_capabilities')
targ = {'node-name': 'tf', 'filename': tgt, 'cache': {'direct': True}}
if taio != 'none': targ['aio'] = taio
print(cmd('blockdev-add', driver='file', **targ)['return'] == {}, end=' ')
cmd('blockdev-add', driver='raw', **{'node-name': 'tgt', 'file': 'tf'})
fio = subprocess.Popen(f"fio --name=vm --ioengine=nbd --uri='nbd+unix:///disk?socket={d}/nbd.sock' --rw=randwrite --bs=64k --iodepth=4 --size=4G --runtime=10 --time_based --randseed=3 --rate={os.environ.get('RATE', '256m')} --output-format=json --output={d}/fio.json --write_lat_log={d}/lat --log_unix_epoch=1", shell=True)
time.sleep(1)
t0 = time.time(); t0ms = t0 * 1000
margs = {'job-id': 'j', 'device': 'src', 'target': 'tgt', 'sync': 'full', 'copy-mode': mode}
if os.environ.get('BUFSIZE'): margs['buf-size'] = int(os.environ['BUFSIZE'])
cmd('blockdev-mirror', **margs)
ready = None
while fio.poll() is None:
    j = cmd('query-block-jobs')['return']
    if ready is None and j and j[0].get('ready'): ready = time.time() - t0
    time.sleep(0.1)
w = json.load(open(f'{d}/fio.json'))['jobs'][0]['write']
end = t0ms + (ready or 10) * 1000
lats = []; nbytes = 0
for line in open(f'{d}/lat_clat.1.log'):
    t, lat, _, bs, *_ = [int(x) for x in line.split(',')[:4]] + [0]
    if t0ms <= t <= end: lats.append(lat); nbytes += bs
lats.sort()
if lats: print(f"window: {nbytes / ((end - t0ms) / 1000) / 2**20:.0f} MiB/s p50 {lats[len(lats)//2]/1e6:.2f} p99 {lats[int(len(lats)*0.99)]/1e6:.1f} ms;", end=' ')
print(f"src={saio} tgt={taio} {mode}: writer {w['bw']/1024:.0f} MiB/s p50 {w['clat_ns']['percentile']['50.000000']/1e6:.2f} p99 {w['clat_ns']['percentile']['99.000000']/1e6:.1f} ms; READY {ready and round(ready,2)}")
j = cmd('query-block-jobs')['return']
if j and not ready: print(f"copied {j[0]['offset'] / 2**30:.2f} of {j[0]['len'] / 2**30:.2f} GiB by the end", end='; ')
cmd('block-job-cancel', device='j', force=True); time.sleep(0.5)
cmd('quit'); p.wait()

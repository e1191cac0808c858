#!/usr/bin/env python3
"""Writes src/BlockMirror.Cli/native-order.txt: the managed methods `blockmirror serve` runs once it serves,
which the native build places first in its code (ILC's --order, IlcOrderFile in the Cli project).

Why: once serve is ready it gives back the executable's start-up pages (Memory/StartupPages.cs), and what the
daemon then touches comes back in 64 KiB or more around each touch. Left in the compiler's default order, the few
hundred methods a mirror, the monitor and the NBD server run are spread over the whole 9 MiB of code, and the
resident set grows by most of it. Placed together they take about one MiB.

How the set is found (as root; needs perf, qemu-img, qemu-io, nbdcopy, fio and a free loop device):
- the executable is copied onto a small ext4 file system on a loop device whose read-ahead is 0, so a page that is
  not in the page cache comes in alone, and a touch of it is a page fault of its own;
- serve runs under `perf record -e page-faults -d`, with its madvise calls traced to find the release;
- right after the release the executable's page cache is dropped (posix_fadvise DONTNEED), so every code page
  the daemon touches from then on is one recorded fault;
- the daemon then does the benchmarks' work: a dense raw mirror (1 GiB) and a sparse qcow2 mirror over QMP
  (READY, complete), an NBD export read and written by nbdcopy, fio writing through it during the dense mirror
  (the live scenario's guest), the QMP queries;
- a fault names the method that was running when its page was first touched: that method surely runs. Those
  of the faults after the release are listed first, then those of start-up's (much of what runs later ran at
  start too: packing them together keeps the daemon's code in a few MiB).
A fault names one method per page, not the others on it that run later. Each round builds with the list of the
round before (the first with the repository's, or with none): the methods known to run are packed first, so the next
round's faults on the pages after them name methods not known yet. Names the compiler no longer has are ignored
by it: a stale list costs memory, never correctness.

    bench/native-order.py [ROUNDS] [--fresh]
        ROUNDS (default 8; a round takes a minute or two) from the list in the repository, or with --fresh from the
        compiler's own order; writes the list and prints what each round found.
"""
import bisect
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORDER = os.path.join(REPO, 'src/BlockMirror.Cli/native-order.txt')
rounds = next((int(a) for a in sys.argv[1:] if a.isdigit()), 8)
work = tempfile.mkdtemp(prefix='bm-native-order-', dir='/var/tmp')


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def publish(order, out):
    """The native build (as publish.sh makes it, symbols kept), laid out by ORDER when given."""
    args = ['dotnet', 'publish', 'src/BlockMirror.Cli', '-c', 'Release', '-r', 'linux-x64', '-p:PublishAot=true',
            '-v', 'quiet', '-nologo', '-o', out, f'-p:IlcOrderFile={order or ""}']
    sh(*args, cwd=REPO, stdout=subprocess.DEVNULL)
    return os.path.join(out, 'blockmirror')


class Monitor:
    def __init__(self, path):
        for _ in range(1000):
            if os.path.exists(path):
                break
            time.sleep(0.01)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        # Bytes, and writes straight to the socket: a text file that is written resets its decoder, and loses the
        # LF of a CRLF whose CR ended the last read (the next line would read empty).
        self.file = self.sock.makefile('rb')
        self.events = []
        json.loads(self.file.readline())
        self.run('qmp_capabilities')

    def run(self, command, arguments=None):
        message = {'execute': command}
        if arguments:
            message['arguments'] = arguments
        self.sock.sendall(json.dumps(message).encode() + b'\n')
        while True:
            reply = json.loads(self.file.readline())
            if 'event' in reply:
                self.events.append(reply)
            elif 'error' in reply:
                raise RuntimeError(f'{command}: {reply["error"]}')
            else:
                return reply['return']

    def wait(self, event, job):
        while True:
            for e in self.events:
                if e['event'] == event and e['data'].get('device') == job:
                    self.events.remove(e)
                    return
            self.events.append(json.loads(self.file.readline()))

    def quit(self):
        self.sock.sendall(b'{"execute": "quit"}\n')


def workload(exe, data, trace):
    """serve under perf, doing the benchmarks' work (bench/BlockMirror.Scenarios: mirror, sparse-qmp, nbd, live) at a
    smaller size; the executable's page cache is dropped right after the release."""
    d = os.path.join(data, 'images')
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    sh('dd', 'if=/dev/urandom', f'of={d}/src.raw', 'bs=1M', 'count=1024', 'status=none')
    sh('truncate', '-s', '1G', f'{d}/tgt.raw')
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', f'{d}/src.qcow2', '4G')
    sh('qemu-io', '-f', 'qcow2', '-c', 'write -P 7 0 128M', '-c', 'write -P 9 2G 64M', '-c', 'write -z 3G 4M',
       f'{d}/src.qcow2', stdout=subprocess.DEVNULL)
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', f'{d}/tgt.qcow2', '4G')
    qmp, nbd = f'{d}/qmp.sock', f'{d}/nbd.sock'
    daemon = subprocess.Popen(
        ['perf', 'record', '-q', '-e', 'page-faults', '-c', '1', '-d', '-e', 'syscalls:sys_enter_madvise', '-o', trace,
         exe, 'serve',
         '--blockdev', f'driver=file,node-name=f0,filename={d}/src.raw,cache.direct=on',
         '--blockdev', 'driver=raw,node-name=src,file=f0',
         '--blockdev', f'driver=file,node-name=q0,filename={d}/src.qcow2', '--blockdev', 'driver=qcow2,node-name=q,file=q0',
         '--nbd-server', f'addr.type=unix,addr.path={nbd}',
         '--export', 'type=nbd,id=e0,node-name=src,name=src,writable=on',
         '--chardev', f'socket,id=mon0,path={qmp},server=on,wait=off', '--monitor', 'chardev=mon0'],
        stderr=open(os.path.join(data, 'serve.log'), 'w'), start_new_session=True)
    try:
        run_workload(exe, d, qmp, nbd)
    except BaseException:
        os.killpg(daemon.pid, signal.SIGKILL)  # perf and serve both: the loop device must unmount
        raise
    finally:
        daemon.wait()


def run_workload(exe, d, qmp, nbd):
    monitor = Monitor(qmp)
    time.sleep(0.5)
    fd = os.open(exe, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    uri = f'nbd+unix:///src?socket={nbd}'
    for command in ('query-version', 'query-named-block-nodes', 'query-block-exports', 'query-block'):
        monitor.run(command)
    sh('nbdcopy', uri, 'null:')
    sh('qemu-io', '-f', 'raw', '-c', 'write -P 3 0 1M', '-c', 'read -P 3 0 1M', '-c', 'write -z 2M 1M',
       '-c', 'discard 4M 1M', '-c', 'flush', uri, stdout=subprocess.DEVNULL)
    for fmt, source, target in (('raw', 'src', f'{d}/tgt.raw'), ('qcow2', 'q', f'{d}/tgt.qcow2')):
        monitor.run('blockdev-add', {'driver': 'file', 'node-name': f't-{fmt}-file', 'filename': target, 'cache': {'direct': True}})
        monitor.run('blockdev-add', {'driver': fmt, 'node-name': f't-{fmt}', 'file': f't-{fmt}-file'})
        monitor.run('blockdev-mirror', {'job-id': f'm-{fmt}', 'device': source, 'target': f't-{fmt}', 'sync': 'full'})
        if fmt == 'raw':
            # The live scenario's guest: 64 KiB random writes through the export while the mirror copies.
            sh('fio', '--name=vm', '--ioengine=nbd', f'--uri={uri}', '--rw=randwrite', '--bs=64k', '--iodepth=4',
               '--size=1G', '--time_based', '--runtime=2', '--output=/dev/null')
        monitor.run('query-block-jobs')
        monitor.wait('BLOCK_JOB_READY', f'm-{fmt}')
        monitor.run('block-job-complete', {'device': f'm-{fmt}'})
        monitor.wait('BLOCK_JOB_COMPLETED', f'm-{fmt}')
        monitor.run('query-blockstats')
    sh('nbdcopy', uri, 'null:')
    sh('nbdcopy', f'{d}/src.raw', uri)
    monitor.quit()


def touched(exe, dbg, trace):
    """The methods running when a page of the executable was first touched after StartupPages' release, then those of
    start-up's first touches, each in first-touch order; and the number of pages touched after the release."""
    script = subprocess.run(['perf', 'script', '-i', trace, '--show-mmap-events', '-F', 'event,addr,trace'],
                            capture_output=True, text=True, check=True).stdout
    base = int(re.search(r'\[0x([0-9a-f]+)\(0x[0-9a-f]+\) @ 0 [^\]]*\]: r--p ' + re.escape(exe), script).group(1), 16)
    symbols = []
    for line in subprocess.run(['nm', '-n', '-S', '--defined-only', dbg], capture_output=True, text=True, check=True).stdout.splitlines():
        f = line.split(maxsplit=3)
        if len(f) == 4 and f[2] in 'tT' and int(f[1], 16) > 0:
            symbols.append((int(f[0], 16), int(f[1], 16), f[3].strip()))
    symbols.sort()
    starts = [s[0] for s in symbols]
    released, pages, after, before = False, set(), {}, {}
    for line in script.splitlines():
        if 'PERF_RECORD' in line:
            continue
        if 'madvise' in line:
            m = re.search(r'start: 0x([0-9a-f]+).*behavior: 0x0*4\b', line)
            if m and 0 <= int(m.group(1), 16) - base < 1 << 30 and not released:
                released, pages = True, set()
            continue
        fields = line.split()
        if not fields:
            continue
        address = int(fields[-1], 16) - base
        if not 0 <= address < 1 << 30 or address & ~0xfff in pages:
            continue
        pages.add(address & ~0xfff)
        i = bisect.bisect_right(starts, address) - 1
        if i >= 0 and address < symbols[i][0] + symbols[i][1]:
            (after if released else before).setdefault(symbols[i][2], None)
    return len(pages), list(after) + [name for name in before if name not in after]


def main():
    if os.geteuid() != 0:
        sys.exit('native-order.py: needs root (a loop device and perf)')
    image, mount = os.path.join(work, 'fs.img'), os.path.join(work, 'fs')
    os.makedirs(mount)
    sh('truncate', '-s', '96M', image)  # the executable (18 MiB) and nothing else
    sh('mkfs.ext4', '-q', '-F', image)
    loop = subprocess.run(['losetup', '-f', '--show', image], capture_output=True, text=True, check=True).stdout.strip()
    try:
        with open(f'/sys/block/{os.path.basename(loop)}/queue/read_ahead_kb', 'w') as f:
            f.write('0')
        sh('mount', loop, mount)
        # Go on from the list in the repository unless told --fresh (names it has that no longer run move to
        # its end; the compiler ignores those it no longer has).
        fresh = '--fresh' in sys.argv or not os.path.exists(ORDER)
        ran, order = ([], None) if fresh else (open(ORDER).read().split(), ORDER)
        for n in range(rounds):
            build = publish(order, os.path.join(work, f'build{n}'))
            exe = os.path.join(mount, 'blockmirror')
            shutil.copy(build, exe)
            sh('umount', mount)
            sh('mount', loop, mount)
            trace = os.path.join(work, f'round{n}.data')
            try:
                workload(exe, work, trace)
            except Exception:
                with open(os.path.join(work, 'serve.log')) as log:
                    print('serve said:', log.read()[-4000:], file=sys.stderr)
                raise
            pages, first = touched(exe, build + '.dbg', trace)
            known = set(first)
            ran = first + [name for name in ran if name not in known]
            print(f'round {n + 1}: {pages} pages touched after the release; {len(ran)} methods known to run')
            order = os.path.join(work, f'order{n}.txt')
            with open(order, 'w') as f:
                f.write('\n'.join(ran) + '\n')
            os.remove(exe)
        shutil.copy(order, ORDER)
        print(f'wrote {ORDER}')
    finally:
        subprocess.run(['umount', mount], stderr=subprocess.DEVNULL)
        subprocess.run(['losetup', '-d', loop])
        shutil.rmtree(work, ignore_errors=True)


main()

#!/usr/bin/env python3
"""Per-function EL2 instruction profile from a QEMU TCG log.

Usage:
    qemu-system-aarch64 ... -icount shift=0 -d in_asm,exec,nochain -D qemu.log
    tools/el2-profile.py HYP_ELF qemu.log [COUNT ...]

HYP_ELF is the hypervisor ELF the image was made from
(target/aarch64-unknown-none-softfloat/release/rampart-hyp right after the
build). `-d in_asm` gives every translation block's instructions, `-d
exec,nochain` every execution of one, so the log holds the exact
instruction stream. The script splits it into EL2 episodes (maximal runs
of blocks whose PC lies in the hypervisor's image: one exception taken to
EL2 until the ERET that leaves it), labels each by where it came from and
went to (`host`: the test host's image at 0x42000000; `guest`: anything
else), and prints how often each (instruction count, from, to) occurred.
An episode's count is exactly what `cargo xtask bench` reports for a call
the test host's PMU can see (e.g. 198 for the unknown HVC), so a figure
from the bench names its episode. For each COUNT given, the first
episode of that many instructions is broken down by function (the symbol
of each block's first PC; inlined code counts for its caller); with
SEQ=1 also as the sequence of functions in execution order.

`docs/perf.md` ("Where the instructions go") shows how it was used.
"""
import bisect
import collections
import os
import re
import subprocess
import sys

HOST = (0x4200_0000, 0x4220_0000)

elf, log = sys.argv[1], sys.argv[2]
wanted = {int(x) for x in sys.argv[3:]}
syms = []
nm = subprocess.run(['llvm-nm', '-C', '--defined-only', '-n', elf], capture_output=True, text=True, check=True)
for line in nm.stdout.splitlines():
    parts = line.split(' ', 2)
    if len(parts) == 3 and parts[1] in 'tTwW':
        syms.append((int(parts[0], 16), parts[2]))
addrs = [a for a, _ in syms]
lo, hi = addrs[0], addrs[-1] + 0x10000


def sym(pc):
    i = bisect.bisect_right(addrs, pc) - 1
    return syms[i][1] if i >= 0 else '?'


tbsize = {}
cur_in = None
episodes = collections.Counter()
hist = {}
ep_tbs, ep_n = [], 0
in_el2 = False
prev_kind = 'reset'
re_in = re.compile(r'^0x([0-9a-f]+):\s')
re_tr = re.compile(r'^Trace \d+: 0x[0-9a-f]+ \[[0-9a-f]+/([0-9a-f]+)/')


def close(next_kind):
    global ep_tbs, ep_n
    if ep_n:
        episodes[(ep_n, prev_kind, next_kind)] += 1
        if ep_n in wanted and ep_n not in hist:
            hist[ep_n] = (prev_kind, next_kind, list(ep_tbs))
    ep_tbs, ep_n = [], 0


with open(log, errors='replace') as f:
    for line in f:
        if line.startswith('IN:'):
            cur_in = None
            continue
        m = re_in.match(line)
        if m:
            pc = int(m.group(1), 16)
            if cur_in is None:
                cur_in = pc
                tbsize[pc] = 0
            tbsize[cur_in] += 1
            continue
        m = re_tr.match(line)
        if m:
            cur_in = None
            pc = int(m.group(1), 16)
            n = tbsize.get(pc, 0)
            if lo <= pc < hi:
                in_el2 = True
                ep_tbs.append((pc, n))
                ep_n += n
            else:
                kind = 'host' if HOST[0] <= pc < HOST[1] else 'guest'
                if in_el2:
                    close(kind)
                    in_el2 = False
                prev_kind = kind
    if in_el2:
        close('end')

for (n, a, b), c in sorted(episodes.items(), key=lambda x: -x[1])[:60]:
    print(f'{n:10} x{c:<6} {a} -> {b}')
for n, (a, b, tbs) in hist.items():
    per = collections.Counter()
    for pc, k in tbs:
        per[sym(pc)] += k
    print(f'\n== episode of {n} instructions ({a} -> {b})')
    for s, k in per.most_common():
        print(f'{k:8}  {s[:140]}')
    if os.environ.get('SEQ'):
        print(f'\n== sequence of {n}')
        last, acc, start = None, 0, 0
        for pc, k in tbs + [(0, 0)]:
            s = sym(pc)[:100] if k else None
            if s != last:
                if last:
                    print(f'{acc:8} {start:#x} {last}')
                last, acc, start = s, 0, pc
            acc += k

#!/usr/bin/env python3
"""What EL2 does while a host runs: every entry into the hypervisor, grouped
by what handled it, from a QEMU TCG log restricted to the hypervisor's
image (so a whole Linux host boot can be logged).

Usage:
    qemu-system-aarch64 <the machine> -icount shift=0 \
        -d in_asm,exec,nochain -dfilter 0x40200000..0x41200000 -D /tmp/el2.log
    tools/el2-host-census.py HYP_ELF /tmp/el2.log [SKIP]

HYP_ELF is the hypervisor ELF the image was made from. An entry is a block
executed at one of the exception vectors (`vectors` + n * 0x80), or any
block of the image after a gap in the log (a CPU starting at Rampart's
entry). SKIP (default 0) entries are left out: the boot's own episode is
the first, so 1 counts only what the host caused. Each entry is labelled by
the vector it came in at and the hypervisor functions it ran (the symbols
of its blocks that name a handler: `host_smc`, `hypercall`, `gicr_guard`,
`control`, `inject`, `cpu_on`, ... else the first non-vector function), and
the output gives per label the number of entries and their EL2
instructions (total, min, max).
"""
import bisect
import collections
import re
import subprocess
import sys

elf, log = sys.argv[1], sys.argv[2]
skip = int(sys.argv[3]) if len(sys.argv) > 3 else 0
syms = []
nm = subprocess.run(['llvm-nm', '-C', '--defined-only', '-n', elf], capture_output=True, text=True, check=True)
vectors = None
for line in nm.stdout.splitlines():
    parts = line.split(' ', 2)
    if len(parts) == 3 and parts[1] in 'tTwW':
        syms.append((int(parts[0], 16), parts[2]))
        if parts[2] == 'vectors':
            vectors = int(parts[0], 16)
addrs = [a for a, _ in syms]
KINDS = ['sync EL2t', 'irq EL2t', 'fiq EL2t', 'serror EL2t', 'sync EL2h', 'irq EL2h', 'fiq EL2h', 'serror EL2h',
         'sync lower64', 'irq lower64', 'fiq lower64', 'serror lower64',
         'sync lower32', 'irq lower32', 'fiq lower32', 'serror lower32']


def sym(pc):
    i = bisect.bisect_right(addrs, pc) - 1
    return syms[i][1] if i >= 0 else '?'


HANDLERS = ['host_smc', 'cpu_on', 'cpu_suspend', 'cpu_off', 'hypercall', 'run_call', 'fast_call', 'gicr_guard',
            'control..handle', 'control::handle', 'inject_abort', 'inject_into_host', 'retry_after_race',
            'secondary_main', 'primary_main', 'vcpu', 'host_timer', 'wipe_and_reset', 'forward', 'smc::classify']

re_in = re.compile(r'^0x([0-9a-f]+):\s')
re_tr = re.compile(r'^Trace \d+: 0x[0-9a-f]+ \[[0-9a-f]+/([0-9a-f]+)/')
tbsize = {}
cur_in = None
episodes = []  # (kind, label set, instructions)
cur = None


def close():
    global cur
    if cur is not None:
        episodes.append(cur)
    cur = None


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
        if not m:
            continue
        cur_in = None
        pc = int(m.group(1), 16)
        n = tbsize.get(pc, 0)
        off = pc - vectors if vectors is not None else -1
        if 0 <= off < 0x800 and off % 0x80 == 0:
            close()
            cur = [KINDS[off // 0x80], set(), 0, None]
        elif cur is None:
            cur = ['entry', set(), 0, None]
        s = sym(pc)
        for h in HANDLERS:
            if h in s:
                cur[1].add(h.replace('..', '::'))
        if cur[3] is None and s != 'vectors' and 'handle_exception' not in s and 'handle_sync' not in s:
            cur[3] = s
        cur[2] += n
close()

per = collections.defaultdict(list)
for kind, labels, n, first in episodes[skip:]:
    label = ', '.join(sorted(labels)) if labels else (first or '?')[:80]
    per[(kind, label)].append(n)
total = sum(sum(v) for v in per.values())
print(f'{len(episodes) - skip} EL2 entries, {total} EL2 instructions (after skipping {skip})')
print(f'{"entries":>8} {"instructions":>12} {"min":>7} {"max":>7}  vector: handlers')
for (kind, label), v in sorted(per.items(), key=lambda kv: -sum(kv[1])):
    print(f'{len(v):8} {sum(v):12} {min(v):7} {max(v):7}  {kind}: {label}')

#!/usr/bin/env python3
"""EL2's boot, instruction by instruction: from reset to the host's first
instruction, by function and by crate, from a QEMU TCG log read as it is
written (so the run can be stopped right after the boot).

Usage:
    mkfifo /tmp/boot.fifo
    tools/el2-boot-profile.py HYP_ELF /tmp/boot.fifo [HOST_ENTRY] &
    qemu-system-aarch64 <the machine> -icount shift=0 \
        -d in_asm,exec,nochain -D /tmp/boot.fifo

HYP_ELF is the hypervisor ELF the image was made from
(target/aarch64-unknown-none-softfloat/release/rampart-hyp). HOST_ENTRY
(default 0x42000000, `rampart.host=`) is where the host starts: the script
stops reading at the first block executed there, counts every instruction
executed inside the hypervisor's image before it (`-d in_asm` gives each
translation block's size, `-d exec,nochain` each execution of one), and
closes the pipe, which ends QEMU's logging (kill QEMU then). Secondary
CPUs are still parked in firmware at that point, so this is the boot
CPU's work alone. QEMU's own boot stub (a few instructions at address 0)
is not counted.

Output: the total, the instructions per crate (by the demangled symbol of
each block's first PC: code inlined into a caller counts for the caller's
crate) and the top functions. With ORDER=1 also the phases in the order
the boot ran them (consecutive blocks of one symbol merged).
"""
import bisect
import collections
import os
import re
import subprocess
import sys

elf, log = sys.argv[1], sys.argv[2]
host_entry = int(sys.argv[3], 0) if len(sys.argv) > 3 else 0x4200_0000

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


# Crate of a demangled symbol: the first known crate path in it, so that
# `<alloc::vec::Vec<T> as core::clone::Clone>::clone` is alloc's and
# `core::ptr::drop_in_place<dtoolkit::model::Node>` is dtoolkit's.
CRATES = ['dtoolkit', 'rampart_platform', 'rampart_ownership', 'rampart_attest', 'rampart_abi',
          'aarch64_paging', 'buddy_system_allocator', 'linked_list_allocator', 'hashbrown',
          'ed25519', 'curve25519', 'sha2', 'hkdf', 'hmac', 'rampart_hyp', 'alloc', 'core']
re_crate = re.compile(r'\b(' + '|'.join(CRATES) + r')(::|\.\.)')
BUILTINS = {'memcpy', 'memset', 'memmove', 'memcmp', 'bcmp', '__aarch64_cas8_acq_rel'}


def crate(s):
    if s in BUILTINS or s.startswith('compiler_builtins'):
        return 'memcpy/memset/memmove/memcmp'
    m = re_crate.search(s)
    # Raw-named functions (assembly, #[no_mangle]) are the hypervisor's.
    return m.group(1) if m else 'rampart_hyp (asm, extern "C")'


re_in = re.compile(r'^0x([0-9a-f]+):\s')
re_tr = re.compile(r'^Trace \d+: 0x[0-9a-f]+ \[[0-9a-f]+/([0-9a-f]+)/')
tbsize = {}
cur_in = None
per_fn = collections.Counter()
order = []
first_seen = {}
total = 0
outside = 0
reached = False
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
            if pc == host_entry:
                reached = True
                break
            n = tbsize.get(pc, 0)
            if lo <= pc < hi:
                s = sym(pc)
                per_fn[s] += n
                total += n
                if s not in first_seen:
                    first_seen[s] = total - n
                if os.environ.get('ORDER'):
                    if order and order[-1][0] == s:
                        order[-1][1] += n
                    else:
                        order.append([s, n])
            else:
                outside += n

if not reached:
    print(f'warning: the log ended before the host entry {host_entry:#x}', file=sys.stderr)
print(f'EL2 boot: {total} instructions in the hypervisor image before the host entry {host_entry:#x}'
      f' ({outside} outside it: QEMU boot stub, firmware)')
per_crate = collections.Counter()
for s, n in per_fn.items():
    per_crate[crate(s)] += n
print('\n== by crate')
for c, n in per_crate.most_common():
    print(f'{n:10}  {100 * n / max(total, 1):5.1f}%  {c}')
print('\n== top functions')
for s, n in per_fn.most_common(int(os.environ.get('TOP', '50'))):
    print(f'{n:10}  {s[:160]}')
if order:
    # Phases: the instructions between the first calls of the boot's
    # own functions (the hypervisor's and rampart_platform's), in order.
    marks = sorted((at, s) for s, at in first_seen.items()
                   if re.search(r'rampart_(hyp|platform|attest|ownership)(::|\.\.)', s))
    print('\n== phases: instructions from the first call of each function to the next such first call')
    for (at, s), nxt in zip(marks, marks[1:] + [(total, '')]):
        if nxt[0] - at >= int(os.environ.get('MIN', '5000')):
            print(f'{nxt[0] - at:10}  at {at:9}  {s[:150]}')

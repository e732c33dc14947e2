# A hostile host's user space gives a VM a page its own kernel is using
# (packed by xtask/src/linux_vmm.rs, sourced by /init). The hypervisor
# allows it (the host owns the page); the kernel's next touch of the page
# must be reported on the console, never a silent hang. xtask prepends
# `TARGET=<kernel text symbol>`:
#   uptime_proc_show  a page of ordinary kernel functions (`cat /proc/uptime`
#                     runs them): the kernel oopses ("Internal error:
#                     synchronous external abort"); xtask boots it with
#                     `oops=panic`, so it then reboots
#   vectors           the exception vectors: the kernel cannot even take
#                     the abort; the hypervisor says so and resets

mark() { printf 'RAMPART-VMM-TEST: %s\n' "$*"; }

# kernel_pa SYMBOL: the physical address of the page holding kernel text
# symbol SYMBOL: /proc/kallsyms gives virtual addresses (only text symbols
# in Debian's kernel), /proc/iomem's "Kernel code" starts at _stext, and
# the kernel image is mapped linearly.
kernel_pa() {
	stext_va=$(sed -n 's/^\([0-9a-f]*\) . _stext$/\1/p' /proc/kallsyms | head -n 1)
	sym_va=$(sed -n "s/^\([0-9a-f]*\) . $1\$/\1/p" /proc/kallsyms | head -n 1)
	code_pa=$(sed -n 's/^ *\([0-9a-f]*\)-[0-9a-f]* : Kernel code$/\1/p' /proc/iomem | head -n 1)
	[ -n "$stext_va" ] && [ -n "$sym_va" ] && [ -n "$code_pa" ] || return 1
	printf '0x%x' $(((0x$sym_va - 0x$stext_va + 0x$code_pa) & ~0xfff))
}

pa=$(kernel_pa "$TARGET")
if [ -z "$pa" ]; then
	mark "kernel-page FAIL no address for $TARGET in /proc/kallsyms"
else
	mark "kernel-page donating the page of $TARGET at $pa"
	/bin/rampart-vmm donate-host-pages "$pa" 1
	mark "kernel-page donated"
	i=0
	while [ "$i" -lt 20 ]; do
		cat /proc/uptime >/dev/null 2>&1
		usleep 100000
		i=$((i + 1))
	done
	mark "kernel-page the kernel still runs 2 s after losing the page of $TARGET"
fi

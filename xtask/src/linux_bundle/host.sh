# Sourced by the Linux host's /init (xtask/src/linux/init.sh), packed by
# xtask/src/linux_bundle.rs (issue 12): signed version-2 bundles of Debian's
# kernel under rampart-vmm as protected VMs. First the three tampered
# bundles (a flipped byte in the kernel, the initrd, the command line,
# re-packed but not re-signed): the hypervisor must refuse each at its
# first run. Then the signed bundle: it must boot to the guest's /init.
for b in kernel initrd cmdline; do
	say "bundle tampered-$b: run"
	rampart-vmm run --name "tampered-$b" "/guest/tampered-$b.bundle" </dev/null >/run/b.log 2>&1
	say "bundle tampered-$b: exit status $?"
	sed 's/^/RAMPART-INIT: | /' /run/b.log | grep -v ' stats: '
done
say "bundle signed: run"
# A limit: a protected non-realm VM is enrolled in MMIO guard from its
# creation, and Debian's kernel (no pKVM guest driver) never maps its MMIO
# through the guard, so it may never reach /init (docs/formats.md).
rampart-vmm run --name linux /guest/signed.bundle </dev/null >/run/guest.log 2>&1 &
pid=$!
n=0
while kill -0 "$pid" 2>/dev/null; do
	sleep 1
	n=$((n + 1))
	if [ $n -ge "${GUEST_LIMIT:-60}" ]; then
		say "bundle signed: no power-off within $n s: SIGTERM"
		kill -TERM "$pid"
		break
	fi
done
wait
cat /run/guest.log | grep -v ' stats: '
say "bundle signed: done"
st=$(sed -n 's/.*rampart-vmm: exit status \([0-9]*\)$/\1/p' /run/guest.log | tail -n 1)
say "rampart-vmm exit status ${st:-unknown}"
ram=$(sed -n 's/.* MiB of RAM at \(0x[0-9a-f]*\) donated.*/\1/p' /run/guest.log | head -n 1)
mib=$(sed -n 's/.*vCPUs*, \([0-9]*\) MiB of RAM at.*/\1/p' /run/guest.log | head -n 1)
if [ -n "$ram" ] && [ -n "$mib" ]; then
	last=$(printf '0x%x' $((ram + mib * 1048576 - 8)))
	say "guest RAM after the run: $ram $(devmem "$ram" 64) $last $(devmem "$last" 64)"
fi
rampart-vmm list | sed 's/^/RAMPART-INIT: list: /'
# kill -9 of the VMM once the protected VM is built and running: its RAM
# stays the guest's (SIGBUS from /dev/mem) until `rampart-vmm reclaim`
# destroys the orphan, which leaves it zeroed.
rampart-vmm run --name killed /guest/signed.bundle </dev/null >/run/killed.log 2>&1 &
pid=$!
n=0
while ! grep -q "console: pl011" /run/killed.log && [ $n -lt 600 ]; do usleep 100000; n=$((n + 1)); done
sleep 2
ram=$(sed -n 's/.* MiB of RAM at \(0x[0-9a-f]*\) donated.*/\1/p' /run/killed.log | head -n 1)
probe() {
	out=$(devmem "$1" 64 2>&1)
	st=$?
	if [ "$st" -eq 135 ]; then echo SIGBUS; elif [ "$st" -eq 0 ]; then echo "$out"; else echo "ERROR $st"; fi
}
before=$(probe "$ram")
kill -9 "$pid"
wait "$pid" 2>/dev/null
orphan=$(probe "$ram")
rampart-vmm reclaim 2>&1 | sed 's/^/RAMPART-INIT: reclaim: /'
after=$(probe "$ram")
say "kill -9: guest RAM $ram while running: $before, after the kill: $orphan, after reclaim: $after"

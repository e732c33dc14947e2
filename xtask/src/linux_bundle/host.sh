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
rampart-vmm run --name linux /guest/signed.bundle </dev/null 2>&1 | tee /run/guest.log
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

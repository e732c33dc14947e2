# Packed above the realm's part of the Linux host's /init (host.sh) in the
# case linux-realm/smp2/vcpus2 only (xtask/src/linux_realm.rs; issue 12's
# verified boot); host.sh calls realm_bundle_checks before the realm runs.
# The bundles in /guest were packed with `rampart-vmm pack --realm` from
# the realm's own kernel, initrd and command line, with the least RAM that
# holds them (the hypervisor measures every page of a VM before it refuses
# it: a small VM keeps the refused runs cheap; the measurement still
# covers every part):
#   reference.bundle          signed: the control, must be accepted;
#   tampered-{kernel,initrd,cmdline}.bundle
#                             one flipped byte in that part, re-packed,
#                             with reference.bundle's signature copied in.
# Each tampered bundle must be refused at its first VCPU_RUN with the
# hypervisor's BAD_SIGNATURE, which rampart-vmm prints (exit status 4). The
# reference bundle must be accepted (its first VCPU_RUN returns an exit),
# so the refusals come from the flipped bytes alone; SIGTERM then tears it
# down: the VMM's teardown report, exit status 143, its RAM reads zero.
up() { cut -d' ' -f1 /proc/uptime; }
since() { awk "BEGIN { printf \"%.1f\", $(up) - $1 }"; }
realm_bundle_checks() {
	t_bundles=$(up)
	for b in kernel initrd cmdline; do
		t0=$(up)
		rampart-vmm run --name "tampered-$b" "/guest/tampered-$b.bundle" </dev/null >/run/b.log 2>&1
		st=$?
		say "bundle tampered-$b: exit status $st after $(since "$t0") s"
		grep -v ' stats: ' /run/b.log | sed 's/^/RAMPART-INIT: | /'
	done
	t0=$(up)
	rampart-vmm run --name reference /guest/reference.bundle </dev/null >/run/ref.log 2>&1 &
	pid=$!
	n=0
	accepted=
	while kill -0 "$pid" 2>/dev/null && [ $n -lt 600 ]; do
		if rampart-vmm stats 2>/dev/null | grep -q "first exit [0-9]"; then
			accepted=1
			break
		fi
		usleep 200000
		n=$((n + 1))
	done
	if [ -n "$accepted" ]; then
		say "bundle reference: accepted: its first VCPU_RUN returned within $(since "$t0") s"
	else
		say "bundle reference: no first exit within $(since "$t0") s"
	fi
	kill -TERM "$pid" 2>/dev/null
	wait "$pid"
	st=$?
	say "bundle reference: exit status $st"
	grep -v ' stats: ' /run/ref.log | sed 's/^/RAMPART-INIT: | /'
	ram=$(sed -n 's/.* MiB of RAM at \(0x[0-9a-f]*\) donated.*/\1/p' /run/ref.log | head -n 1)
	mib=$(sed -n 's/.*vCPUs*, \([0-9]*\) MiB of RAM at.*/\1/p' /run/ref.log | head -n 1)
	if [ -n "$ram" ] && [ -n "$mib" ]; then
		last=$(printf '0x%x' $((ram + mib * 1048576 - 8)))
		say "bundle reference: RAM after the teardown: $ram $(probe "$ram") $last $(probe "$last")"
	fi
	say "bundles: the four runs took $(since "$t_bundles") s"
}

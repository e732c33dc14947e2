# Sourced by the Linux host's /init (xtask/src/linux/init.sh), packed by
# xtask/src/linux_realm.rs (issue 12): Debian's kernel as a *realm* under
# rampart-vmm, from a signed version-2 bundle, with the virtio devices of
# the issue-11 run (/virtio-host.sh, sourced first: disks, vsock, console).
# The challenge for the guest's attestation token is the first 64 bytes of
# the exchange disk (random, written by /virtio-host.sh). While the guest
# pauses, this host scans the realm's RAM through /dev/mem (scan-ram) for
# the guest's secret and its disk marker, and reads its first page with
# devmem (which must die of SIGBUS).
# REALM_TEST=1 (the test case, not the demo): first the signed and
# tampered bundles' runs (tamper.sh, packed above this part), then the
# realm; its bundle's command line has rguest.sleep=1, so the guest sleeps
# once its checks are done, and this host kills rampart-vmm with kill -9.
# The hypervisor still holds the orphaned VM, so its first page still dies
# of SIGBUS; the next rampart-vmm session (`list`) destroys it in its
# clean-up (the pool table names the dead pid), or else `rampart-vmm
# reclaim` does, and then every page of its RAM must read zero (scan-ram
# counts the non-zero ones). Without it (the demo) the guest powers off and
# rampart-vmm tears the VM down itself.
# The VMM's pid is the one its own shell wrote before exec (never `pidof
# rampart-vmm`: the vsock tools are links to rampart-vmm, so pidof names
# them too, and the loop below would end with the first of them).
probe() { # $1: a physical address; prints SIGBUS, the word read, or ERROR
	out=$(devmem "$1" 64 2>&1)
	st=$?
	if [ "$st" -eq 135 ]; then echo SIGBUS; elif [ "$st" -eq 0 ]; then echo "$out"; else echo "ERROR $st"; fi
}
# Before the virtio part: its helpers start waiting for the realm's log.
[ -n "$REALM_TEST" ] && realm_bundle_checks
. /virtio-host.sh
# virtio-host.sh sets the plain guest's GUEST_LIMIT; the realm's is ours.
GUEST_LIMIT=${REALM_LIMIT:-$GUEST_LIMIT}
alive() { # $1: a pid; true while that process runs (not once it is a zombie)
	case $(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$1/status" 2>/dev/null) in
	'' | Z | X) return 1 ;;
	esac
}
realm_kill9() { # $1: the VMM's pid
	ram=$(sed -n 's/.* MiB of RAM at \(0x[0-9a-f]*\) donated.*/\1/p' /run/guest.log | head -n 1)
	mib=$(sed -n 's/.*vCPUs*, \([0-9]*\) MiB of RAM at.*/\1/p' /run/guest.log | head -n 1)
	before=$(probe "$ram")
	say "realm: kill -9 of rampart-vmm ($1: $(cat "/proc/$1/comm" 2>&1)) while the realm runs"
	kill -9 "$1"
	k=0
	while alive "$1" && [ $k -lt 100 ]; do usleep 100000; k=$((k + 1)); done
	if alive "$1"; then
		say "realm: rampart-vmm ($1) still runs 10 s after kill -9"
	else
		say "realm: rampart-vmm ($1) gone after kill -9 within $((k / 10)).$((k % 10)) s"
	fi
	orphan=$(probe "$ram")
	rampart-vmm list 2>&1 | sed 's/^/RAMPART-INIT: realm: after kill -9: list: /'
	rampart-vmm reclaim 2>&1 | sed 's/^/RAMPART-INIT: realm: reclaim: /'
	after=$(probe "$ram")
	say "realm: kill -9: guest RAM $ram while running: $before, after the kill: $orphan, after reclaim: $after"
	vsock-tool scan-ram --phys "$ram" --size "${mib}M" --find "$secret" --find "$marker" 2>&1 |
		sed 's/^/RAMPART-INIT: reclaimed: /'
}
say "realm: challenge $(dd if=/run/xfer.img bs=64 count=1 2>/dev/null | od -An -v -tx1 | tr -d ' \n')"
rm -f /run/vmm.pid
sh -c 'echo $$ >/run/vmm.pid; exec rampart-vmm "$@"' rampart-vmm \
	run --name realm /guest/realm.bundle $VIRTIO_ARGS \
	<"${VMM_STDIN:-/dev/null}" 2>&1 | tee /run/guest.log &
k=0
while [ ! -s /run/vmm.pid ] && [ $k -lt 100 ]; do usleep 100000; k=$((k + 1)); done
pid=$(cat /run/vmm.pid 2>/dev/null)
say "realm: rampart-vmm runs as pid ${pid:-unknown}"
n=0
scanned=
while [ -n "$pid" ] && alive "$pid"; do
	sleep 1
	n=$((n + 1))
	if [ -z "$scanned" ] && grep -q "RAMPART-GUEST: realm: scan now" /run/guest.log; then
		scanned=1
		line=$(grep "RAMPART-GUEST: realm: scan now" /run/guest.log | head -n 1)
		secret=$(echo "$line" | sed -n 's/.*secret \([0-9a-f]*\).*/\1/p')
		marker=$(echo "$line" | sed -n 's/.*marker \([0-9a-f]*\).*/\1/p')
		ram=$(sed -n 's/.* MiB of RAM at \(0x[0-9a-f]*\) donated.*/\1/p' /run/guest.log | head -n 1)
		mib=$(sed -n 's/.*vCPUs*, \([0-9]*\) MiB of RAM at.*/\1/p' /run/guest.log | head -n 1)
		say "realm: scanning the realm's RAM $ram ($mib MiB) for secret $secret and marker $marker"
		vsock-tool scan-ram --phys "$ram" --size "${mib}M" --find "$secret" --find "$marker" 2>&1 |
			sed 's/^/RAMPART-INIT: realm: /'
		devmem "$ram" 64 >/run/devmem.out 2>&1
		say "realm: devmem of the realm's first page: exit status $? ($(cat /run/devmem.out))"
		printf RAMPART-GO | dd of=/run/xfer.img bs=512 seek=7168 conv=notrunc 2>/dev/null
	fi
	if [ -n "$REALM_TEST" ] && [ -n "$scanned" ] &&
		grep -q "RAMPART-GUEST: sleeping until the host stops the VM" /run/guest.log; then
		realm_kill9 "$pid"
		break
	fi
	if [ $n -ge "${GUEST_LIMIT:-300}" ]; then
		say "the guest did not finish within $n s: SIGTERM"
		kill -TERM "$pid"
		break
	fi
done
wait
virtio_host_after
ram=$(sed -n 's/.* MiB of RAM at \(0x[0-9a-f]*\) donated.*/\1/p' /run/guest.log | head -n 1)
mib=$(sed -n 's/.*vCPUs*, \([0-9]*\) MiB of RAM at.*/\1/p' /run/guest.log | head -n 1)
st=$(sed -n 's/.*rampart-vmm: exit status \([0-9]*\)$/\1/p' /run/guest.log | tail -n 1)
say "rampart-vmm exit status ${st:-unknown}"
if [ -n "$ram" ] && [ -n "$mib" ]; then
	last=$(printf '0x%x' $((ram + mib * 1048576 - 8)))
	say "guest RAM after the run: $ram $(devmem "$ram" 64) $last $(devmem "$last" 64)"
fi
rampart-vmm list | sed 's/^/RAMPART-INIT: list: /'

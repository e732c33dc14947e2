# The workloads of `cargo xtask bench peer` (xtask/src/bench/peer.rs), sourced
# by /init (xtask/src/linux/init.sh) after its own checks. xtask prepends
# `RUNS=<n>`. The kernel command line says which VMM runs the guest:
#   rpeer.mode=rampart      rampart-vmm, the signed bundle, under Rampart (a
#                           protected VM, run pb<r>), then the same image in
#                           an unsigned bundle as a non-protected VM (pu<r>)
#   rpeer.mode=pkvm|nvhe    rampart-peer, the same image, under Linux's KVM
# Each run is named pb<r>; its VMM's output (the guest's lines and the stats:
# lines) goes to the console, then `RAMPART-PEER: run <r> status <s>`.
# rampart-vmm also prints its launch milestones (`launch: <ms> ms <what>`,
# RAMPART_VMM_LAUNCH_TRACE) on its standard error.

PEER_MODE=none
for w in $(cat /proc/cmdline); do
	case "$w" in
	rpeer.mode=*) PEER_MODE=${w#rpeer.mode=} ;;
	esac
done
peer_say() { printf 'RAMPART-PEER: %s\n' "$*"; }
peer_say "mode $PEER_MODE"

peer_run() {
	case "$PEER_MODE" in
	rampart) RAMPART_VMM_LAUNCH_TRACE=1 timeout 120 /bin/rampart-vmm run /guests/bench.bundle --name "$1" ;;
	pkvm | nvhe) timeout 120 /bin/rampart-peer run /guests/bench.bin --mem 1 --name "$1" ;;
	*) echo "unknown rpeer.mode=$PEER_MODE"; return 9 ;;
	esac
}

# Rampart only: the same image as a non-protected VM (no measurement, no
# signature), like the peer's.
peer_run_open() {
	RAMPART_VMM_LAUNCH_TRACE=1 timeout 120 /bin/rampart-vmm run /guests/bench.open.bundle --name "$1"
}

r=0
while [ "$r" -lt "${RUNS:-3}" ]; do
	r=$((r + 1))
	peer_run "pb$r" >/tmp/pb.log 2>&1
	st=$?
	cat /tmp/pb.log
	if [ "$PEER_MODE" = rampart ]; then
		peer_run_open "pu$r" >/tmp/pb.log 2>&1
		su=$?
		cat /tmp/pb.log
		[ "$st" -eq 0 ] && st=$su
	fi
	peer_say "run $r status $st"
done

# The Linux guest (when xtask packed it: LINUX_RUNS, LINUX_CPUS, LINUX_MEM
# and LINUX_CMDLINE are prepended): Debian sid's kernel and initramfs of
# rampart-vmm's Linux guest, booted by this mode's VMM with the same options
# (rampart-vmm: a non-protected Rampart VM; rampart-peer: a KVM VM with the
# in-kernel GICv3). `rampart-peer time-to` times both alike, from the VMM's
# start to the guest /init's first line; the guest then powers off. Each
# boot is named pl<k>, then `RAMPART-PEER: linux <k> <ms> status <s>`.
peer_linux() {
	case "$PEER_MODE" in
	rampart) set -- /bin/rampart-vmm run "$@" ;;
	pkvm | nvhe) set -- /bin/rampart-peer run "$@" ;;
	esac
	timeout 900 /bin/rampart-peer time-to "RAMPART-GUEST: init reached" -- "$@"
}

k=0
while [ -f /guest/Image ] && [ "$k" -lt "${LINUX_RUNS:-0}" ]; do
	k=$((k + 1))
	peer_linux --kernel /guest/Image --initrd /guest/initrd.cpio.gz \
		--mem "$LINUX_MEM" --cpus "$LINUX_CPUS" --cmdline "$LINUX_CMDLINE" \
		--name "pl$k" >/tmp/pl.log 2>&1
	st=$?
	cat /tmp/pl.log
	ms=$(sed -n 's/^rampart-peer: time-to ".*": \([0-9.]*\) ms after.*/\1/p' /tmp/pl.log)
	peer_say "linux $k ${ms:-none} status $st"
done

peer_say "finished"

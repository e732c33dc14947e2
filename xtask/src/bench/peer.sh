# The workloads of `cargo xtask bench peer` (xtask/src/bench/peer.rs), sourced
# by /init (xtask/src/linux/init.sh) after its own checks. xtask prepends
# `RUNS=<n>`. The kernel command line says which VMM runs the guest:
#   rpeer.mode=rampart      rampart-vmm, the signed bundle, under Rampart
#   rpeer.mode=pkvm|nvhe    rampart-peer, the same image, under Linux's KVM
# Each run is named pb<r>; its VMM's output (the guest's lines and the stats:
# lines) goes to the console, then `RAMPART-PEER: run <r> status <s>`.

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
	rampart) timeout 120 /bin/rampart-vmm run /guests/bench.bundle --name "$1" ;;
	pkvm | nvhe) timeout 120 /bin/rampart-peer run /guests/bench.bin --mem 1 --name "$1" ;;
	*) echo "unknown rpeer.mode=$PEER_MODE"; return 9 ;;
	esac
}

r=0
while [ "$r" -lt "${RUNS:-3}" ]; do
	r=$((r + 1))
	peer_run "pb$r" >/tmp/pb.log 2>&1
	st=$?
	cat /tmp/pb.log
	peer_say "run $r status $st"
done

# Hook for issue 11: once Linux guests run under rampart-vmm (and the peer
# can boot them), time `VMM start -> the guest's /init` here as run
# `pl<r>`, printing `RAMPART-PEER: linux <r> <ms> status <s>`; peer.rs's
# `Metric::LinuxBoot` reads those lines.

peer_say "finished"

# Sourced by the Linux host's /init (xtask/src/linux/init.sh), packed by
# xtask/src/bench/realm.rs: `cargo xtask bench realm` (issue 12). Runs the
# same Debian kernel and initrd ROUNDS times as a signed realm
# (/guest/realm.bundle) and as a non-protected guest (/guest/Image with
# /guest/initrd.cpio.gz), alternately: realm, plain, realm, plain, ...
# ROUNDS, GUEST_MEM, GUEST_CPUS, PLAIN_CMDLINE and RUN_LIMIT are set above
# by xtask. Each run gets the same devices: the read-only ext4 disk with
# the guest's vsock tool (/dev/vda), a fresh 16 MiB raw disk for the
# throughput test (/dev/vdb), virtio-rng and vsock with two echoes of ours
# (host ports 6000 and 6001). Its console lines sit between
# `bench-realm: begin R MODE` and `bench-realm: end R MODE`.
ln -sf /bin/rampart-vmm /bin/vsock-tool
# The VMM's pid is the one its shell writes before exec: `pidof rampart-vmm`
# also names the echoes (vsock-tool is a link to rampart-vmm), and the loop
# would end (RUN_LIMIT unchecked) as soon as the first echo did.
alive() { # $1: a pid; true while that process runs (not once it is a zombie)
	case $(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$1/status" 2>/dev/null) in
	'' | Z | X) return 1 ;;
	esac
}
vmm() { # the arguments of rampart-vmm; its pid goes to /run/vmm.pid
	sh -c 'echo $$ >/run/vmm.pid; exec rampart-vmm "$@"' rampart-vmm "$@"
}
bench_run() { # $1: round, $2: realm | plain
	say "bench-realm: begin $1 $2"
	sock=/run/bench-$1-$2.vsock
	rm -f /run/bench.img /run/guest.log
	dd if=/dev/zero of=/run/bench.img bs=1048576 count=16 2>/dev/null
	for p in 6000 6001; do
		(vsock-tool vsock listen "unix:${sock}_$p" --echo 2>/run/echo$p.log & echo $! >/run/echo$p.pid)
	done
	args="--disk /guest/disk.img,ro --disk /run/bench.img --vsock 3 --vsock-socket $sock"
	rm -f /run/vmm.pid
	if [ "$2" = realm ]; then
		vmm run --name realm /guest/realm.bundle $args </dev/null 2>&1 | tee /run/guest.log &
	else
		vmm run --name plain --kernel /guest/Image --initrd /guest/initrd.cpio.gz \
			--mem "$GUEST_MEM" --cpus "$GUEST_CPUS" --cmdline "$PLAIN_CMDLINE" $args \
			</dev/null 2>&1 | tee /run/guest.log &
	fi
	k=0
	while [ ! -s /run/vmm.pid ] && [ $k -lt 100 ]; do usleep 100000; k=$((k + 1)); done
	pid=$(cat /run/vmm.pid 2>/dev/null)
	n=0
	while [ -n "$pid" ] && alive "$pid"; do
		sleep 1
		n=$((n + 1))
		if [ $n -ge "$RUN_LIMIT" ]; then
			say "bench-realm: the $2 guest did not finish within $n s: SIGTERM"
			kill -TERM "$pid"
			break
		fi
	done
	wait
	for p in 6000 6001; do
		kill "$(cat /run/echo$p.pid)" 2>/dev/null
		say "bench-realm: host echo $p: $(cat /run/echo$p.log)"
	done
	st=$(sed -n 's/.*rampart-vmm: exit status \([0-9]*\)$/\1/p' /run/guest.log | tail -n 1)
	say "bench-realm: end $1 $2: rampart-vmm exit status ${st:-unknown}"
}
r=1
while [ $r -le "$ROUNDS" ]; do
	bench_run $r realm
	bench_run $r plain
	r=$((r + 1))
done
rampart-vmm list | sed 's/^/RAMPART-INIT: list: /'

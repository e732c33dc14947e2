# Sourced by the Linux host's /init (xtask/src/linux/init.sh), packed by
# xtask/src/linux_guest.rs: boots Debian's sid kernel as a Rampart guest
# with rampart-vmm. GUEST_CPUS, GUEST_MEM and GUEST_MODE are set above.
say "linux guest: $GUEST_CPUS vCPU(s), $GUEST_MEM of RAM, mode $GUEST_MODE"
args="--kernel /guest/Image --initrd /guest/initrd.cpio.gz --mem $GUEST_MEM --cpus $GUEST_CPUS"
case "$GUEST_MODE" in
sigterm)
	# Stop the guest while Linux runs: once its /init has started (it
	# then sleeps), SIGTERM to rampart-vmm.
	rampart-vmm run $args --cmdline "console=ttyAMA0 earlycon panic=-1 rguest.sleep=1" >/run/guest.log 2>&1 &
	pid=$!
	n=0
	while ! grep -q "RAMPART-GUEST: init reached" /run/guest.log && [ $n -lt 1800 ]; do sleep 0.1; n=$((n + 1)); done
	sleep 1
	say "sending SIGTERM to rampart-vmm ($pid) while the guest runs"
	kill -TERM $pid
	wait $pid
	st=$?
	cat /run/guest.log
	say "rampart-vmm exit status $st"
	;;
*)
	rampart-vmm run $args
	say "rampart-vmm exit status $?"
	;;
esac
rampart-vmm stats | sed 's/^/RAMPART-INIT: stats: /'
rampart-vmm list

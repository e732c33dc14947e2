# Sourced by the Linux host's /init (xtask/src/linux/init.sh), packed by
# xtask/src/linux_guest.rs: boots Debian's sid kernel as a Rampart guest
# with rampart-vmm. GUEST_CPUS, GUEST_MEM and GUEST_MODE are set above.
#   boot:    the guest powers off by itself (stopped with SIGTERM after
#            GUEST_LIMIT seconds if it does not);
#   sigterm: SIGTERM to rampart-vmm once the guest's /init runs.
# Then: the VMM's exit status, its statistics, and the first and last
# word of the guest's RAM read through /dev/mem (zero after a clean
# teardown).
say "linux guest: $GUEST_CPUS vCPU(s), $GUEST_MEM of RAM, mode $GUEST_MODE"
# `quiet`: the kernel's boot log would be ~50 000 PL011 exits, one per byte
# (most of a guest boot under TCG); /init prints uname and the tail of dmesg.
cmdline="console=ttyAMA0 earlycon panic=-1 quiet"
[ "$GUEST_MODE" = sigterm ] && cmdline="$cmdline rguest.sleep=1"
# The virtio end-to-end part (xtask/src/virtio_e2e.rs) sets VIRTIO_ARGS.
[ -f /virtio-host.sh ] && . /virtio-host.sh
# The VMM's pid is the one its shell writes before exec: `pidof rampart-vmm`
# would also name the vsock tools (links to rampart-vmm), and the loop
# below would end as soon as the first of them did.
alive() { # $1: a pid; true while that process runs (not once it is a zombie)
	case $(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$1/status" 2>/dev/null) in
	'' | Z | X) return 1 ;;
	esac
}
rm -f /run/vmm.pid
sh -c 'echo $$ >/run/vmm.pid; exec rampart-vmm "$@"' rampart-vmm \
	run --kernel /guest/Image --initrd /guest/initrd.cpio.gz \
	--mem "$GUEST_MEM" --cpus "$GUEST_CPUS" --cmdline "$cmdline" $VIRTIO_ARGS \
	<"${VMM_STDIN:-/dev/null}" 2>&1 | tee /run/guest.log &
k=0
while [ ! -s /run/vmm.pid ] && [ $k -lt 100 ]; do usleep 100000; k=$((k + 1)); done
pid=$(cat /run/vmm.pid 2>/dev/null)
n=0
while [ -n "$pid" ] && alive "$pid"; do
	sleep 1
	n=$((n + 1))
	if [ "$GUEST_MODE" = sigterm ] && grep -q "RAMPART-GUEST: sleeping" /run/guest.log; then
		sleep 2
		say "SIGTERM to rampart-vmm ($pid) while the guest runs"
		kill -TERM "$pid"
		break
	fi
	[ $((n % 30)) -eq 0 ] && rampart-vmm stats | grep -E 'exits|mmio' | sed 's/^/RAMPART-INIT: live: /'
	if [ $n -ge "${GUEST_LIMIT:-300}" ]; then
		say "the guest did not finish within $n s: SIGTERM"
		kill -TERM "$pid"
		break
	fi
done
wait
[ -f /virtio-host.sh ] && virtio_host_after
st=$(sed -n 's/.*rampart-vmm: exit status \([0-9]*\)$/\1/p' /run/guest.log | tail -n 1)
say "rampart-vmm exit status ${st:-unknown}"
ram=$(sed -n 's/.* MiB of RAM at \(0x[0-9a-f]*\) shared.*/\1/p' /run/guest.log | head -n 1)
mib=$(sed -n 's/.*vCPUs*, \([0-9]*\) MiB of RAM at.*/\1/p' /run/guest.log | head -n 1)
if [ -n "$ram" ] && [ -n "$mib" ]; then
	last=$(printf '0x%x' $((ram + mib * 1048576 - 8)))
	say "guest RAM after the run: $ram $(devmem "$ram" 64) $last $(devmem "$last" 64)"
fi
rampart-vmm list | sed 's/^/RAMPART-INIT: list: /'

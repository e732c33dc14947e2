# Part of the Linux host's /init for the virtio end-to-end run
# (xtask/src/virtio_e2e.rs), sourced by linux_guest/host.sh before it
# starts rampart-vmm: sets VIRTIO_ARGS, prepares the exchange disk and
# starts the host ends of the vsock round trips; virtio_host_after runs
# once the guest is gone. The vsock tool runs as `vsock-tool` (a link to
# rampart-vmm; the scripts name the VMM by the pid its shell recorded, since
# busybox `pidof` also matches this link through /proc/PID/exe), and
# detached, so that the caller's `wait` does not wait for it.
vsock_sock=/run/guest.vsock
# The boot alone takes minutes on two busy cores under TCG; then the I/O.
GUEST_LIMIT=840
ln -sf /bin/rampart-vmm /bin/vsock-tool
dd if=/dev/urandom of=/run/xfer.img bs=1048576 count=4 2>/dev/null
say "virtio: vdb host-to-guest sha256 $(dd if=/run/xfer.img bs=1048576 count=2 2>/dev/null | sha256sum | cut -d' ' -f1)"
VIRTIO_ARGS="--disk /guest/disk.img --disk /run/xfer.img --vsock 3 --vsock-socket $vsock_sock --virtio-console-input"
# virtio-console input: rampart-vmm's stdin is a FIFO this shell keeps open
# (fd 3, so opening it does not block and the VMM never sees EOF early);
# once the guest waits on /dev/hvc0, a random token goes in, and the guest
# answers on hvc0 (the VMM prints it).
mkfifo /run/console.in
exec 3<>/run/console.in
VMM_STDIN=/run/console.in
console_token=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
(
	(
		n=0
		while ! grep -q "virtio: console waiting" /run/guest.log 2>/dev/null && [ $n -lt 9000 ]; do
			sleep 0.1
			n=$((n + 1))
		done
		sleep 1
		say "virtio: console token $console_token"
		printf 'rampart-console-%s\n' "$console_token" >&3
	) &
)
# The guest's round trip: our echo at <socket>_6000.
(vsock-tool vsock listen "unix:${vsock_sock}_6000" --echo 2>/run/echo6000.log & echo $! >/run/echo6000.pid)
# `cargo xtask bench linux-guest` (BENCH=1, set by xtask above this
# script): the guest also measures virtio-blk throughput and vsock round
# trips (against a second echo of ours, port 6001).
if [ -n "$BENCH" ]; then
	cmdline="$cmdline rguest.bench=1"
	(vsock-tool vsock listen "unix:${vsock_sock}_6001" --echo 2>/run/echo6001.log & echo $! >/run/echo6001.pid)
fi
# Ours: 4 MiB through the guest's echo on port 5000 (it listens once its
# /init gets there).
head -c 4194304 /dev/urandom >/run/h2g.bin
(
	(
		n=0
		while ! grep -q "vsock echo listening on port 5000" /run/guest.log 2>/dev/null && [ $n -lt 9000 ]; do
			sleep 0.1
			n=$((n + 1))
		done
		vsock-tool vsock connect "unix:$vsock_sock:5000" --retry 30 </run/h2g.bin >/run/h2g.back 2>/run/h2g.log &
		echo $! >/run/h2g.pid
		wait $!
		say "virtio: vsock host-to-guest round trip: sent sha256 $(sha256sum /run/h2g.bin | cut -d' ' -f1) got back sha256 $(sha256sum /run/h2g.back | cut -d' ' -f1) ($(cat /run/h2g.log))"
		touch /run/h2g.done
	) &
)
virtio_host_after() {
	# The guest is gone: what did not finish will not.
	n=0
	while [ ! -f /run/h2g.done ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
	[ -f /run/h2g.done ] || say "virtio: vsock host-to-guest round trip did not finish: $(cat /run/h2g.log)"
	for f in /run/h2g.pid /run/echo6000.pid; do
		[ -f $f ] && kill "$(cat $f)" 2>/dev/null
	done
	say "virtio: vdb guest-to-host read by the host sha256 $(dd if=/run/xfer.img bs=1048576 skip=2 count=2 2>/dev/null | sha256sum | cut -d' ' -f1)"
	say "virtio: host echo for the guest: $(cat /run/echo6000.log)"
}

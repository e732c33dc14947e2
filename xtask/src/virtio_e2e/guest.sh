# Sourced by the Linux guest's /init (xtask/src/virtio_e2e.rs packs it as
# the guest's extra script): the virtio devices end to end. Lines for the
# harness start with "RAMPART-GUEST: virtio: ".
#   /dev/vda  ext4 image built by xtask: hello.txt (a line to print),
#             from-host.bin (checksum known to xtask), rampart-vmm (its
#             `vsock` subcommand is the guest's AF_VSOCK tool)
#   /dev/vdb  raw exchange disk: [0, 2 MiB) written by the host before the
#             run, [2 MiB, 4 MiB) written here for the host to read back
#   vsock     port 5000: echo for the host; host port 6000: its echo
vsay() { echo "RAMPART-GUEST: virtio: $*"; }
# The guest's clock when its /init started (sourced right after the
# "init reached" line), for `cargo xtask bench linux-guest`.
vsay "uptime at init $(cut -d' ' -f1 /proc/uptime)"
sha() { sha256sum "$1" | cut -d' ' -f1; }
for m in /lib/modules/rampart/*.ko; do
	[ -f "$m" ] || continue
	out=$(insmod "$m" 2>&1) || case "$out" in *"File exists"*) ;; *) vsay "insmod ${m##*/}: $out" ;; esac
done
n=0
while { [ ! -b /dev/vda ] || [ ! -b /dev/vdb ]; } && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
vsay "block devices: $(cd /sys/block && echo vd*)"

# Entropy: the virtio-rng device is the current hardware RNG.
vsay "hwrng current: $(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)"
bytes=$(head -c 4096 /dev/hwrng 2>/dev/null | wc -c)
vsay "hwrng read $bytes bytes, first: $(head -c 16 /dev/hwrng 2>/dev/null | od -An -tx1 | tr -d ' \n')"

# The ext4 disk: print a line, check the host's file, write one and read it
# back after a remount (through the device, not the page cache).
mkdir -p /mnt/disk
if mount -t ext4 /dev/vda /mnt/disk; then
	vsay "disk line: $(head -n 1 /mnt/disk/hello.txt)"
	cp /mnt/disk/rampart-vmm /bin/rampart-vmm && chmod 755 /bin/rampart-vmm
	vsay "ext4 from-host.bin sha256 $(sha /mnt/disk/from-host.bin)"
	head -c 1048576 /dev/urandom >/mnt/disk/from-guest.bin
	w=$(sha /mnt/disk/from-guest.bin)
	umount /mnt/disk
	echo 3 >/proc/sys/vm/drop_caches
	mount -t ext4 -o ro /dev/vda /mnt/disk && r=$(sha /mnt/disk/from-guest.bin) && umount /mnt/disk
	vsay "ext4 from-guest.bin written sha256 $w read back sha256 $r"
else
	vsay "ext4 mount of /dev/vda failed"
fi

# The raw exchange disk.
vsay "vdb host-to-guest sha256 $(dd if=/dev/vdb bs=1048576 count=2 2>/dev/null | sha256sum | cut -d' ' -f1)"
head -c 2097152 /dev/urandom >/tmp/to-host.bin
dd if=/tmp/to-host.bin of=/dev/vdb bs=1048576 seek=2 conv=fsync 2>/dev/null
vsay "vdb guest-to-host sha256 $(sha /tmp/to-host.bin)"
echo 3 >/proc/sys/vm/drop_caches
vsay "vdb read-back sha256 $(dd if=/dev/vdb bs=1048576 skip=2 count=2 2>/dev/null | sha256sum | cut -d' ' -f1)"

# virtio-console input: the host writes a line into hvc0; answer it there.
if [ -c /dev/hvc0 ]; then
	stty -F /dev/hvc0 -echo 2>/dev/null
	vsay "console waiting"
	if read -r -t 120 line </dev/hvc0; then
		echo "RAMPART-GUEST: virtio: console answer: $line" >/dev/hvc0
		vsay "console read ${#line} bytes"
	else
		vsay "console: nothing read from hvc0"
	fi
else
	vsay "console: no /dev/hvc0"
fi

# vsock: answer the host (echo on port 5000), then a round trip of our own
# through the host's echo on port 6000.
if [ -x /bin/rampart-vmm ]; then
	rampart-vmm vsock listen vsock:5000 --echo 2>/tmp/echo.log &
	echo_pid=$!
	sleep 1
	vsay "vsock echo listening on port 5000"
	head -c 4194304 /dev/urandom >/tmp/vsock.bin
	t0=$(date +%s)
	rampart-vmm vsock connect vsock:2:6000 --retry 60 </tmp/vsock.bin >/tmp/vsock.back 2>/tmp/vsock.log
	vsay "vsock guest-to-host round trip: sent sha256 $(sha /tmp/vsock.bin) got back sha256 $(sha /tmp/vsock.back) ($(cat /tmp/vsock.log))"
	n=0
	while kill -0 $echo_pid 2>/dev/null && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
	vsay "vsock echo for the host: $(cat /tmp/echo.log)"
else
	vsay "no /bin/rampart-vmm in the guest: vsock not tested"
fi
# `cargo xtask bench linux-guest`: timed with /proc/uptime (10 ms).
case " $(cat /proc/cmdline) " in
*" rguest.bench=1 "*)
	up() { cut -d' ' -f1 /proc/uptime; }
	bsay() { echo "RAMPART-GUEST: bench: $*"; }
	# The first 2 MiB of vdb: the host checked them before the run and
	# reads only the second half back afterwards.
	dd if=/dev/urandom of=/tmp/bench.bin bs=1048576 count=2 2>/dev/null
	t0=$(up)
	dd if=/tmp/bench.bin of=/dev/vdb bs=1048576 conv=fsync 2>/dev/null
	t1=$(up)
	bsay "blk write 2097152 bytes in $(awk "BEGIN{print $t1 - $t0}") s"
	echo 3 >/proc/sys/vm/drop_caches
	t0=$(up)
	dd if=/dev/vdb of=/dev/null bs=1048576 count=2 2>/dev/null
	t1=$(up)
	bsay "blk read 2097152 bytes in $(awk "BEGIN{print $t1 - $t0}") s"
	if [ -x /bin/rampart-vmm ]; then
		bsay "$(rampart-vmm vsock connect vsock:2:6001 --retry 30 --ping 200 2>&1)"
	fi
	;;
esac
vsay "done"

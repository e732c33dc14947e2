# Sourced by the Linux guest's /init (linux_guest/init.sh) right after its
# "init reached" line, in both modes of `cargo xtask bench realm` (issue
# 12; xtask/src/bench/realm.rs packs it into the one initrd both modes
# boot). Lines for the harness start with "RAMPART-GUEST: bench: ".
#   /dev/vda  the read-only ext4 image with rampart-vmm (the vsock tool)
#   /dev/vdb  16 MiB of zeros: 8 MiB written, then read back, timed
#   vsock     host ports 6000 and 6001: the host's echoes
# Times come from /proc/uptime (10 ms steps).
bsay() { echo "RAMPART-GUEST: bench: $*"; }
up() { cut -d' ' -f1 /proc/uptime; }
bsay "uptime at init $(up)"
for m in /lib/modules/rampart/*.ko; do
	[ -f "$m" ] || continue
	out=$(insmod "$m" 2>&1) || case "$out" in *"File exists"*) ;; *) bsay "insmod ${m##*/}: $out" ;; esac
done
n=0
while { [ ! -b /dev/vda ] || [ ! -b /dev/vdb ]; } && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
bsay "block devices after $((n / 10)) s: $(cd /sys/block && echo vd*)"
# The kernel's own word on whether it runs as a realm, and its bounce pool.
dmesg | grep -E "RME: " | head -n 2 | sed 's/^/RAMPART-GUEST: bench: dmesg: /'
dmesg | grep "software IO TLB" | head -n 1 | sed 's/^/RAMPART-GUEST: bench: dmesg: /'
mkdir -p /mnt/disk
if mount -t ext4 -o ro /dev/vda /mnt/disk; then
	cp /mnt/disk/rampart-vmm /bin/rampart-vmm && chmod 755 /bin/rampart-vmm
	umount /mnt/disk
else
	bsay "mount of /dev/vda failed"
fi
sha() { sha256sum | cut -d' ' -f1; }
span() { awk "BEGIN{print $2 - $1}"; }

# virtio-blk: 8 MiB sequential write (through the page cache, then
# fsync), then read after dropping the caches.
dd if=/dev/urandom of=/tmp/blk.bin bs=1048576 count=8 2>/dev/null
sync
echo 3 >/proc/sys/vm/drop_caches
t0=$(up)
dd if=/tmp/blk.bin of=/dev/vdb bs=1048576 conv=fsync 2>/dev/null
t1=$(up)
bsay "blk write 8388608 bytes in $(span "$t0" "$t1") s"
echo 3 >/proc/sys/vm/drop_caches
t0=$(up)
dd if=/dev/vdb of=/dev/null bs=1048576 count=8 2>/dev/null
t1=$(up)
bsay "blk read 8388608 bytes in $(span "$t0" "$t1") s"
# The bytes read are the bytes written (the read above left them cached).
bsay "blk sha256 written $(sha </tmp/blk.bin) read $(dd if=/dev/vdb bs=1048576 count=8 2>/dev/null | sha)"
rm -f /tmp/blk.bin

# vsock: 4 MiB to the host's echo and back (port 6000), then 100 64-byte
# round trips (port 6001).
if [ -x /bin/rampart-vmm ]; then
	head -c 4194304 /dev/urandom >/tmp/vsock.bin
	rampart-vmm vsock connect vsock:2:6000 --retry 60 </tmp/vsock.bin >/tmp/vsock.back 2>/tmp/vsock.log
	bsay "vsock echo: sent sha256 $(sha </tmp/vsock.bin) got back sha256 $(sha </tmp/vsock.back) ($(cat /tmp/vsock.log))"
	rm -f /tmp/vsock.bin /tmp/vsock.back
	bsay "$(rampart-vmm vsock connect vsock:2:6001 --retry 30 --ping 100 2>&1)"
else
	bsay "no /bin/rampart-vmm: vsock not measured"
fi
bsay "done"

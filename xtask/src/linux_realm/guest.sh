# The realm part of the Linux guest's /init (xtask/src/linux_realm.rs packs
# it before the virtio part, virtio_e2e/guest.sh): Debian's kernel running
# as a realm under rampart-vmm (issue 12). Lines for the harness start with
# "RAMPART-GUEST: realm: ".
#   - the kernel's own word that it found a realm (RSI) and bounces DMA;
#   - a configfs-tsm report (arm-cca-guest) for the host's challenge, the
#     first 64 bytes of /dev/vdb, printed in hex for xtask to verify;
#   - a secret kept in private memory and a marker written to the disk,
#     then a pause while the host scans the realm's RAM through /dev/mem
#     (it writes "RAMPART-GO" at 3.5 MiB of vdb when done).
rsay() { echo "RAMPART-GUEST: realm: $*"; }
hexof() { od -An -v -tx1 "$1" | tr -d ' \n'; }
# This part runs first (the virtio part follows): load the modules and wait
# for the disks here.
for m in /lib/modules/rampart/*.ko; do
	[ -f "$m" ] || continue
	out=$(insmod "$m" 2>&1) || case "$out" in *"File exists"*) ;; *) rsay "insmod ${m##*/}: $out" ;; esac
done
n=0
while [ ! -b /dev/vdb ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
dmesg | grep -E "RME:|RSI" | head -n 4 | sed 's/^/RAMPART-GUEST: realm: dmesg: /'
dmesg | grep -i "swiotlb" | head -n 2 | sed 's/^/RAMPART-GUEST: realm: dmesg: /'
rsay "memory encryption: $(dmesg | grep -c 'Memory Encryption Features active') line(s)"

# Attestation through configfs-tsm.
grep -q configfs /proc/filesystems || rsay "no configfs in the kernel"
mkdir -p /sys/kernel/config
mount -t configfs none /sys/kernel/config 2>/dev/null
r=/sys/kernel/config/tsm/report/rampart
if mkdir "$r" 2>/dev/null || [ -d "$r" ]; then
	rsay "tsm provider: $(cat $r/provider 2>&1)"
	dd if=/dev/vdb bs=64 count=1 of=/tmp/challenge.bin 2>/dev/null
	rsay "GUEST-CCA-CHALLENGE $(hexof /tmp/challenge.bin)"
	cat /tmp/challenge.bin >"$r/inblob"
	if cat "$r/outblob" >/tmp/token.bin 2>/tmp/token.err; then
		rsay "token: $(wc -c </tmp/token.bin) bytes, generation $(cat $r/generation)"
		# hexof ends without a newline: add one, or the next line's text
		# is glued to the token's last line.
		{ hexof /tmp/token.bin; echo; } | fold -w 512 | sed 's/^/RAMPART-GUEST: realm: GUEST-CCA-TOKEN /'
	else
		rsay "reading outblob failed: $(cat /tmp/token.err)"
	fi
else
	rsay "no $r: $(ls /sys/kernel/config/tsm 2>&1)"
fi

# A secret in private memory (64 KiB of one random 16-byte value in tmpfs)
# and a marker (256 KiB of another) written through the disk at 2 MiB of vdb (the virtio part rewrites [2, 4) MiB later).
double() { # $1: 16-byte file, $2: doublings, $3: out
	cp "$1" "$3.0"
	i=0
	while [ $i -lt "$2" ]; do cat "$3.$i" "$3.$i" >"$3.$((i + 1))"; rm "$3.$i"; i=$((i + 1)); done
	mv "$3.$i" "$3"
}
head -c 16 /dev/urandom >/tmp/secret.1
head -c 16 /dev/urandom >/tmp/marker.1
double /tmp/secret.1 12 /tmp/secret.bin
double /tmp/marker.1 14 /tmp/marker.bin
dd if=/tmp/marker.bin of=/dev/vdb bs=65536 seek=32 conv=fsync 2>/dev/null
rsay "scan now: secret $(hexof /tmp/secret.1) marker $(hexof /tmp/marker.1)"
rm /tmp/marker.1
n=0
while [ $n -lt 300 ]; do
	echo 3 >/proc/sys/vm/drop_caches
	go=$(dd if=/dev/vdb bs=512 skip=7168 count=1 2>/dev/null | head -c 10)
	[ "$go" = RAMPART-GO ] && break
	sleep 1
	n=$((n + 1))
done
rsay "scan over after ${n} s; secret still held: $(cmp -s /tmp/secret.bin /tmp/secret.bin && wc -c </tmp/secret.bin) bytes"

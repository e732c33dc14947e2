#!/bin/busybox sh
# /init of Rampart's Linux test host, packed by xtask/src/linux.rs.
#
# Every line meant for the harness starts with "RAMPART-INIT: ";
# xtask's linux::parse_report reads them back. Keep the formats in step.

# First thing: the marker `cargo xtask bench boot` times.
/bin/busybox echo "RAMPART-INIT: start"

/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
# A writable /run (rampart-vmm keeps its pool table and statistics there).
/bin/busybox mkdir -p /run
/bin/busybox mount -t tmpfs -o mode=0755 tmpfs /run
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

say() { printf 'RAMPART-INIT: %s\n' "$*"; }

# Online CPUs: /sys/devices/system/cpu/online is a list such as "0-3" or "0,2-3".
online=$(cat /sys/devices/system/cpu/online)
n=0
for r in $(echo "$online" | tr ',' ' '); do
	case "$r" in
	*-*) n=$((n + ${r#*-} - ${r%-*} + 1)) ;;
	?*) n=$((n + 1)) ;;
	esac
done
say "cpus-online=$n"
say "cpus-online-list=$online"

# rinit.brief=1 (the rampart-vmm demo and checks) skips the memory map.
case " $(cat /proc/cmdline) " in
*" rinit.brief=1 "*) brief=1 ;;
*) brief= ;;
esac

# /proc/iomem: first every reserved range (at any nesting depth) as
# "reserved <start>-<end> <name>", then the raw file line by line, indentation
# kept, as "iomem <line>".
[ -z "$brief" ] && while IFS= read -r line; do
	range=${line%% : *}
	range=${range##* }
	name=${line#* : }
	case "$name" in
	*[Rr]eserved*) say "reserved $range $name" ;;
	esac
done </proc/iomem
[ -z "$brief" ] && while IFS= read -r line; do
	say "iomem $line"
done </proc/iomem

# rinit.devmem=1: read the first word of the hypervisor's carve-out through
# /dev/mem in a child process. Under Rampart the host must get a bus error
# (SIGBUS, status 128 + 7), never data.
case " $(cat /proc/cmdline) " in
*" rinit.devmem=1 "*)
	node=
	for d in /proc/device-tree/reserved-memory/rampart-hypervisor*; do
		[ -e "$d" ] && node=$d
	done
	if [ -z "$node" ]; then
		say "devmem-carveout=NO-CARVEOUT"
	else
		reg=$(od -A n -t x1 -v "$node/reg" | tr -d ' \n')
		addr=${node##*@}
		if [ "$addr" = "$node" ]; then
			# No unit address: take it from reg (#address-cells = 2).
			addr=$(echo "$reg" | cut -c1-16)
		fi
		say "carveout ${node##*/} reg=$reg addr=0x$addr"
		out=$(devmem "0x$addr" 2>&1)
		st=$?
		out=$(echo $out)
		if [ "$st" -eq 135 ]; then
			say "devmem-carveout=SIGBUS"
		elif [ "$st" -eq 0 ]; then
			say "devmem-carveout=DATA $out"
		else
			say "devmem-carveout=ERROR $st $out"
		fi
	fi
	;;
esac

# rinit.pcidisk=1 (linux::add_pci_devices): load the virtio PCI drivers,
# mount the virtio-blk-pci disk read-only and print its file's SHA-256,
# then read 32 bytes from the virtio-rng-pci device. Both work only if
# the devices' DMA reaches host memory through Rampart's SMMU.
case " $(cat /proc/cmdline) " in
*" rinit.pcidisk=1 "*)
	for m in /lib/modules/rampart/*.ko; do
		out=$(insmod "$m" 2>&1) || say "pcidisk insmod ${m##*/} failed: $out"
	done
	i=0
	while [ ! -b /dev/vda ] && [ $i -lt 20 ]; do
		sleep 1
		i=$((i + 1))
	done
	mkdir -p /mnt/disk
	if mount -t ext2 -o ro /dev/vda /mnt/disk; then
		sum=$(sha256sum /mnt/disk/rampart-check.bin)
		say "pcidisk-sha256=${sum%% *}"
		umount /mnt/disk
	else
		say "pcidisk-sha256=NO-MOUNT"
	fi
	rng=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)
	bytes=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -A n -t x1 -v | tr -d ' \n')
	say "pcirng=${rng:-none} $bytes"
	;;
esac

# Hook for more checks (linux::prepare_with); sourced, so it can use `say`.
if [ -f /rinit-extra.sh ]; then
	. /rinit-extra.sh
fi

say "alive"
say "done"
poweroff -f

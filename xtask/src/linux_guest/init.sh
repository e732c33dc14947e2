#!/bin/busybox sh
# /init of the Linux *guest* (packed by xtask/src/linux_guest.rs): Debian's
# sid kernel booted by rampart-vmm under the Linux host. Lines for the
# harness start with "RAMPART-GUEST: ".
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
echo "RAMPART-GUEST: init reached: $(uname -r), cpus $(cat /sys/devices/system/cpu/online)"
[ -f /guest-extra.sh ] && . /guest-extra.sh
case " $(cat /proc/cmdline) " in
*" rguest.sleep=1 "*)
	echo "RAMPART-GUEST: sleeping until the host stops the VM"
	while :; do sleep 1; done
	;;
esac
dmesg | tail -n 12 | sed 's/^/RAMPART-GUEST: dmesg: /'
grep -E "IPI|arch_timer|GIC" /proc/interrupts | sed 's/^/RAMPART-GUEST: interrupts: /'
echo "RAMPART-GUEST: powering off"
poweroff -f

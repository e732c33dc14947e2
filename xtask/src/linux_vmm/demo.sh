# The demo of `cargo xtask run --host linux`, packed by xtask/src/linux_vmm.rs
# and sourced by /init (xtask/src/linux/init.sh): Debian's kernel runs
# protected, signed guests under Rampart from user space with rampart-vmm.

say "rampart-vmm demo: $(uname -r), $(cat /sys/devices/system/cpu/online | sed 's/^/CPUs /')"
rampart-vmm info
for g in hello attest; do
	[ -f "/guests/$g.bundle" ] || continue
	say "\$ rampart-vmm run /guests/$g.bundle"
	rampart-vmm run "/guests/$g.bundle"
	say "rampart-vmm run /guests/$g.bundle: exit status $?"
done
say "\$ rampart-vmm stats"
rampart-vmm stats

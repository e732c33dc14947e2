# linux-vmm/swap (issue 14, sealed swap), packed by xtask/src/linux_swap.rs
# and sourced by /init (xtask/src/linux/init.sh). xtask prepends SECRET=
# (the swap guest's secret, hex), RESIDENT= (pages) and BENCH= (resident
# limits to time, or empty). Prints
#   RAMPART-SWAP: run exit <status>
#   RAMPART-SWAP: bench <resident|none> exit <status> wall <ms>
# around rampart-vmm's own lines, which linux_swap.rs reads back.

sw() { printf 'RAMPART-SWAP: %s\n' "$*"; }

# The protected swap guest holds at most $RESIDENT pages; the hostile modes
# run right after the first evictions; before the VM is destroyed the VMM
# looks for the guest's secret in the swap file and in every pool page of
# the VM the host can read.
/bin/rampart-vmm run /guests/swap.bundle --name swap --swap /tmp/swap.img \
	--resident "$RESIDENT" --swap-attack --swap-scan "$SECRET"
sw "run exit $?"
/bin/rampart-vmm stats | sed 's/^/RAMPART-SWAP-STATS: /'

# bench: the same guest without swap and with each limit.
for r in $BENCH; do
	if [ "$r" = none ]; then
		/bin/rampart-vmm run /guests/swap.bundle --name "bench-$r" >/tmp/bench.log 2>&1
	else
		/bin/rampart-vmm run /guests/swap.bundle --name "bench-$r" --swap /tmp/bench.img --resident "$r" >/tmp/bench.log 2>&1
	fi
	st=$?
	wall=$(sed -n 's/.* stats: wall time: \([0-9]*\)\.\([0-9]*\) s$/\1\2/p' /tmp/bench.log | tail -n 1)
	swapline=$(sed -n 's/.* stats: swap: //p' /tmp/bench.log | tail -n 1)
	rate=$(sed -n 's/.* stats: swap pages per second: \([0-9-]*\) .*/\1/p' /tmp/bench.log | tail -n 1)
	percall=$(sed -n 's/.* stats: swap time in VM_EVICT and VM_RESTORE: .*(\([0-9]*\) us per call)/\1/p' /tmp/bench.log | tail -n 1)
	sw "bench $r exit $st wall $wall swap ${swapline:-none} rate ${rate:--} call ${percall:--}"
	[ "$st" -eq 0 ] || tail -n 20 /tmp/bench.log
	rm -f /tmp/bench.img
done

# linux-vmm/smp4/fuzz (packed by xtask/src/linux_vmm.rs, sourced by /init):
# rampart-fuzz drives the control pages from several processes while
# rampart-vmm runs the hello and smp guests in a loop beside it. xtask
# prepends PROCS=, CALLS= and SEED=. Prints
#   RAMPART-FUZZ: guest <name> round <r> PASS|FAIL <detail>
#   RAMPART-FUZZ: guests <rounds> rounds
#   RAMPART-FUZZ: exit <rampart-fuzz's status>
#   RAMPART-FUZZ: alive <uptime>
# which linux_vmm::fuzz_case reads back.

fz() { printf 'RAMPART-FUZZ: %s\n' "$*"; }

rm -f /tmp/fuzz.done /tmp/guests.done
(
	r=0
	# At least one round, then until the fuzzer is done.
	while [ "$r" -eq 0 ] || [ ! -f /tmp/fuzz.done ]; do
		for g in hello smp; do
			/bin/rampart-vmm run "/guests/$g.bundle" --name "$g-$r" >/tmp/fuzz-"$g".log 2>&1
			st=$?
			done_line=$(sed -n 's/^\[[^]]*\] \(GUEST-DONE .*\)/\1/p' /tmp/fuzz-"$g".log | tail -n 1)
			if [ "$st" -eq 0 ] && echo "$done_line" | grep -q ' 0 failed'; then
				fz "guest $g round $r PASS $done_line"
			else
				fz "guest $g round $r FAIL exit status $st: ${done_line:-no GUEST-DONE}"
				sed 's/^/RAMPART-FUZZ-LOG: /' /tmp/fuzz-"$g".log | tail -n 40
			fi
		done
		r=$((r + 1))
	done
	fz "guests $r rounds"
	touch /tmp/guests.done
) &

# Let the first guest start before the fuzzer does.
usleep 300000
/bin/rampart-fuzz --procs "$PROCS" --calls "$CALLS" --seed "$SEED"
fz "exit $?"
touch /tmp/fuzz.done
while [ ! -f /tmp/guests.done ]; do
	usleep 100000
done
fz "alive $(cat /proc/uptime)"

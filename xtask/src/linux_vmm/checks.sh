# rampart-vmm checks under the stock Linux host, packed by
# xtask/src/linux_vmm.rs and sourced by /init (xtask/src/linux/init.sh)
# after its own checks. xtask prepends `CHECKS="..."` (which checks to run,
# in order) and `PHASE=...`.
#
# Each check prints
#   RAMPART-VMM-TEST: begin <name>
#   ... its commands' output ...
#   RAMPART-VMM-TEST: <name> PASS|FAIL <detail>
# which linux_vmm::parse_checks reads back. A check never stops the others.

VMM=/bin/rampart-vmm
G=/guests

mark() { printf 'RAMPART-VMM-TEST: %s\n' "$*"; }
pass() { mark "$CHECK PASS $*"; }
fail() { mark "$CHECK FAIL $*"; }

# wait_line FILE TEXT TENTHS: waits until FILE has a line containing TEXT.
wait_line() {
	i=0
	while ! grep -q -- "$2" "$1" 2>/dev/null; do
		i=$((i + 1))
		[ "$i" -gt "$3" ] && return 1
		usleep 100000
	done
}

# held_range FILE: "A B" from `holding ..., guest memory at A-B;`.
held_range() {
	sed -n 's/.*holding .*guest memory at \(0x[0-9a-f]*\)-\(0x[0-9a-f]*\);.*/\1 \2/p' "$1" | head -n 1
}

# probe ADDR: a 32-bit /dev/mem read in a child; prints SIGBUS, DATA <v> or
# ERROR <status> <output>.
probe() {
	out=$(devmem "$1" 32 2>&1)
	st=$?
	out=$(echo $out)
	if [ "$st" -eq 135 ]; then
		echo SIGBUS
	elif [ "$st" -eq 0 ]; then
		echo "DATA $out"
	else
		echo "ERROR $st $out"
	fi
}

hexadd() { printf '0x%x' $(($1 + $2)); }

# vm_run NAME BUNDLE [ARGS]: runs a VM to the end, output on the console
# and in /tmp/NAME.log; returns the VMM's status.
vm_run() {
	n=$1
	b=$2
	shift 2
	$VMM run "$b" --name "$n" "$@" >/tmp/"$n".log 2>&1
	st=$?
	cat /tmp/"$n".log
	return $st
}

# A test guest must exit 0 with `GUEST-DONE n passed, 0 failed` and its
# pages reclaimed.
check_guest() {
	g=$1
	vm_run "$g" "$G/$g.bundle"
	st=$?
	done_line=$(sed -n 's/^\[[^]]*\] \(GUEST-DONE .*\)/\1/p' /tmp/"$g".log | tail -n 1)
	exits=$(sed -n 's/.*stats: exits total: //p' /tmp/"$g".log)
	if [ "$st" -ne 0 ]; then
		fail "exit status $st: ${done_line:-no GUEST-DONE}"
	elif ! echo "$done_line" | grep -q ' 0 failed'; then
		fail "exit 0 but ${done_line:-no GUEST-DONE}"
	elif ! grep -q 'pages (.*) reclaimed' /tmp/"$g".log; then
		fail "no 'pages reclaimed' line"
	else
		pass "$(cat /sys/devices/system/cpu/online | sed 's/^/host CPUs /'): $done_line, $exits exits"
	fi
}

# Four VMs at once: four held VMMs, `list` sees four VMs, then all run to
# the end and exit 0.
check_four() {
	pids=
	k=0
	for g in hello smp memtest hello; do
		k=$((k + 1))
		$VMM run "$G/$g.bundle" --name "vm$k-$g" --hold >/tmp/four$k.log 2>&1 &
		pids="$pids $!"
	done
	ok=1
	for k in 1 2 3 4; do
		wait_line /tmp/four$k.log 'holding' 300 || ok=0
	done
	$VMM list >/tmp/four-list.log 2>&1
	cat /tmp/four-list.log
	live=$(grep -c '^0x.* pid ' /tmp/four-list.log)
	kill -USR1 $pids
	codes=
	bad=0
	for p in $pids; do
		wait "$p"
		c=$?
		codes="$codes $c"
		[ "$c" -ne 0 ] && bad=1
	done
	for k in 1 2 3 4; do cat /tmp/four$k.log; done
	if [ "$ok" -ne 1 ]; then
		fail "not all four VMMs reached their hold; exit statuses:$codes"
	elif [ "$live" -ne 4 ]; then
		fail "rampart-vmm list showed $live VMs owned by running VMMs, want 4"
	elif [ "$bad" -ne 0 ]; then
		fail "exit statuses:$codes"
	else
		pass "4 VMs live at once (VM_LIST), all exited 0 (statuses:$codes)"
	fi
}

# A donated page read through /dev/mem: SIGBUS for devmem, the kernel and
# the VM go on; after the run the page reads zero.
check_devmem() {
	$VMM run "$G/hello.bundle" --name held --hold >/tmp/held.log 2>&1 &
	pid=$!
	if ! wait_line /tmp/held.log 'holding' 300; then
		kill -9 "$pid"
		cat /tmp/held.log
		fail "the VMM never held"
		return
	fi
	set -- $(held_range /tmp/held.log)
	first=$1
	last=$(hexadd "$2" -3)
	r1=$(probe "$first")
	r2=$(probe "$last")
	up=$(cut -d' ' -f1 /proc/uptime)
	kill -USR1 "$pid"
	wait "$pid"
	st=$?
	cat /tmp/held.log
	after=$(probe "$first")
	echo "devmem $first during the hold: $r1; $last: $r2; after the run: $after; uptime $up"
	if [ "$r1" != SIGBUS ] || [ "$r2" != SIGBUS ]; then
		fail "devmem of guest memory $first / $last gave '$r1' / '$r2', want SIGBUS"
	elif [ "$st" -ne 0 ]; then
		fail "the held VM exited $st after SIGUSR1"
	elif [ "$after" != "DATA 0x00000000" ]; then
		fail "after the VM was destroyed devmem $first gave '$after', want zero"
	else
		pass "devmem $first and $last: SIGBUS; kernel alive (uptime $up s); the VM then ran to the end (exit 0); afterwards the page reads 0"
	fi
}

# A hostile host on the metadata of a live VM: the VMM makes RECLAIM_HYP,
# UNSHARE_HYP, SHARE_HYP, DONATE_HYP, VM_DONATE, VM_SHARE and VM_CREATE on
# a vCPU state page, the stage-2 root, a stage-2 table, an unused table
# page and the whole metadata through the control pages; all must be
# DENIED, and the hello guest must then run to the end (nothing changed).
check_metadata() {
	vm_run meta "$G/hello.bundle" --attack-metadata
	st=$?
	line=$(sed -n 's/.*rampart-vmm: \(metadata attacks .*\)/\1/p' /tmp/meta.log | head -n 1)
	done_line=$(sed -n 's/^\[[^]]*\] \(GUEST-DONE .*\)/\1/p' /tmp/meta.log | tail -n 1)
	if [ -z "$line" ]; then
		fail "the VMM made no metadata attacks (exit $st)"
	elif ! echo "$line" | grep -q ' 0 not$'; then
		fail "$line"
	elif [ "$st" -ne 0 ] || ! echo "$done_line" | grep -q ' 0 failed'; then
		fail "$line, but then the VM exited $st: ${done_line:-no GUEST-DONE}"
	else
		pass "$line; then $done_line, exit 0"
	fi
}

# SIGKILL mid-run: memtest held after its first pass (its pattern in all
# free RAM) is killed; its memory stays the guest's (SIGBUS) until
# `rampart-vmm reclaim`, which returns it zeroed; a new VM then runs in
# the same place.
check_kill() {
	$VMM run "$G/memtest.bundle" --name killed --hold-at 'pass 1 of' >/tmp/killed.log 2>&1 &
	pid=$!
	if ! wait_line /tmp/killed.log 'holding' 600; then
		kill -9 "$pid"
		cat /tmp/killed.log
		fail "memtest never reached the hold after pass 1"
		return
	fi
	set -- $(held_range /tmp/killed.log)
	ram=$1
	# Half-way into guest RAM: far past the image, written by pass 1.
	mid=$(hexadd "$1" $((($2 - $1 + 1) / 2)))
	before=$(probe "$mid")
	kill -9 "$pid"
	wait "$pid"
	# (busybox ash's `wait` may already have reaped the job: judge by
	# whether the process is gone, not by the status.)
	st=$?
	gone=yes
	kill -0 "$pid" 2>/dev/null && gone=no
	cat /tmp/killed.log
	orphan=$(probe "$mid")
	# Any rampart-vmm command first destroys the VMs of dead VMMs; reclaim
	# also destroys live VMs no VMM owns.
	$VMM reclaim >/tmp/reclaim.log 2>&1
	rst=$?
	cat /tmp/reclaim.log
	after_mid=$(probe "$mid")
	after_ram=$(probe "$ram")
	vm_run reuse "$G/hello.bundle"
	nst=$?
	at=$(sed -n 's/.*KiB of RAM at \(0x[0-9a-f]*\),.*/\1/p' /tmp/reuse.log | head -n 1)
	echo "kill -9: gone $gone (wait status $st); devmem $mid before: $before, after the kill: $orphan, after reclaim: $after_mid; $ram after reclaim: $after_ram; new VM's RAM at $at"
	if [ "$gone" != yes ]; then
		fail "the VMM (pid $pid) still runs after kill -9 (wait status $st)"
	elif [ "$before" != SIGBUS ] || [ "$orphan" != SIGBUS ]; then
		fail "devmem $mid gave '$before' while held and '$orphan' after the kill, want SIGBUS both times"
	elif [ "$rst" -ne 0 ] || ! grep -q 'destroyed' /tmp/reclaim.log; then
		fail "rampart-vmm reclaim (status $rst) did not destroy the orphan"
	elif [ "$after_mid" != "DATA 0x00000000" ] || [ "$after_ram" != "DATA 0x00000000" ]; then
		fail "after reclaim devmem $mid / $ram gave '$after_mid' / '$after_ram', want zero"
	elif [ "$nst" -ne 0 ]; then
		fail "a new VM after the reclaim exited $nst"
	elif [ "$at" != "$ram" ]; then
		fail "the new VM's RAM is at $at, not in the reclaimed range at $ram"
	else
		pass "orphaned memory SIGBUS after kill -9, zero after reclaim; a new VM reused $ram and exited 0"
	fi
}

# SIGKILL while vCPU threads are inside VCPU_RUN: the smp guest's vCPU 1
# holds after its first line while vCPU 0 keeps polling (an MMIO exit per
# poll), so the kill lands in the middle of runs. The VM must still be
# destroyed by the clean-up, and the pool reused.
check_kill_running() {
	$VMM run "$G/smp.bundle" --name running --hold-at 'GUEST-CPU 1 up' >/tmp/running.log 2>&1 &
	pid=$!
	if ! wait_line /tmp/running.log 'holding' 300; then
		kill -9 "$pid"
		cat /tmp/running.log
		fail "the smp guest's vCPU 1 never reached the hold"
		return
	fi
	set -- $(held_range /tmp/running.log)
	ram=$1
	usleep 200000
	kill -9 "$pid"
	wait "$pid"
	gone=yes
	kill -0 "$pid" 2>/dev/null && gone=no
	cat /tmp/running.log
	orphan=$(probe "$ram")
	$VMM run "$G/smp.bundle" --name after >/tmp/after.log 2>&1
	nst=$?
	cat /tmp/after.log
	at=$(sed -n 's/.*KiB of RAM at \(0x[0-9a-f]*\),.*/\1/p' /tmp/after.log | head -n 1)
	echo "kill -9 of a running smp VMM: gone $gone; devmem $ram after the kill: $orphan; next run's RAM at $at, status $nst"
	if [ "$gone" != yes ]; then
		fail "the VMM still runs after kill -9"
	elif [ "$orphan" != SIGBUS ]; then
		fail "devmem $ram after the kill gave '$orphan', want SIGBUS"
	elif ! grep -q 'destroyed VM .* left by pid' /tmp/after.log; then
		fail "the next run did not destroy the VM the killed VMM left"
	elif [ "$nst" -ne 0 ]; then
		fail "the next run exited $nst"
	elif [ "$at" != "$ram" ]; then
		fail "the next VM's RAM is at $at, not in the freed range at $ram"
	else
		pass "killed with vCPU 0 running; the next run's clean-up destroyed the VM, then reused $ram and exited 0"
	fi
}

# One byte of the image flipped: the hypervisor refuses the first run.
check_tamper() {
	cp "$G/hello.bundle" /tmp/tampered.bundle
	# The bundle header is 176 bytes; flip a byte 0x200 into the image.
	off=$((176 + 0x200))
	old=$(dd if=/tmp/tampered.bundle bs=1 skip=$off count=1 2>/dev/null | od -A n -t u1 | tr -d ' \n')
	new=$(((old ^ 0xff) & 0xff))
	printf "\\$(printf '%03o' "$new")" | dd of=/tmp/tampered.bundle bs=1 seek=$off count=1 conv=notrunc 2>/dev/null
	now=$(dd if=/tmp/tampered.bundle bs=1 skip=$off count=1 2>/dev/null | od -A n -t u1 | tr -d ' \n')
	vm_run tampered /tmp/tampered.bundle
	st=$?
	reason=$(grep -o 'the hypervisor refused .*' /tmp/tampered.log | head -n 1)
	if [ "$now" != "$new" ]; then
		fail "could not flip byte $off ($old -> $now, want $new)"
	elif [ "$st" -ne 4 ]; then
		fail "exit status $st, want 4 (refused)"
	elif ! echo "$reason" | grep -q 'BAD_SIGNATURE'; then
		fail "no BAD_SIGNATURE refusal: '$reason'"
	elif grep -q '^\[tampered\] GUEST-' /tmp/tampered.log; then
		fail "the tampered guest printed something"
	else
		pass "byte $off $old -> $new: exit 4, rampart-vmm: $reason"
	fi
}

# A bundle signed by a key the hypervisor does not trust is refused.
check_untrusted() {
	b=$G/hello.untrusted.bundle
	if [ ! -f "$b" ]; then
		fail "no $b in the initramfs"
		return
	fi
	vm_run untrusted "$b"
	st=$?
	reason=$(grep -o 'the hypervisor refused .*' /tmp/untrusted.log | head -n 1)
	if [ "$st" -ne 4 ]; then
		fail "exit status $st, want 4 (refused)"
	elif ! echo "$reason" | grep -q 'UNTRUSTED_KEY'; then
		fail "no UNTRUSTED_KEY refusal: '$reason'"
	else
		pass "exit 4, rampart-vmm: $reason"
	fi
}

# The command line's conventions on the real host: usage errors exit 2
# (kept apart from a refusal, 4), --version, and a --dev-mem that is not
# /dev/mem is named in a one-line error (exit 1), not a SIGBUS.
check_cli() {
	$VMM run "$G/hello.bundle" --cpus 0 >/tmp/cli.log 2>&1
	st0=$?
	$VMM run "$G/hello.bundle" --cpus 64 >>/tmp/cli.log 2>&1
	st64=$?
	ver=$($VMM --version 2>&1)
	stv=$?
	$VMM --dev-mem /dev/zero info >/tmp/cli-zero.log 2>&1
	stz=$?
	cat /tmp/cli.log /tmp/cli-zero.log
	zero=$(grep -o '/dev/zero is .*' /tmp/cli-zero.log | head -n 1)
	if [ "$st0" -ne 2 ] || [ "$st64" -ne 2 ]; then
		fail "--cpus 0: exit $st0, --cpus 64: exit $st64, want 2 (usage)"
	elif [ "$stv" -ne 0 ] || [ "${ver#rampart-vmm }" = "$ver" ]; then
		fail "--version: exit $stv, '$ver'"
	elif [ "$stz" -ne 1 ] || [ -z "$zero" ] || grep -q 'SIGBUS at' /tmp/cli-zero.log; then
		fail "--dev-mem /dev/zero info: exit $stz, '$(tail -n 1 /tmp/cli-zero.log)'"
	else
		pass "--cpus 0/64: exit 2; $ver; --dev-mem /dev/zero: exit 1, $zero"
	fi
}

# timer_irqs: the host's timer interrupts so far (the arch_timer line of
# /proc/interrupts, summed over CPUs).
timer_irqs() {
	awk '/arch_timer/ { s = 0; for (i = 2; i <= NF; i++) { if ($i !~ /^[0-9]+$/) break; s += $i }; print s }' /proc/interrupts
}

# uptime_cs: /proc/uptime in centiseconds (read from the clocksource, so
# right even when ticks were lost).
uptime_cs() {
	awk '{ printf "%d\n", $1 * 100 }' /proc/uptime
}

# The host keeps its clock while a guest computes without exits (1 host
# CPU): the spin guest spins for 10 s; meanwhile the host's timer
# interrupts must come at >= 80% of the rate a busy host gets without a
# guest, a host loop must never stall for 1 s, and SIGINT must stop the
# vCPU thread within 250 ms (it returns from VCPU_RUN at the next host
# tick) and rampart-vmm (exit 130, VM destroyed) within 2 s, long before the
# spin would end. The guest also checks that its BRK reached its own vector.
check_host_tick() {
	( while :; do :; done ) &
	busy=$!
	i0=$(timer_irqs)
	t0=$(uptime_cs)
	sleep 2
	i1=$(timer_irqs)
	t1=$(uptime_cs)
	kill "$busy"
	wait "$busy" 2>/dev/null
	base=$(((i1 - i0) * 100 / (t1 - t0 + (t1 == t0))))
	$VMM run "$G/spin.bundle" --name spin >/tmp/spin.log 2>&1 &
	pid=$!
	if ! wait_line /tmp/spin.log 'GUEST-SPIN 10 s' 300; then
		kill -9 "$pid"
		cat /tmp/spin.log
		fail "the spin guest never started spinning"
		return
	fi
	(while :; do
		read u _ </proc/uptime
		echo "$u"
		usleep 20000
	done) >/tmp/spin-loop.log &
	loop=$!
	i0=$(timer_irqs)
	t0=$(uptime_cs)
	sleep 3
	i1=$(timer_irqs)
	t1=$(uptime_cs)
	kill "$loop"
	wait "$loop" 2>/dev/null
	alive=yes
	kill -0 "$pid" 2>/dev/null || alive=no
	grep -q 'GUEST-SPIN done' /tmp/spin.log && alive=no
	ts=$(uptime_cs)
	kill -INT "$pid"
	wait "$pid"
	st=$?
	te=$(uptime_cs)
	cat /tmp/spin.log
	rate=$(((i1 - i0) * 100 / (t1 - t0 + (t1 == t0))))
	gap=$(awk 'NR > 1 { d = $1 - p; if (d > m) m = d } { p = $1 } END { printf "%d\n", m * 1000 }' /tmp/spin-loop.log)
	stop=$(((te - ts) * 10))
	irq_exits=$(sed -n 's/.*stats: exits EXIT_INTERRUPT: \([0-9]*\).*/\1/p' /tmp/spin.log)
	vstop=$(sed -n 's/.*vCPU threads stopped \([0-9.]*\) ms after signal.*/\1/p' /tmp/spin.log)
	vstop_ms=${vstop%.*}
	timer_exits=$(sed -n 's/.*stats: host timer exits: \([0-9]*\).*/\1/p' /tmp/spin.log)
	echo "host tick: busy host $base/s; with the guest spinning $rate/s over $((t1 - t0))0 ms; longest host-loop stall $gap ms; SIGINT to vCPU stop ${vstop:-?} ms, to exit $stop ms (status $st); EXIT_INTERRUPT exits ${irq_exits:-?}, of them for the host's timer ${timer_exits:-?}"
	if [ "$alive" != yes ]; then
		fail "the guest's 10 s spin ended before the host measured 3 s: the host was frozen while it spun (host timer $rate/s, busy host $base/s, longest stall $gap ms)"
	elif [ "$base" -lt 50 ]; then
		fail "a busy host without a guest got $base timer interrupts/s: no baseline"
	elif [ $((rate * 100)) -lt $((base * 80)) ]; then
		fail "the host got $rate timer interrupts/s while the guest spun, under 80% of a busy host's $base/s"
	elif [ "${timer_exits:-0}" -eq 0 ]; then
		fail "no EXIT_INTERRUPT run ended for the host's timer (x2 = 1)"
	elif [ "$gap" -ge 1000 ]; then
		fail "a host loop stalled for $gap ms while the guest spun"
	elif [ "$st" -ne 130 ] || ! grep -q 'interrupted by signal 2' /tmp/spin.log; then
		fail "after SIGINT rampart-vmm exited $st, want 130 (interrupted by signal 2)"
	elif [ -z "$vstop_ms" ] || [ "$vstop_ms" -gt 250 ]; then
		fail "the vCPU thread stopped ${vstop:-?} ms after SIGINT, want <= 250"
	elif [ "$stop" -gt 2000 ]; then
		fail "rampart-vmm took $stop ms to exit after SIGINT"
	elif ! grep -q 'GUEST-PASS brk-own-vector' /tmp/spin.log; then
		fail "the guest's BRK did not reach its own vector"
	else
		pass "$rate timer interrupts/s while the guest spun (busy host: $base/s), longest host-loop stall $gap ms, $timer_exits runs ended by the host's timer, SIGINT stopped the vCPU in $vstop ms and rampart-vmm in $stop ms; guest BRK reached its own vector"
	fi
}

# Launch and exit-rate figures for `cargo xtask bench vmm`: ROUNDS runs of
# hello and memtest, their stats lines carry the figures.
check_bench() {
	r=0
	st_all=0
	while [ "$r" -lt "${ROUNDS:-3}" ]; do
		r=$((r + 1))
		for g in hello memtest; do
			# With a second binary (RAMPART_BENCH_VMM_BEFORE), it runs
			# too, first in odd rounds and second in even ones.
			order=""
			if [ -x /bin/rampart-vmm-before ]; then
				if [ $((r % 2)) -eq 1 ]; then order="before after"; else order="after before"; fi
			else
				order="after"
			fi
			for v in $order; do
				if [ "$v" = before ]; then bin=/bin/rampart-vmm-before; n="bench$r-$g.before"; else bin=$VMM; n="bench$r-$g"; fi
				$bin run "$G/$g.bundle" --name "$n" >/tmp/b.log 2>&1
				st=$?
				[ "$st" -ne 0 ] && st_all=$st
				grep -E 'stats: (wall time|exits|launch|host calls)|rampart-vmm: FAIL|refused' /tmp/b.log
			done
		done
	done
	# Where one launch's time goes (rampart-vmm's launch trace).
	RAMPART_VMM_LAUNCH_TRACE=1 $VMM run "$G/hello.bundle" --name trace-hello >/tmp/b.log 2>&1
	grep -E '^launch: |stats: launch' /tmp/b.log | sed 's/^/[trace] /'
	if [ "$st_all" -ne 0 ]; then
		fail "a run exited $st_all"
	else
		pass "$ROUNDS rounds"
	fi
}

for CHECK in $CHECKS; do
	mark "begin $CHECK"
	case "$CHECK" in
	guest-*) check_guest "${CHECK#guest-}" ;;
	four-vms) check_four ;;
	devmem-sigbus) check_devmem ;;
	metadata-attack) check_metadata ;;
	kill9-reclaim) check_kill ;;
	kill9-running) check_kill_running ;;
	tampered-bundle) check_tamper ;;
	untrusted-signer) check_untrusted ;;
	cli) check_cli ;;
	host-tick) check_host_tick ;;
	bench) check_bench ;;
	*) fail "unknown check" ;;
	esac
done
mark "finished $PHASE"

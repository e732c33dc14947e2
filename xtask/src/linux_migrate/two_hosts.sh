# linux-migrate/two-hosts (issue 14, secure migration), packed by
# xtask/src/linux_migrate.rs and sourced by /init on BOTH machines. xtask
# prepends ROLE= (source|dest), ADDR= (this host's address), PEER= (the
# other's), PORT= (TCP) and FLIP= (the byte the hostile sender flips).
# Prints `RAMPART-MIGRATE: <what>` lines around rampart-vmm's own (each
# log prefixed with its step), which linux_migrate.rs reads back.

mg() { printf 'RAMPART-MIGRATE: %s\n' "$*"; }

# wait_for FILE PATTERN COUNT SECONDS: until FILE has COUNT lines matching.
wait_for() {
	i=0
	while [ "$(grep -c "$2" "$1" 2>/dev/null)" -lt "$3" ]; do
		i=$((i + 1))
		[ "$i" -gt "$4" ] && return 1
		sleep 1
	done
	return 0
}

# bounded SECS LOG ARGS...: runs `rampart-vmm migrate-in ARGS` for at
# most SECS seconds (a stream that should have been refused but was not
# would run its guest forever); sets $st to its exit status (143 if it had
# to be stopped).
bounded() {
	secs=$1
	log=$2
	shift 2
	/bin/rampart-vmm migrate-in "$@" >"$log" 2>&1 &
	p=$!
	i=0
	while kill -0 "$p" 2>/dev/null && [ "$i" -lt "$secs" ]; do
		sleep 1
		i=$((i + 1))
	done
	kill -TERM "$p" 2>/dev/null
	wait "$p"
	st=$?
}

# show STEP FILE: the log without most count lines (the first 8 and the
# last 4 of them are enough to read the count).
show() {
	grep -v 'GUEST-COUNT' "$2" | sed "s/^/$1: /"
	grep 'GUEST-COUNT' "$2" | head -n 8 | sed "s/^/$1: /"
	grep 'GUEST-COUNT' "$2" | tail -n 4 | sed "s/^/$1: (last) /"
}

# The network: virtio-net-pci behind Rampart's SMMU, linked to the other
# QEMU machine over a loopback socket of the build machine only.
for m in failover net_failover virtio_net; do
	out=$(insmod "/lib/modules/rampart-net/$m.ko" 2>&1) || mg "insmod $m failed: $out"
done
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 20 ]; do
	sleep 1
	i=$((i + 1))
done
ip link set lo up
ip addr add "$ADDR/24" dev eth0
ip link set eth0 up
mg "net $(ip -o -4 addr show dev eth0 | sed 's/  */ /g')"

if [ "$ROLE" = dest ]; then
	# 1. The live migration: import, then run the guest on.
	/bin/rampart-vmm migrate-in --listen "$PORT" --name migrated >/tmp/in1.log 2>&1 &
	pid=$!
	if wait_for /tmp/in1.log 'GUEST-COUNT' 10 300; then mg "in1 counted on"; else mg "in1 never counted"; fi
	kill -TERM "$pid" 2>/dev/null
	wait "$pid"
	mg "in1 exit $?"
	show IN1 /tmp/in1.log
	# 2. The stream with a byte flipped on the wire.
	bounded 240 /tmp/in2.log --listen "$PORT" --name flipped
	mg "in2 exit $st"
	show IN2 /tmp/in2.log
	# 3. The first stream, saved by the source, replayed.
	bounded 120 /tmp/in3.log --listen "$PORT" --name replayed
	mg "in3 exit $st"
	show IN3 /tmp/in3.log
	/bin/rampart-vmm list | sed 's/^/LIST: /'
	mg "dest done"
else
	# 1. The count guest runs, then moves live; the stream is also saved.
	/bin/rampart-vmm run /guests/count.bundle --name count >/tmp/run1.log 2>&1 &
	run=$!
	wait_for /tmp/run1.log 'GUEST-COUNT' 10 300 || mg "run1 never counted"
	/bin/rampart-vmm migrate-out count --to "$PEER:$PORT" --wait 300 --save-stream /tmp/stream.bin >/tmp/out1.log 2>&1
	st=$?
	mg "out1 exit $st"
	# Neither exported nor refused: the guest still runs here; stop it.
	[ "$st" -eq 0 ] || [ "$st" -eq 4 ] || kill -TERM "$run" 2>/dev/null
	wait "$run"
	mg "run1 exit $?"
	show RUN1 /tmp/run1.log
	show OUT1 /tmp/out1.log
	mg "stream bytes $(wc -c </tmp/stream.bin)"
	# 2. Another count guest; a byte of its stream flipped on the wire.
	/bin/rampart-vmm run /guests/count.bundle --name count2 >/tmp/run2.log 2>&1 &
	run=$!
	wait_for /tmp/run2.log 'GUEST-COUNT' 3 300 || mg "run2 never counted"
	/bin/rampart-vmm migrate-out count2 --to "$PEER:$PORT" --wait 300 --hostile-flip-byte "$FLIP" >/tmp/out2.log 2>&1
	st=$?
	mg "out2 exit $st"
	[ "$st" -eq 0 ] || [ "$st" -eq 4 ] || kill -TERM "$run" 2>/dev/null
	wait "$run"
	mg "run2 exit $?"
	show OUT2 /tmp/out2.log
	# 3. The first stream again.
	/bin/rampart-vmm migrate-out --replay /tmp/stream.bin --to "$PEER:$PORT" --wait 300 >/tmp/out3.log 2>&1
	mg "out3 exit $?"
	show OUT3 /tmp/out3.log
	mg "source done"
fi

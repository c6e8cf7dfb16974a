#!/usr/bin/env bash
# compare.sh measures, in one run on one machine, the doe-family server with
# its full policy against a no-op go-smtp server that discards every message
# (the ceiling of any server built on go-smtp), and prints the ratio.
#
# doe-family runs with: relay control, SPF (both identities) against a DNS
# server on loopback, DKIM signing of every message (the sender is
# load@doe-family.com from an -internal network), the durable queue (group
# commit, fsync) and maildir delivery of every recipient. It runs a second
# time with -unsafe-no-fsync to show what durability costs. After each run
# the script waits for the queue to drain and checks that every accepted
# message reached the maildir.
#
# Usage (from anywhere in the repository):
#
#	examples/smtpload/compare.sh
#
# Knobs (environment): SIZES="4096 102400" CONNS="1 8 64" N_SMALL=3000
# N_LARGE=1000 DURATION=60s (bound of each load run, in seconds) SOAK=60 (seconds of
# steady 4 KiB/8-connection load watching the queue length; 0: skip)
# NOSYNC=1 (0: skip the -unsafe-no-fsync server) DKIM_ALG=rsa|ed25519
# WORKDIR=dir (default: a new temp dir under ${TMPDIR:-/tmp}; spool and
# maildir live there, so that is the disk measured) KEEP=1 (keep it)
# DEADLINE=540 (seconds: later runs are skipped past it) PER_CONN=0
# (messages per connection before the load generator reconnects; 0: each
# connection stays open. 1 is closer to an MX, whose clients mostly send
# one message per connection: it adds connection setup, the reverse DNS
# lookup and the connect rules to every message, for both servers.)
# DOE_FLAGS (more doe-family flags for both of its servers, e.g.
# "-queue journal")
#
# Everything listens on 127.0.0.1 and connects from 127.0.0.2..9 (mtakit
# limits connections per client IP to 20); nothing leaves loopback. The
# load generator runs on the same cores as the servers and competes with
# them for CPU: compare ratios, not absolute numbers across machines.
set -euo pipefail

: "${SIZES:=4096 102400}" "${CONNS:=1 8 64}" "${N_SMALL:=3000}" "${N_LARGE:=1000}"
: "${DURATION:=60s}" "${SOAK:=60}" "${NOSYNC:=1}" "${DKIM_ALG:=rsa}" "${KEEP:=0}"
: "${DEADLINE:=540}" "${WORKDIR:=}" "${PER_CONN:=0}" "${DOE_FLAGS:=}"
SOURCES=127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8,127.0.0.9
FROM=load@doe-family.com
TO=user@doe-family.com
HELO=load.doe-family.com

cd "$(dirname "$0")/../.."
ROOT=$(pwd)
# shellcheck source=examples/smtpload/lib.sh
. "$ROOT/examples/smtpload/lib.sh"
if [[ -z $WORKDIR ]]; then
	WORK=$(mktemp -d "${TMPDIR:-/tmp}/mtakit-compare.XXXXXX")
else
	WORK=$WORKDIR
	mkdir -p "$WORK"
fi
BIN=$WORK/bin
PIDS=()

cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		for _ in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
	done
	if [[ $KEEP == 1 ]]; then
		log "kept $WORK"
	else
		rm -rf "$WORK"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- build
log "building into $BIN"
mkdir -p "$BIN"
for cmd in smtpload smtpload/noop smtpload/dnsserver doe-family; do
	go build -o "$BIN/$(basename "$cmd")" "./examples/$cmd"
done

# ---------------------------------------------------------------- DKIM key
KEY=$WORK/dkim.pem
case $DKIM_ALG in
rsa)
	openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$KEY" 2>/dev/null
	P=$(openssl pkey -in "$KEY" -pubout -outform DER | base64 -w0)
	DKIM_TXT="v=DKIM1; k=rsa; p=$P"
	;;
ed25519)
	openssl genpkey -algorithm ED25519 -out "$KEY"
	P=$(openssl pkey -in "$KEY" -pubout -outform DER | tail -c 32 | base64 -w0)
	DKIM_TXT="v=DKIM1; k=ed25519; p=$P"
	;;
*)
	log "DKIM_ALG: rsa or ed25519"
	exit 2
	;;
esac

# ---------------------------------------------------------------- servers
"$BIN/dnsserver" -listen 127.0.0.1:0 \
	"doe-family.com. TXT \"v=spf1 ip4:127.0.0.0/8 -all\"" \
	"$HELO. TXT \"v=spf1 ip4:127.0.0.0/8 -all\"" \
	"$HELO. A 127.0.0.2" \
	"doe-family.com. MX 10 mx.doe-family.com." \
	"mx.doe-family.com. A 127.0.0.1" \
	"2022-09._domainkey.doe-family.com. TXT \"$DKIM_TXT\"" \
	>"$WORK/dns.out" 2>&1 &
PIDS+=($!)
DNS=$(wait_for "$WORK/dns.out" '^dns listening on (.*)$')

NOOP=127.0.0.1:$(free_port)
"$BIN/noop" -listen "$NOOP" >"$WORK/noop.out" 2>&1 &
PIDS+=($!)

# start_doe MODE [flags]: a doe-family with its own spool and maildir under
# $WORK/MODE; sets DOE_ADDR.
start_doe() {
	local mode=$1
	shift
	mkdir -p "$WORK/$mode"
	# Each server has a -data of its own (it holds a lock and the admin
	# socket there); -rate-limit off: the runs send more than its default
	# allows one address in an hour.
	# shellcheck disable=SC2086
	"$BIN/doe-family" -listen 127.0.0.1:0 -submission "" -domain doe-family.com \
		-internal 127.0.0.0/8 -dkim-key "$KEY" -dns "$DNS" -rate-limit off \
		-spool "$WORK/$mode/spool" -maildir "$WORK/$mode/mail" -data "$WORK/$mode/data" \
		-hostname mx.doe-family.com -retry-min 1s -log-level warn $DOE_FLAGS "$@" \
		>"$WORK/$mode.out" 2>&1 &
	PIDS+=($!)
	printf -v "PID_$mode" '%s' "$!"
	DOE_ADDR=$(wait_for "$WORK/$mode.out" '^mta listening on (.*)$')
}
start_doe durable
ADDR_durable=$DOE_ADDR
MODES=(durable)
if [[ $NOSYNC == 1 ]]; then
	start_doe nosync -unsafe-no-fsync
	ADDR_nosync=$DOE_ADDR
	MODES+=(nosync)
fi
for _ in $(seq 100); do
	(exec 3<>"/dev/tcp/${NOOP%:*}/${NOOP##*:}") 2>/dev/null && break
	sleep 0.1
done

# queue_len MODE: the messages waiting in working and deliver.
queue_len() { waiting "$WORK/$1/spool" "$WORK/$1/data"; }
shopt -s nullglob

# monitor MODE OUT: every 100 ms, append "seconds queue-length" to OUT.
monitor() {
	local t0 mode=$1 out=$2
	t0=$(now)
	while :; do
		echo "$(awk -v a="$(now)" -v b="$t0" 'BEGIN{printf "%.1f", a-b}') $(queue_len "$mode")" >>"$out"
		sleep 0.1
	done
}

# drain MODE: wait (up to 120 s) for working/ and deliver/ to be empty;
# prints the seconds it took, or "timeout".
drain() {
	local t0 mode=$1
	t0=$(now)
	for _ in $(seq 1200); do
		if [[ $(queue_len "$mode") == 0 ]]; then
			awk -v a="$(now)" -v b="$t0" 'BEGIN{printf "%.2f", a-b}'
			return 0
		fi
		sleep 0.1
	done
	echo timeout
}

# delivered MODE: message files in the maildir.
delivered() { find "$WORK/$1/mail" -path '*/new/*' -type f 2>/dev/null | wc -l; }

declare -A ACCEPTED=([durable]=0 [nosync]=0)

# load ADDR SIZE CONNS N DURATION: one smtpload run, its JSON on stdout.
# It starts from a clean page cache: every server shares one filesystem,
# and a syncfs(2) writes back whatever is dirty on it, so a run would
# otherwise pay for the writeback the runs before it left (the no-fsync
# server's spool above all), which made durable/no-fsync swing by +-20%.
load() {
	local secs=${5%s}
	sync
	timeout $((secs + 30)) "$BIN/smtpload" -addr "$1" -size "$2" -c "$3" -n "$4" -duration "$5" \
		-per-conn "$PER_CONN" -from "$FROM" -to "$TO" -helo "$HELO" -source "$SOURCES" -json
}

# cpu_ticks PID: user+system CPU time of process PID, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
TICKS=$(getconf CLK_TCK 2>/dev/null || echo 100)

# doe_run MODE SIZE CONNS N [DURATION]: load a doe-family, watch and drain
# its queue; sets RES (smtpload JSON), MAXQ, DRAIN, MON (the samples) and
# CPU_US (the server's CPU time per accepted message, delivery included,
# in microseconds: a figure the load generator's share of the cores does
# not blur).
RUN=0
doe_run() {
	local mode=$1 addr_var=ADDR_$1 pid_var=PID_$1 mpid c0 c1 sent
	RUN=$((RUN + 1))
	MON=$WORK/monitor.$RUN.$1.$2.$3
	: >"$MON"
	monitor "$mode" "$MON" &
	mpid=$!
	c0=$(cpu_ticks "${!pid_var}")
	RES=$(load "${!addr_var}" "$2" "$3" "$4" "${5:-$DURATION}") || true
	DRAIN=$(drain "$mode")
	c1=$(cpu_ticks "${!pid_var}")
	sent=$(jget sent "$RES")
	CPU_US=$(awk -v a="$c0" -v b="$c1" -v n="$sent" -v t="$TICKS" 'BEGIN{printf "%.0f", (n>0 ? (b-a)/t*1e6/n : 0)}')
	kill "$mpid" 2>/dev/null || true
	wait "$mpid" 2>/dev/null || true
	MAXQ=$(awk 'BEGIN{m=0} $2>m{m=$2} END{print m}' "$MON")
	ACCEPTED[$mode]=$((ACCEPTED[$mode] + $(jget sent "$RES")))
}

# ---------------------------------------------------------------- header
FS=$(df -PT "$WORK" | awk 'NR==2{print $2" on "$1" mounted at "$7}')
cat <<EOF
# mtakit compare: doe-family (relay, SPF over loopback DNS, DKIM $DKIM_ALG signing, durable queue, maildir) vs no-op go-smtp
# $(date -u +%FT%TZ)  built from the working tree at commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo ?)  $(go version | cut -d' ' -f3-)
# cpu: $(nproc) x $(sed -nE 's/^model name\s*:\s*//p' /proc/cpuinfo | head -n1); load generator on the same cores
# spool and maildir: $WORK ($FS)
# messages per connection: $([[ $PER_CONN == 0 ]] && echo "all (connections kept open)" || echo "$PER_CONN, then reconnect")
EOF

# Warm up every server (page cache, TLS cert, DNS, goroutine stacks).
load "$NOOP" 4096 8 300 20s >/dev/null || true
for m in "${MODES[@]}"; do
	doe_run "$m" 4096 8 300
done

# ---------------------------------------------------------------- matrix
JSONL=$WORK/results.jsonl
: >"$JSONL"
ROWS=()
for size in $SIZES; do
	n=$N_SMALL
	((size > 16384)) && n=$N_LARGE
	for c in $CONNS; do
		if ((SECONDS > DEADLINE)); then
			log "past DEADLINE=${DEADLINE}s: skipping size $size conns $c"
			continue
		fi
		log "size $size, $c connections, $n messages"
		noop=$(load "$NOOP" "$size" "$c" "$n" "$DURATION") || true
		doe_run durable "$size" "$c" "$n"
		dur=$RES dur_maxq=$MAXQ dur_drain=$DRAIN dur_cpu=$CPU_US
		ns='null' ns_rate=0 ns_p99=0 ns_maxq=0 ns_drain=- ns_cpu=0
		if [[ $NOSYNC == 1 ]]; then
			doe_run nosync "$size" "$c" "$n"
			ns=$RES ns_rate=$(jget msgs_per_s "$ns") ns_p99=$(jget latency_p99_ms "$ns") ns_maxq=$MAXQ ns_drain=$DRAIN ns_cpu=$CPU_US
		fi
		noop_rate=$(jget msgs_per_s "$noop") dur_rate=$(jget msgs_per_s "$dur")
		ratio=$(awk -v a="$dur_rate" -v b="$noop_rate" 'BEGIN{printf "%.2f", (b>0 ? a/b : 0)}')
		vs_ns=$(awk -v a="$dur_rate" -v b="$ns_rate" 'BEGIN{printf "%.2f", (b>0 ? a/b : 0)}')
		failed=$(($(jget failed "$noop") + $(jget failed "$dur")))
		[[ $ns != null ]] && failed=$((failed + $(jget failed "$ns")))
		ROWS+=("$(printf '%7s %5s | %8.0f %7.2f | %8.0f %7.2f %6s | %5s | %8.0f %7.2f %6s | %6s | %5s %7s | %5s %7s | %s' \
			"$size" "$c" "$noop_rate" "$(jget latency_p99_ms "$noop")" "$dur_rate" "$(jget latency_p99_ms "$dur")" "$dur_cpu" \
			"$ratio" "$ns_rate" "$ns_p99" "$ns_cpu" "$vs_ns" "$dur_maxq" "$dur_drain" "$ns_maxq" "$ns_drain" "$failed")")
		printf '{"size":%s,"conns":%s,"ratio":%s,"durable_vs_nosync":%s,"durable_cpu_us_per_msg":%s,"nosync_cpu_us_per_msg":%s,"durable_max_queue":%s,"durable_drain_s":"%s","nosync_max_queue":%s,"nosync_drain_s":"%s","noop":%s,"durable":%s,"nosync":%s}\n' \
			"$size" "$c" "$ratio" "$vs_ns" "$dur_cpu" "$ns_cpu" "$dur_maxq" "$dur_drain" "$ns_maxq" "$ns_drain" "${noop:-null}" "${dur:-null}" "$ns" >>"$JSONL"
	done
done

# ---------------------------------------------------------------- soak
SOAK_LINE=""
if ((SOAK > 0)) && ((SECONDS + SOAK < DEADLINE + 60)); then
	log "steady load: 4096 bytes, 8 connections, ${SOAK}s, watching the durable queue"
	doe_run durable 4096 8 100000000 "${SOAK}s"
	samples=$(awk -v s="$SOAK" '{t=int($1/5)*5; if (t<=s && !(t in seen)) {seen[t]=1; printf "%s ", $2}}' "$MON")
	SOAK_LINE=$(printf 'steady %ss at %.0f msg/s (p99 %sms): queue length every 5 s: %s; max %s; drained %ss after the load' \
		"$SOAK" "$(jget msgs_per_s "$RES")" "$(jget latency_p99_ms "$RES")" "$samples" "$MAXQ" "$DRAIN")
	printf '{"soak_s":%s,"max_queue":%s,"drain_s":"%s","queue_every_5s":[%s],"durable":%s}\n' \
		"$SOAK" "$MAXQ" "$DRAIN" "$(echo "$samples" | sed -E 's/ +$//; s/ /,/g')" "${RES:-null}" >>"$JSONL"
fi

# ---------------------------------------------------------------- report
echo
printf '%7s %5s | %8s %7s | %8s %7s %6s | %5s | %8s %7s %6s | %6s | %5s %7s | %5s %7s | %s\n' \
	size conns "noop/s" "p99ms" "doe/s" "p99ms" "cpu_us" ratio "nosync/s" "p99ms" "cpu_us" "dur/ns" maxq "drain_s" "nsmaxq" "drain_s" failed
for r in "${ROWS[@]}"; do
	echo "$r"
done
echo
echo "ratio: doe-family (durable) / noop; dur/ns: durable / -unsafe-no-fsync; cpu_us: the server's CPU time (user+system) per message, accept to maildir; maxq: envelopes in working+deliver, sampled every 100 ms"
[[ -n $SOAK_LINE ]] && echo "$SOAK_LINE"
for m in "${MODES[@]}"; do
	q=$WORK/$m/spool
	if [[ -d $q/deferred ]]; then
		left=$(( $(ls "$q/deferred" | wc -l) + $(ls "$q/dead" | wc -l) + $(queue_len "$m") ))
	else
		left=$(count_queues "$(admin_counts "$WORK/$m/data")" working deliver deferred dead)
	fi
	echo "$m: accepted ${ACCEPTED[$m]} (warm-up included; a run ended by time may deliver up to conns more, whose 250 the client did not wait for), in the maildir $(delivered "$m"), left in the queue (working, deliver, deferred, dead) $left"
	if grep -q 'level=ERROR' "$WORK/$m.out"; then
		echo "$m logged errors:"
		grep 'level=ERROR' "$WORK/$m.out" | cut -c1-200 | sort | uniq -c | sort -rn | head -5
	fi
done
echo
echo "# JSON lines"
cat "$JSONL"

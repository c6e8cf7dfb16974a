#!/usr/bin/env bash
# ab.sh compares two builds of the doe-family server under the same load,
# in interleaved runs, and prints the median rate and server CPU per
# message of each: the way to tell whether a change made the server
# faster on a machine whose runs of one binary vary by +-15-20%.
#
# Usage (from anywhere in the repository):
#
#	examples/smtpload/ab.sh REV_A [REV_B]
#
# REV_A and REV_B are git revisions (REV_B defaults to the working tree).
# Each run gets a new server with a new spool and maildir, starts after a
# sync (a syncfs(2) writes back whatever is dirty on the filesystem, so a
# run must not inherit the writeback of the one before), sends N messages
# and waits until every one is delivered. The runs' files are removed at
# the end only (ROUNDS x 2 x N x SIZE bytes on the disk meanwhile); start
# the next ab.sh 30 s after one ends, or its creates pay for that removal
# (measured: the same build 2,459 msg/s right after, 3,027 40 s later).
#
# Knobs (environment): ROUNDS=4 CONNS="8 64" SIZE=4096 N=3000 PER_CONN=0
# (messages per connection before reconnecting; 0: never)
# DKIM_ALG=ed25519|rsa WORKDIR=dir (default: a new temp dir under
# ${TMPDIR:-/tmp}; the disk measured) KEEP=1 (keep it).
#
# Everything listens on 127.0.0.1 and connects from 127.0.0.2..9; nothing
# leaves loopback.
set -euo pipefail

: "${ROUNDS:=4}" "${CONNS:=8 64}" "${SIZE:=4096}" "${N:=3000}" "${PER_CONN:=0}" "${DKIM_ALG:=ed25519}" "${KEEP:=0}" "${WORKDIR:=}"
SOURCES=127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8,127.0.0.9
HELO=load.doe-family.com
[[ $# -ge 1 ]] || {
	sed -n '2,20p' "$0" >&2
	exit 2
}
REV_A=$1 REV_B=${2:-}

cd "$(dirname "$0")/../.."
ROOT=$(pwd)
WORK=${WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/mtakit-ab.XXXXXX")}
mkdir -p "$WORK"
PIDS=()
cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	[[ $KEEP == 1 ]] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# build NAME REV: doe-family of REV (empty: the working tree) as $WORK/NAME.
build() {
	if [[ -z $2 ]]; then
		go build -o "$WORK/$1" ./examples/doe-family
		return
	fi
	rm -rf "$WORK/src-$1"
	git -C "$ROOT" worktree add -f --detach "$WORK/src-$1" "$2" >/dev/null 2>&1
	(cd "$WORK/src-$1" && go build -o "$WORK/$1" ./examples/doe-family)
	git -C "$ROOT" worktree remove --force "$WORK/src-$1"
}
build a "$REV_A"
build b "$REV_B"
go build -o "$WORK/smtpload" ./examples/smtpload
go build -o "$WORK/dnsserver" ./examples/smtpload/dnsserver

KEY=$WORK/dkim.pem
if [[ $DKIM_ALG == rsa ]]; then
	openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$KEY" 2>/dev/null
else
	openssl genpkey -algorithm ED25519 -out "$KEY"
fi
"$WORK/dnsserver" -listen 127.0.0.1:0 \
	"doe-family.com. TXT \"v=spf1 ip4:127.0.0.0/8 -all\"" \
	"$HELO. TXT \"v=spf1 ip4:127.0.0.0/8 -all\"" "$HELO. A 127.0.0.2" \
	"doe-family.com. MX 10 mx.doe-family.com." "mx.doe-family.com. A 127.0.0.1" \
	>"$WORK/dns.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do grep -q 'dns listening' "$WORK/dns.out" 2>/dev/null && break; sleep 0.1; done
DNS=$(sed -nE 's/^dns listening on (.*)$/\1/p' "$WORK/dns.out")

# run BIN CONNS: one run; appends "BIN CONNS msg/s cpu_us" to $WORK/results.
RUN=0
run() {
	local dir=$WORK/run$RUN pid addr c0 c1 out rate
	RUN=$((RUN + 1))
	mkdir -p "$dir"
	sync
	"$WORK/$1" -listen 127.0.0.1:0 -submission "" -domain doe-family.com -internal 127.0.0.0/8 \
		-dkim-key "$KEY" -dns "$DNS" -rate-limit off -spool "$dir/spool" -maildir "$dir/mail" -data "$dir/data" \
		-hostname mx.doe-family.com -retry-min 1s -log-level warn >"$dir/out" 2>&1 &
	pid=$!
	PIDS+=("$pid")
	for _ in $(seq 200); do grep -q 'mta listening' "$dir/out" 2>/dev/null && break; sleep 0.1; done
	addr=$(sed -nE 's/^mta listening on (.*)$/\1/p' "$dir/out" | head -n1)
	c0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
	out=$("$WORK/smtpload" -addr "$addr" -size "$SIZE" -c "$2" -n "$N" -duration 60s -per-conn "$PER_CONN" \
		-from load@doe-family.com -to user@doe-family.com -helo "$HELO" -source "$SOURCES" -json)
	for _ in $(seq 600); do
		(($(find "$dir/mail" -path '*/new/*' -type f | wc -l) >= N)) && break
		sleep 0.1
	done
	c1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
	kill -TERM "$pid"
	wait "$pid" 2>/dev/null || true
	rate=$(sed -nE 's/.*"msgs_per_s":([0-9.]+).*/\1/p' <<<"$out")
	echo "$1 $2 ${rate%.*} $(((c1 - c0) * 1000000 / $(getconf CLK_TCK) / N))" >>"$WORK/results"
	# The run's files stay until the end: on ext4 without a journal every
	# inode allocation skips the inodes freed in the last 30 s or so
	# (recently_deleted()), so removing a run's thousands of files would
	# slow the creates of the runs after it.
}

for r in $(seq "$ROUNDS"); do
	for c in $CONNS; do
		echo "round $r/$ROUNDS, $c connections" >&2
		run a "$c"
		run b "$c"
	done
done

# median FIELD BIN CONNS
median() { awk -v b="$2" -v c="$3" -v f="$1" '$1 == b && $2 == c {print $f}' "$WORK/results" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
printf '# ab: a=%s b=%s, %s bytes, %s messages, %s rounds, DKIM %s\n' "$REV_A" "${REV_B:-working tree}" "$SIZE" "$N" "$ROUNDS" "$DKIM_ALG"
printf '%6s | %8s %8s %6s | %8s %8s %6s\n' conns "a msg/s" "b msg/s" "b/a" "a cpu_us" "b cpu_us" "b/a"
for c in $CONNS; do
	ra=$(median 3 a "$c") rb=$(median 3 b "$c") ua=$(median 4 a "$c") ub=$(median 4 b "$c")
	printf '%6s | %8s %8s %6.2f | %8s %8s %6.2f\n' "$c" "$ra" "$rb" "$(awk -v x="$rb" -v y="$ra" 'BEGIN{print (y > 0 ? x / y : 0)}')" \
		"$ua" "$ub" "$(awk -v x="$ub" -v y="$ua" 'BEGIN{print (y > 0 ? x / y : 0)}')"
done
echo "(medians; each run a fresh server and spool, after a sync; cpu_us: server CPU per message, accept to maildir)"

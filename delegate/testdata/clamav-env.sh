#!/usr/bin/env bash
# clamav-env.sh — run a private clamd + clamsmtpd pair for delegation tests.
#
#   clamav-env.sh start DIR   build DIR (EICAR-only signature db, configs),
#                             start clamd then clamsmtpd, wait until both answer
#   clamav-env.sh stop DIR    stop both (by the PIDs in DIR) and wait for exit
#
# Environment (so tests can pick free ports):
#   CLAMD_PORT      clamd TCP port on 127.0.0.1          (default 13310)
#   CLAMSMTP_PORT   clamsmtpd listen port on 127.0.0.1   (default 10026)
#   CLAMSMTP_OUT    where clamsmtpd forwards mail        (default 127.0.0.1:10024)
#   CLAMD_WAIT      seconds to wait for clamd PING/PONG  (default 60)
#   CLAMSMTP_MAXCONN clamsmtpd MaxConnections; above it it answers 421 (default 16)
#   CLAMSMTPD       "no": start clamd only (internal/milterd runs clamav-milter
#                   in front of it instead)                    (default yes)
#
# Needs Debian's packages: apt-get install -y clamav-daemon clamsmtp
# Uses no network and no freshclam; pure bash (uses /dev/tcp), no python.
set -euo pipefail

CLAMD_BIN=${CLAMD_BIN:-/usr/sbin/clamd}
CLAMSMTPD_BIN=${CLAMSMTPD_BIN:-/usr/sbin/clamsmtpd}

# The standard 68-byte EICAR test string. Single quotes: no expansion.
# shellcheck disable=SC2016
EICAR='X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*'
SIGNAME=Eicar-Test-Signature

die() { echo "clamav-env: $*" >&2; exit 1; }

logtail() {
	local f
	for f in "$@"; do
		[ -f "$f" ] || continue
		echo "---- tail of $f ----" >&2
		tail -n 30 "$f" >&2 || true
	done
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# clamd_ping PORT: true if clamd answers PONG on its TCP port.
clamd_ping() {
	local reply=""
	{ exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
	printf 'zPING\0' >&3
	IFS= read -r -d '' -t 5 reply <&3 || true
	exec 3<&- 3>&-
	[ "$reply" = "PONG" ]
}

# port_open PORT: true if something accepts on 127.0.0.1:PORT.
port_open() {
	( exec 3<>"/dev/tcp/127.0.0.1/$1" ) 2>/dev/null
}

# stop_pid FILE...: TERM the processes named in the pid FILEs (all at once:
# each takes ~2 s to notice), wait up to 10 s, then KILL what is left.
stop_pid() {
	local f pid left pids=()
	for f in "$@"; do
		[ -f "$f" ] || continue
		pid=$(tr -dc 0-9 <"$f")
		rm -f "$f"
		alive "$pid" || continue
		kill -TERM "$pid" 2>/dev/null || true
		pids+=("$pid")
	done
	[ ${#pids[@]} -gt 0 ] || return 0
	for _ in $(seq 1 100); do
		left=0
		for pid in "${pids[@]}"; do alive "$pid" && left=1; done
		[ "$left" = 1 ] || return 0
		sleep 0.1
	done
	for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
	for _ in $(seq 1 50); do
		left=0
		for pid in "${pids[@]}"; do alive "$pid" && left=1; done
		[ "$left" = 1 ] || return 0
		sleep 0.1
	done
}

cmd_start() {
	local dir=$1
	local clamd_port=${CLAMD_PORT:-13310}
	local smtp_port=${CLAMSMTP_PORT:-10026}
	local out=${CLAMSMTP_OUT:-127.0.0.1:10024}
	local wait=${CLAMD_WAIT:-60}

	[ -x "$CLAMD_BIN" ] || die "$CLAMD_BIN missing (apt-get install -y clamav-daemon)"
	if [ "${CLAMSMTPD:-yes}" != no ]; then
		[ -x "$CLAMSMTPD_BIN" ] || die "$CLAMSMTPD_BIN missing (apt-get install -y clamsmtp)"
	fi

	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)  # clamd/clamsmtpd want absolute paths
	mkdir -p "$dir/db" "$dir/tmp"
	chmod 700 "$dir/tmp"

	# A previous run left in DIR? Stop it first.
	stop_pid "$dir/clamsmtpd.pid" "$dir/clamd.pid"
	rm -f "$dir/clamd.sock" "$dir/clamd.log" "$dir/clamsmtpd.log"

	# Refuse ports someone else holds: clamd would carry on with only its
	# unix socket (it logs the TCP bind error and keeps running) and our
	# readiness probes would talk to the other process.
	port_open "$clamd_port" && die "127.0.0.1:$clamd_port (CLAMD_PORT) is already in use"
	if [ "${CLAMSMTPD:-yes}" != no ]; then
		port_open "$smtp_port" && die "127.0.0.1:$smtp_port (CLAMSMTP_PORT) is already in use"
	fi

	# Signature db: EICAR only, two forms under one name.
	#  .hdb  md5:size:name of the 68-byte file itself (exact file / attachment)
	#  .ndb  the string as a body signature, any target type, so it also
	#        matches EICAR inline in a text/plain mail body.
	local md5 hex
	md5=$(printf '%s' "$EICAR" | md5sum | cut -d' ' -f1)
	hex=$(printf '%s' "$EICAR" | od -An -v -tx1 | tr -d ' \n')
	printf '%s:%d:%s\n' "$md5" "${#EICAR}" "$SIGNAME" >"$dir/db/eicar.hdb"
	printf '%s:0:*:%s\n' "$SIGNAME" "$hex" >"$dir/db/eicar.ndb"

	# No User line: clamd keeps running as whoever started it (root in the
	# container), so it can read clamsmtpd's temp files in DIR/tmp.
	cat >"$dir/clamd.conf" <<CONF
Foreground yes
DatabaseDirectory $dir/db
LocalSocket $dir/clamd.sock
LocalSocketMode 660
FixStaleSocket yes
TCPSocket $clamd_port
TCPAddr 127.0.0.1
PidFile $dir/clamd.pid
LogFile $dir/clamd.log
LogTime yes
LogVerbose yes
TemporaryDirectory $dir/tmp
MaxThreads 8
MaxConnectionQueueLength 30
SelfCheck 0
Bytecode no
OfficialDatabaseOnly no
CONF

	# clamsmtpd: Action pass tags infected mail with X-Virus-Infected and
	# still forwards it to OutAddress. No User line: stays root/current user.
	cat >"$dir/clamsmtpd.conf" <<CONF
Listen: 127.0.0.1:$smtp_port
OutAddress: $out
ClamAddress: $dir/clamd.sock
Header: X-Virus-Scanned: ClamAV using ClamSMTP
Action: pass
TempDirectory: $dir/tmp
PidFile: $dir/clamsmtpd.pid
KeepAlives: 0
TimeOut: 60
MaxConnections: ${CLAMSMTP_MAXCONN:-16}
CONF

	# clamd, in the foreground of a background job of ours.
	"$CLAMD_BIN" --config-file="$dir/clamd.conf" --foreground \
		>"$dir/clamd.out" 2>&1 </dev/null &
	local clamd_pid=$!
	echo "$clamd_pid" >"$dir/clamd.pid"

	local deadline=$((SECONDS + wait))
	until clamd_ping "$clamd_port" && [ -S "$dir/clamd.sock" ]; do
		if ! alive "$clamd_pid"; then
			logtail "$dir/clamd.out" "$dir/clamd.log"
			rm -f "$dir/clamd.pid"
			die "clamd exited during start-up"
		fi
		if [ "$SECONDS" -ge "$deadline" ]; then
			logtail "$dir/clamd.out" "$dir/clamd.log"
			stop_pid "$dir/clamd.pid"
			die "clamd did not answer PING on 127.0.0.1:$clamd_port within ${wait}s"
		fi
		sleep 0.2
	done
	if grep -q 'Cannot bind' "$dir/clamd.log" 2>/dev/null; then
		logtail "$dir/clamd.log"
		stop_pid "$dir/clamd.pid"
		die "clamd could not bind its sockets"
	fi
	# clamd rewrites its PidFile with its own pid (the same one: no fork in
	# foreground mode); keep ours authoritative.
	echo "$clamd_pid" >"$dir/clamd.pid"

	if [ "${CLAMSMTPD:-yes}" = no ]; then
		echo "clamav-env: clamd pid $clamd_pid (tcp 127.0.0.1:$clamd_port, $dir/clamd.sock)"
		return 0
	fi

	# clamsmtpd: -d 3 keeps it in the foreground and logs to stderr.
	"$CLAMSMTPD_BIN" -d 3 -f "$dir/clamsmtpd.conf" \
		>"$dir/clamsmtpd.log" 2>&1 </dev/null &
	local smtp_pid=$!
	echo "$smtp_pid" >"$dir/clamsmtpd.pid"

	deadline=$((SECONDS + 20))
	until port_open "$smtp_port"; do
		if ! alive "$smtp_pid" || [ "$SECONDS" -ge "$deadline" ]; then
			logtail "$dir/clamsmtpd.log"
			stop_pid "$dir/clamsmtpd.pid" "$dir/clamd.pid"
			die "clamsmtpd did not listen on 127.0.0.1:$smtp_port"
		fi
		sleep 0.1
	done
	sleep 0.2
	if ! alive "$smtp_pid"; then
		logtail "$dir/clamsmtpd.log"
		rm -f "$dir/clamsmtpd.pid"
		stop_pid "$dir/clamd.pid"
		die "clamsmtpd exited right after start-up"
	fi
	echo "$smtp_pid" >"$dir/clamsmtpd.pid"
	echo "clamav-env: clamd pid $clamd_pid (tcp 127.0.0.1:$clamd_port, $dir/clamd.sock), clamsmtpd pid $smtp_pid (127.0.0.1:$smtp_port -> $out)"
}

cmd_stop() {
	local dir=$1
	[ -d "$dir" ] || return 0
	stop_pid "$dir/clamsmtpd.pid" "$dir/clamd.pid"
	rm -f "$dir/clamd.sock"
}

case "${1:-}" in
start) [ $# -eq 2 ] || die "usage: $0 start DIR"; cmd_start "$2" ;;
stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; cmd_stop "$2" ;;
*) die "usage: $0 start|stop DIR" ;;
esac

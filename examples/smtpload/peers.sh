#!/usr/bin/env bash
# peers.sh measures, in one run on one machine, doe-family with its full
# policy against its peers doing the same work, interleaved, and prints the
# table and the ratios of issue 21:
#
#   doe       doe-family: relay control, SPF (HELO and MAIL FROM) and DMARC
#             (p=reject) looked up on a DNS server on loopback, DKIM
#             verification of every message (signed by the load generator
#             as the sender's domain), the durable queue (group commit,
#             syncfs), delivery of every message to a Maildir
#   noop      a go-smtp server that discards (the ceiling of go-smtp)
#   pf-mdir   Postfix (Debian's package), a separate instance under the
#             work dir: accept (cleanup fsyncs before the 250) and deliver
#             every message to a Maildir with virtual(8)
#   pf-hold   the same instance's twin that puts every message on hold
#             (accept to the hold queue only, durable, nothing delivered)
#   haraka    Haraka from the npm registry, accept and discard (no queue,
#             no durability)
#
# Postfix is installed with apt-get when missing (as root, non-interactively,
# debconf "No configuration": the system's own Postfix is left unconfigured
# and not started). Each instance has its own config_directory,
# queue_directory and data_directory under the work dir, listens on
# 127.0.0.1 only, logs to a file there, and is started with
# "postfix -c DIR start" and stopped with "postfix -c DIR stop": nothing of
# the system's configuration is read or changed. Haraka is installed with
# npm into a cache directory (HARAKA_DIR) the first time; without npm, or
# if the install fails or times out, its row is skipped.
#
# Usage (as root, from anywhere in the repository):
#
#	examples/smtpload/peers.sh
#
# Knobs (environment):
#   SERVERS="doe noop pf-mdir pf-hold haraka"   which rows to measure
#   SIZES="4096 102400" CONNS="1 8 64" PER_CONN=100 (messages per
#   connection, then reconnect; 0: never) N_SMALL=3000 N_LARGE=1000
#   (messages per run, below and above 16 KiB) DURATION=30s (upper bound of
#   each load run) ROUNDS=1 (each cell measured ROUNDS times, the servers
#   interleaved in a rotating order; the median is reported)
#   DEADLINE=1500 (seconds: cells are skipped past it) DKIM_ALG=rsa|ed25519
#   WRITER=0 (1: another process writes to the same filesystem all along:
#   dd of WRITER_MB MiB with conv=fsync, in a loop, at most WRITER_LOOPS
#   times) WRITER_MB=1024 WRITER_LOOPS=200
#   WORKDIR=dir (default: a new temp dir under ${TMPDIR:-/tmp}: the disk
#   measured; made world-searchable for Postfix's delivery agent) KEEP=1
#   HARAKA_DIR (default ${XDG_CACHE_HOME:-$HOME/.cache}/mtakit-peers/haraka)
#   DOE_FLAGS (more doe-family flags, e.g. -unsafe-no-fsync)
#   DOE_BIN (a doe-family binary to measure instead of building one)
#   DOE_B_BIN (another doe-family binary, e.g. of the base revision: add
#   doe-b to SERVERS and it is measured as one more row, interleaved with
#   the others, with a doe/doe-b ratio: the way to tell a change from the
#   noise of a shared machine; DOE_B_BIN=same uses this run's binary)
#   DOE_B_FLAGS (flags of doe-b only, e.g. "-queue journal" to compare
#   two stores with one binary)
#
# Messages per second is the load generator's rate: what the clients saw
# (every 250 durable where the server makes it so); delivery may lag
# behind it. The sustained rate also counts the time the queue then takes
# to drain (polled every 0.1 s): accepted / (load time + drain time).
#
# Server CPU per message is the user+system time of the server's process
# tree (Postfix's master and every child, reaped ones included) from the
# start of a run until its queue is drained, divided by the messages
# accepted: delivery included, the load generator excluded. Everything
# listens on 127.0.0.1 and connects from 127.0.0.2..9; nothing leaves
# loopback. The load generator shares the cores: compare ratios, not
# absolute numbers across machines.
set -euo pipefail

: "${SERVERS:=doe noop pf-mdir pf-hold haraka}" "${SIZES:=4096 102400}" "${CONNS:=1 8 64}"
: "${PER_CONN:=100}" "${N_SMALL:=3000}" "${N_LARGE:=1000}" "${DURATION:=30s}" "${ROUNDS:=1}"
: "${DEADLINE:=1500}" "${DKIM_ALG:=rsa}" "${WRITER:=0}" "${WRITER_MB:=1024}" "${WRITER_LOOPS:=200}"
: "${WORKDIR:=}" "${KEEP:=0}" "${HARAKA_DIR:=${XDG_CACHE_HOME:-$HOME/.cache}/mtakit-peers/haraka}"
: "${DOE_FLAGS:=}" "${DOE_BIN:=}" "${DOE_B_BIN:=}" "${DOE_B_FLAGS:=}"
HARAKA_VERSION=3.3.4
SOURCES=127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8,127.0.0.9
FROM=load@sender.example
TO=user@doe-family.com
HELO=mail.sender.example

cd "${REPO:-$(dirname "$0")/../..}" # REPO: the repository, when this is a copy
ROOT=$(pwd)
# shellcheck source=examples/smtpload/lib.sh
. "$ROOT/examples/smtpload/lib.sh"
if [[ -z $WORKDIR ]]; then
	WORK=$(mktemp -d "${TMPDIR:-/tmp}/mtakit-peers.XXXXXX")
else
	WORK=$WORKDIR
	mkdir -p "$WORK"
fi
chmod 755 "$WORK" # virtual(8) delivers as nobody under it
# Each server's directory in inode groups of its own (ext4's Orlov
# allocator spreads the subdirectories of a +T directory): on ext4 without
# a journal, a file created within ~30 s of deletions in its group skips
# every inode freed there (recently_deleted), so one server's deleted
# queue files (Postfix removes one per message) would slow the next
# server's creates.
chattr +T "$WORK" 2>/dev/null || true
BIN=$WORK/bin
PIDS=()
POSTFIXES=()
WRITER_PID=

cleanup() {
	local pid conf
	set +e
	[[ -n $WRITER_PID ]] && kill -TERM -- "-$WRITER_PID" 2>/dev/null
	for conf in "${POSTFIXES[@]}"; do
		postfix -c "$conf" stop >/dev/null 2>&1
	done
	for pid in "${PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null
	done
	for pid in "${PIDS[@]}"; do
		for _ in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null
	done
	for conf in "${POSTFIXES[@]}"; do # postfix stop returns before master is gone
		for _ in $(seq 100); do
			pgrep -f "master.*-c $conf" >/dev/null 2>&1 || break
			sleep 0.1
		done
	done
	if [[ $KEEP == 1 ]]; then
		log "kept $WORK"
	else
		rm -rf "$WORK"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_port HOST:PORT: wait up to 20 s for a listener.
wait_port() {
	for _ in $(seq 200); do
		(exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null && return 0
		sleep 0.1
	done
	log "nothing listens on $1"
	return 1
}

# tree_ticks PID: CPU time (user+system, clock ticks) of PID and all its
# descendants, counting the children they have reaped (cutime+cstime).
tree_ticks() {
	local pids=("$1") i=0 kids
	while ((i < ${#pids[@]})); do
		kids=$(pgrep -P "${pids[$i]}" 2>/dev/null || true)
		[[ -n $kids ]] && pids+=($kids)
		i=$((i + 1))
	done
	for p in "${pids[@]}"; do
		sed -E 's/^.*\) //' "/proc/$p/stat" 2>/dev/null || true
	done | awk '{t += $12 + $13 + $14 + $15} END {print t + 0}'
}
TICKS=$(getconf CLK_TCK 2>/dev/null || echo 100)

has() { [[ " $SERVERS " == *" $1 "* ]]; }

# ---------------------------------------------------------------- build
log "building into $BIN"
mkdir -p "$BIN"
for cmd in smtpload smtpload/noop smtpload/dnsserver doe-family; do
	go build -o "$BIN/$(basename "$cmd")" "./examples/$cmd"
done
[[ -n $DOE_BIN ]] && cp "$DOE_BIN" "$BIN/doe-family"

# ---------------------------------------------------------------- DKIM key of the sender
KEY=$WORK/sender-dkim.pem
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

# ---------------------------------------------------------------- DNS on loopback
"$BIN/dnsserver" -listen 127.0.0.1:0 \
	"sender.example. TXT \"v=spf1 ip4:127.0.0.0/8 -all\"" \
	"_dmarc.sender.example. TXT \"v=DMARC1; p=reject\"" \
	"load._domainkey.sender.example. TXT \"$DKIM_TXT\"" \
	"$HELO. TXT \"v=spf1 ip4:127.0.0.0/8 -all\"" \
	"$HELO. A 127.0.0.2" \
	"doe-family.com. MX 10 mx.doe-family.com." \
	"mx.doe-family.com. A 127.0.0.1" \
	>"$WORK/dns.out" 2>&1 &
PIDS+=($!)
DNS=$(wait_for "$WORK/dns.out" '^dns listening on (.*)$')

# ---------------------------------------------------------------- servers
# Each server NAME sets ADDR_NAME and PID_NAME (the root of its process
# tree), and has drain_NAME (wait for its queue to empty; prints seconds)
# and delivered_NAME (messages delivered so far) where it queues.
declare -A ADDR PID
shopt -s nullglob

drain_none() { echo 0; }
delivered_none() { echo 0; }

start_noop() {
	ADDR[noop]=127.0.0.1:$(free_port)
	"$BIN/noop" -listen "${ADDR[noop]}" >"$WORK/noop.out" 2>&1 &
	PIDS+=($!)
	PID[noop]=$!
	wait_port "${ADDR[noop]}"
}

# start_doe NAME BINARY: a doe-family with its own spool and maildir
# under $WORK/NAME.
start_doe() {
	local name=$1 bin=$2 flags=${3:-}
	mkdir -p "$WORK/$name"
	# -internal names no loopback network: the load's clients are outside,
	# so their mail gets SPF, DKIM verification and DMARC, and relay
	# control accepts it for the local domain only. -rate-limit off: the
	# runs send more than its default allows one address in an hour.
	# shellcheck disable=SC2086
	"$bin" -listen 127.0.0.1:0 -submission "" -domain doe-family.com \
		-internal 198.51.100.0/24 -dns "$DNS" -rate-limit off \
		-spool "$WORK/$name/spool" -maildir "$WORK/$name/mail" -data "$WORK/$name/data" \
		-hostname mx.doe-family.com -retry-min 1s -log-level warn $DOE_FLAGS $flags \
		>"$WORK/$name.out" 2>&1 &
	PIDS+=($!)
	PID[$name]=$!
	ADDR[$name]=$(wait_for "$WORK/$name.out" '^mta listening on (.*)$')
}
doe_queue() { waiting "$WORK/$1/spool" "$WORK/$1/data"; }
doe_drain() {
	local t0
	t0=$(now)
	for _ in $(seq 1200); do
		if [[ $(doe_queue "$1") == 0 ]]; then
			secs_since "$t0"
			return 0
		fi
		sleep 0.1
	done
	echo timeout
}
drain_doe() { doe_drain doe; }
drain_doe-b() { doe_drain doe-b; }
delivered_doe() { find "$WORK/doe/mail" -path '*/new/*' -type f 2>/dev/null | wc -l; }
delivered_doe-b() { find "$WORK/doe-b/mail" -path '*/new/*' -type f 2>/dev/null | wc -l; }

# ensure_postfix: install Debian's postfix if it is missing, leaving the
# system's instance unconfigured ("No configuration") and stopped.
ensure_postfix() {
	command -v postfix >/dev/null && return 0
	if [[ $(id -u) != 0 ]]; then
		log "postfix is not installed and installing it needs root"
		return 1
	fi
	log "installing postfix (apt-get)"
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	timeout 600 env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 \
		install -y -q --no-install-recommends postfix >"$WORK/apt.log" 2>&1 || {
		timeout 300 apt-get -o DPkg::Lock::Timeout=300 update -q >>"$WORK/apt.log" 2>&1
		timeout 600 env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 \
			install -y -q --no-install-recommends postfix >>"$WORK/apt.log" 2>&1
	} || {
		log "apt-get install postfix failed:"
		tail -5 "$WORK/apt.log" >&2
		return 1
	}
	command -v postfix >/dev/null
}

# start_postfix NAME MODE: a Postfix instance under $WORK/NAME; MODE is
# maildir (virtual(8) to $WORK/NAME/mail/user/) or hold (every message
# to the hold queue).
start_postfix() {
	local name=$1 mode=$2 dir=$WORK/$1 port conf
	conf=$dir/etc
	mkdir -p "$conf" "$dir/mail" "$dir/spool"
	chown nobody:nogroup "$dir/mail"
	port=$(free_port)
	ADDR[$name]=127.0.0.1:$port
	cat >"$conf/main.cf" <<EOF
# A Postfix instance of peers.sh; nothing here is shared with the system's.
compatibility_level = 3.6
queue_directory = $dir/spool
data_directory = $dir/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = pf-$name.doe-family.com
mydomain = doe-family.com
myorigin = \$myhostname
mydestination =
relay_domains =
mynetworks = 198.51.100.0/24
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
alias_maps =
alias_database =
local_recipient_maps =
virtual_mailbox_domains = doe-family.com
virtual_mailbox_base = $dir/mail
virtual_mailbox_maps = static:user/
virtual_uid_maps = static:$(id -u nobody)
virtual_gid_maps = static:$(getent group nogroup | cut -d: -f3)
virtual_minimum_uid = 100
smtpd_peername_lookup = no
smtpd_banner = \$myhostname ESMTP
biff = no
append_dot_mydomain = no
smtputf8_enable = no
message_size_limit = 52428800
virtual_mailbox_limit = 0
maillog_file_prefixes = $dir
maillog_file = $dir/maillog
EOF
	if [[ $mode == hold ]]; then
		echo "smtpd_data_restrictions = check_client_access static:HOLD" >>"$conf/main.cf"
	fi
	cat >"$conf/master.cf" <<EOF
# service type private unpriv chroot wakeup maxproc command
127.0.0.1:$port inet n - n - - smtpd
pickup    unix  n - n 60  1 pickup
cleanup   unix  n - n -   0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -   - trivial-rewrite
bounce    unix  - - n -   0 bounce
defer     unix  - - n -   0 bounce
trace     unix  - - n -   0 bounce
verify    unix  - - n -   1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -   - proxymap
smtp      unix  - - n -   - smtp
relay     unix  - - n -   - smtp
showq     unix  n - n -   - showq
error     unix  - - n -   - error
retry     unix  - - n -   - error
discard   unix  - - n -   - discard
local     unix  - n n -   - local
virtual   unix  - n n -   - virtual
anvil     unix  - - n -   1 anvil
scache    unix  - - n -   1 scache
postlog   unix-dgram n - n - 1 postlogd
EOF
	POSTFIXES+=("$conf")
	if ! postfix -c "$conf" start >"$dir/start.out" 2>&1; then
		log "postfix $name did not start:"
		# Without a syslog its errors go to stderr only when that is a tty.
		script -qc "postfix -c '$conf' check" /dev/null >>"$dir/start.out" 2>&1 || true
		cat "$dir/start.out" >&2
		return 1
	fi
	local pidfile=$dir/spool/pid/master.pid
	for _ in $(seq 200); do
		[[ -s $pidfile ]] && break
		sleep 0.1
	done
	PID[$name]=$(tr -d ' \n' <"$pidfile")
	wait_port "${ADDR[$name]}"
}
# pf_queue NAME: messages in the instance's queues that are to be delivered.
pf_queue() {
	find "$WORK/$1/spool/maildrop" "$WORK/$1/spool/incoming" "$WORK/$1/spool/active" \
		"$WORK/$1/spool/deferred" -type f 2>/dev/null | wc -l
}
pf_drain() {
	local t0
	t0=$(now)
	for _ in $(seq 1200); do
		if [[ $(pf_queue "$1") == 0 ]]; then
			secs_since "$t0"
			return 0
		fi
		sleep 0.1
	done
	echo timeout
}
drain_pf-mdir() { pf_drain pf-mdir; }
drain_pf-hold() { pf_drain pf-hold; }
delivered_pf-mdir() { find "$WORK/pf-mdir/mail" -path '*/new/*' -type f 2>/dev/null | wc -l; }
delivered_pf-hold() { find "$WORK/pf-hold/spool/hold" -type f 2>/dev/null | wc -l; }

# ensure_haraka: Haraka in $HARAKA_DIR, installed with npm the first time.
ensure_haraka() {
	[[ -x $HARAKA_DIR/node_modules/.bin/haraka ]] && return 0
	command -v npm >/dev/null || {
		log "no npm: Haraka skipped"
		return 1
	}
	log "installing Haraka $HARAKA_VERSION (npm) into $HARAKA_DIR"
	mkdir -p "$HARAKA_DIR"
	timeout 300 npm install --prefix "$HARAKA_DIR" --no-audit --no-fund --loglevel=error \
		"Haraka@$HARAKA_VERSION" >"$WORK/npm.log" 2>&1 || {
		log "npm install Haraka failed:"
		tail -5 "$WORK/npm.log" >&2
		return 1
	}
}

start_haraka() {
	local dir=$WORK/haraka
	mkdir -p "$dir/plugins"
	cp -r "$HARAKA_DIR/node_modules/Haraka/config" "$dir/config"
	ADDR[haraka]=127.0.0.1:$(free_port)
	# One process (no cluster: "nodes" unset) and three plugins: a client
	# name without a reverse lookup (Haraka's own asks the system's
	# resolver: nothing may leave loopback; Postfix runs with
	# smtpd_peername_lookup = no for the same reason), the local domain
	# as the only one accepted, and discard.
	cat >"$dir/plugins/no_rdns.js" <<'EOF'
exports.hook_lookup_rdns = (next, connection) => next(OK, 'client.sender.example')
EOF
	printf '[main]\nlisten=%s\n' "${ADDR[haraka]}" >"$dir/config/smtp.ini"
	printf 'no_rdns\nrcpt_to.in_host_list\nqueue/discard\n' >"$dir/config/plugins"
	echo doe-family.com >"$dir/config/host_list"
	echo mx.haraka.doe-family.com >"$dir/config/me"
	printf '[main]\nlevel=warn\n' >"$dir/config/log.ini"
	echo WARN >"$dir/config/loglevel"
	YES_REALLY_DO_DISCARD=1 "$HARAKA_DIR/node_modules/.bin/haraka" -c "$dir" >"$WORK/haraka.out" 2>&1 &
	PIDS+=($!)
	PID[haraka]=$!
	wait_port "${ADDR[haraka]}"
}

ACTIVE=()
for s in $SERVERS; do
	case $s in
	doe) start_doe doe "$BIN/doe-family" ;;
	doe-b)
		if [[ -z $DOE_B_BIN ]]; then
			log "doe-b needs DOE_B_BIN"
			exit 2
		fi
		[[ $DOE_B_BIN == same ]] && DOE_B_BIN=$BIN/doe-family
		start_doe doe-b "$DOE_B_BIN" "$DOE_B_FLAGS"
		;;
	noop) start_noop ;;
	pf-mdir | pf-hold)
		if ensure_postfix; then
			start_postfix "$s" "$([[ $s == pf-mdir ]] && echo maildir || echo hold)" || continue
		else
			log "$s skipped"
			continue
		fi
		;;
	haraka)
		{ ensure_haraka && start_haraka; } || {
			log "haraka skipped"
			continue
		}
		;;
	*)
		log "unknown server $s"
		exit 2
		;;
	esac
	ACTIVE+=("$s")
done

# ---------------------------------------------------------------- the writer
if [[ $WRITER == 1 ]]; then
	# In a session of its own, so that cleanup ends the loop and its dd
	# together (kill of the process group).
	setsid bash -c 'for _ in $(seq "$1"); do
		timeout 300 dd if=/dev/zero of="$2" bs=1M count="$3" conv=fsync status=none
		rm -f "$2"
	done' writer "$WRITER_LOOPS" "$WORK/writer.dat" "$WRITER_MB" &
	WRITER_PID=$!
fi

# ---------------------------------------------------------------- runs
declare -A ACCEPTED
for s in "${ACTIVE[@]}"; do ACCEPTED[$s]=0; done

# run SERVER SIZE CONNS N: one load run against SERVER, then the wait for
# its queue to drain; sets RES (smtpload's JSON), CPU_US, DRAIN.
run() {
	local s=$1 c0 c1 sent d=drain_none
	declare -F "drain_$s" >/dev/null && d=drain_$s
	sync # start from a clean page cache: syncfs pays for what is dirty
	c0=$(tree_ticks "${PID[$s]}")
	RES=$(timeout $((${DURATION%s} + 30)) "$BIN/smtpload" -addr "${ADDR[$s]}" -size "$2" -c "$3" -n "$4" \
		-duration "$DURATION" -per-conn "$PER_CONN" -from "$FROM" -to "$TO" -helo "$HELO" \
		-source "$SOURCES" -dkim-key "$KEY" -dkim-selector load -json) || true
	DRAIN=$($d)
	c1=$(tree_ticks "${PID[$s]}")
	sent=$(jget sent "$RES")
	CPU_US=$(awk -v a="$c0" -v b="$c1" -v n="$sent" -v t="$TICKS" 'BEGIN{printf "%.0f", (n>0 ? (b-a)/t*1e6/n : 0)}')
	ACCEPTED[$s]=$((ACCEPTED[$s] + sent))
}

FS=$(df -PT "$WORK" | awk 'NR==2{print $2" on "$1" mounted at "$7}')
PF_VERSION=$(command -v postconf >/dev/null && postconf -d -h mail_version 2>/dev/null || echo -)
cat <<EOF
# mtakit peers: ${ACTIVE[*]}
# $(date -u +%FT%TZ)  doe-family built from the working tree at commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo ?)  $(go version | cut -d' ' -f3-)
# postfix $PF_VERSION, haraka $([[ " ${ACTIVE[*]} " == *" haraka "* ]] && echo $HARAKA_VERSION || echo -), node $(node --version 2>/dev/null || echo -)
# cpu: $(nproc) x $(sed -nE 's/^model name\s*:\s*//p' /proc/cpuinfo | head -n1); load generator on the same cores; load average $(cut -d' ' -f1-3 /proc/loadavg)
# queues and maildirs: $WORK ($FS)
# messages per connection: $([[ $PER_CONN == 0 ]] && echo "all (connections kept open)" || echo "$PER_CONN, then reconnect"); DKIM $DKIM_ALG; rounds $ROUNDS
# other writer on the filesystem: $([[ $WRITER == 1 ]] && echo "dd of ${WRITER_MB} MiB with conv=fsync, in a loop" || echo none)
EOF

log "warming up ${ACTIVE[*]}"
for s in "${ACTIVE[@]}"; do
	run "$s" 4096 8 300
	[[ $(jget sent "$RES") -gt 0 ]] || {
		log "$s accepted nothing in the warm-up: $RES"
		tail -5 "$WORK/$s.out" "$WORK/$s/maillog" 2>/dev/null >&2 || true
	}
done

JSONL=$WORK/results.jsonl
: >"$JSONL"
declare -A RATE P50 CPU SUST
CELLS=()
turn=0
for size in $SIZES; do
	n=$N_SMALL
	((size > 16384)) && n=$N_LARGE
	for c in $CONNS; do
		if ((SECONDS > DEADLINE)); then
			log "past DEADLINE=${DEADLINE}s: skipping size $size conns $c"
			continue
		fi
		cell="$size/$c"
		CELLS+=("$cell")
		declare -A rates=() p50s=() cpus=() susts=()
		for r in $(seq "$ROUNDS"); do
			k=${#ACTIVE[@]}
			for i in $(seq 0 $((k - 1))); do
				s=${ACTIVE[$(((i + turn) % k))]}
				log "size $size, $c connections, $n messages: $s (round $r)"
				run "$s" "$size" "$c" "$n"
				rates[$s]+="$(jget msgs_per_s "$RES") " p50s[$s]+="$(jget latency_p50_ms "$RES") " cpus[$s]+="$CPU_US "
				susts[$s]+="$(awk -v n="$(jget sent "$RES")" -v t="$(jget elapsed_s "$RES")" -v d="$DRAIN" \
					'BEGIN{printf "%.1f", (d ~ /^[0-9.]+$/ && t+d > 0 ? n/(t+d) : 0)}') "
				printf '{"server":"%s","size":%s,"conns":%s,"round":%s,"cpu_us_per_msg":%s,"drain_s":"%s","load":%s}\n' \
					"$s" "$size" "$c" "$r" "$CPU_US" "$DRAIN" "${RES:-null}" >>"$JSONL"
				if [[ $(jget failed "$RES") != 0 ]]; then
					log "  $s: $(jget failed "$RES") failed: $(sed -nE 's/.*"errors":(\{[^}]*\}).*/\1/p' <<<"$RES")"
				fi
			done
			turn=$((turn + 1))
		done
		med() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR]=$1} END{print (NR ? v[int((NR+1)/2)] : 0)}'; }
		for s in "${ACTIVE[@]}"; do
			RATE[$s,$cell]=$(med <<<"${rates[$s]}")
			P50[$s,$cell]=$(med <<<"${p50s[$s]}")
			CPU[$s,$cell]=$(med <<<"${cpus[$s]}")
			SUST[$s,$cell]=$(med <<<"${susts[$s]}")
		done
	done
done

# ---------------------------------------------------------------- report
label() { awk -v c="$1" 'BEGIN{split(c, a, "/"); s=a[1]; printf "%s c=%s", (s>=1024 ? int(s/1024) "K" : s), a[2]}'; }
# table TITLE ARRAY FORMAT
table() {
	local title=$1 arr=$2 fmt=$3 s cell v
	echo
	echo "## $title"
	printf '| %-8s |' server
	for cell in "${CELLS[@]}"; do printf ' %9s |' "$(label "$cell")"; done
	echo
	printf '|%s|' "----------"
	for cell in "${CELLS[@]}"; do printf '%s|' "-----------"; done
	echo
	for s in "${ACTIVE[@]}"; do
		printf '| %-8s |' "$s"
		for cell in "${CELLS[@]}"; do
			eval "v=\${$arr[\$s,\$cell]:-0}"
			printf " %9s |" "$(awk -v v="$v" -v f="$fmt" 'BEGIN{printf f, v}')"
		done
		echo
	done
}
# ratio A B ARRAY: A's value over B's in each cell ("-" where either is missing).
ratio_row() {
	local name=$1 a=$2 b=$3 arr=$4 cell va vb
	[[ " ${ACTIVE[*]} " == *" $a "* && " ${ACTIVE[*]} " == *" $b "* ]] || return 0
	printf '| %-22s |' "$name"
	for cell in "${CELLS[@]}"; do
		eval "va=\${$arr[\$a,\$cell]:-}; vb=\${$arr[\$b,\$cell]:-}"
		if [[ -z $va || -z $vb ]]; then
			printf ' %9s |' -
		else
			printf ' %9s |' "$(awk -v a="$va" -v b="$vb" 'BEGIN{printf (b>0 ? "%.2f" : "-"), (b>0 ? a/b : 0)}')"
		fi
	done
	echo
}
table "messages per second (median of $ROUNDS)" RATE '%.0f'
table "sustained messages per second: accepted / (load time + time for the queue to drain) (median of $ROUNDS)" SUST '%.0f'
table "server CPU per message, µs (user+system, delivery included)" CPU '%.0f'
table "p50 latency, ms (MAIL to the 250 after DATA)" P50 '%.2f'
echo
echo "## ratios (targets of issue 21 in brackets)"
printf '| %-22s |' ratio
for cell in "${CELLS[@]}"; do printf ' %9s |' "$(label "$cell")"; done
echo
printf '|%s|' "------------------------"
for cell in "${CELLS[@]}"; do printf '%s|' "-----------"; done
echo
ratio_row "doe/pf-mdir msg/s [5x; 2x at c=1]" doe pf-mdir RATE
ratio_row "doe/pf-mdir sustained" doe pf-mdir SUST
ratio_row "doe/pf-hold msg/s" doe pf-hold RATE
ratio_row "doe/haraka msg/s [>1 c=64]" doe haraka RATE
ratio_row "doe/noop msg/s" doe noop RATE
ratio_row "doe/doe-b msg/s" doe doe-b RATE
ratio_row "doe/doe-b CPU" doe doe-b CPU
ratio_row "doe/noop CPU [<=3 c=64]" doe noop CPU
ratio_row "doe/pf-mdir p50 [<=0.5 c=1]" doe pf-mdir P50
echo
for s in "${ACTIVE[@]}"; do
	f=delivered_none
	declare -F "delivered_$s" >/dev/null && f=delivered_$s
	line="$s: accepted ${ACCEPTED[$s]} (warm-up included)"
	[[ $f != delivered_none ]] && line+=", $([[ $s == pf-hold ]] && echo held || echo delivered) $($f)"
	echo "$line"
done
for s in doe doe-b; do
	if grep -q 'level=ERROR' "$WORK/$s.out" 2>/dev/null; then
		echo "$s logged errors:"
		grep 'level=ERROR' "$WORK/$s.out" | cut -c1-200 | sort | uniq -c | sort -rn | head -5
	fi
done
for s in pf-mdir pf-hold; do
	[[ -f $WORK/$s/maillog ]] || continue
	n=$(grep -cE 'warning|fatal|panic|status=(deferred|bounced)' "$WORK/$s/maillog" || true)
	if [[ $n != 0 ]]; then
		echo "$s logged $n warnings or failed deliveries, e.g.:"
		grep -E 'warning|fatal|panic|status=(deferred|bounced)' "$WORK/$s/maillog" | head -3 | cut -c1-200
	fi
done
echo
echo "# JSON lines"
cat "$JSONL"

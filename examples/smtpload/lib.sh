# shellcheck shell=bash
# lib.sh: the helpers compare.sh and peers.sh share (sourced, not run).

log() { printf '%s\n' "$*" >&2; }

# wait_for FILE REGEX: print the first capture group of the first line of
# FILE matching REGEX (sed -E), waiting up to 20 s for it.
wait_for() {
	local file=$1 re=$2 got
	for _ in $(seq 200); do
		got=$(sed -nE "s/$re/\1/p" "$file" 2>/dev/null | head -n1)
		if [[ -n $got ]]; then
			printf '%s\n' "$got"
			return 0
		fi
		sleep 0.1
	done
	log "timed out waiting for /$re/ in $file:"
	cat "$file" >&2 || true
	return 1
}

# free_port: a port nothing listens on, below the kernel's ephemeral range
# (32768 and up by default), where the servers' own port-0 listeners and
# outgoing connections take theirs (a Postfix instance once lost its port
# so).
free_port() {
	local p low
	read -r low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || low=32768
	((low > 21000)) || low=32768
	for _ in $(seq 100); do
		p=$((20000 + RANDOM % (low - 20000)))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	return 1
}

# jget KEY JSON: a number from smtpload's one-line JSON report.
jget() {
	local v
	v=$(sed -nE "s/.*\"$1\":(-?[0-9.eE+-]+).*/\1/p" <<<"$2")
	echo "${v:-0}"
}

now() { date +%s.%N; }
secs_since() { awk -v a="$(now)" -v b="$1" 'BEGIN{printf "%.2f", a-b}'; }

# admin_counts DATA: the /v1/counts JSON of the doe-family whose -data is
# DATA, from its admin socket; fails when it does not answer.
admin_counts() { curl -sf --unix-socket "$1/admin.sock" http://doe/v1/counts; }

# count_queues JSON QUEUE...: the sum of those queues' counts in
# admin_counts' JSON (awk, not python: its start would take the CPU the
# runs measure).
count_queues() {
	local js=$1
	shift
	awk -v want=" $* " 'BEGIN{RS="[{},]"; FS=":"} {k=$1; gsub(/[ \t\n"]/, "", k); v=$2; gsub(/[^0-9]/, "", v)} index(want, " " k " ") && v != "" {s+=v} END{print s+0}' <<<"$js"
}

# waiting SPOOL DATA: the messages waiting in working and deliver of the
# doe-family whose -spool is SPOOL and -data is DATA: the spool's files
# (*.q; *.json in spools of before the one-file entry format), or, with
# any other store (-queue), what its admin socket counts there (1 when it
# does not answer: not drained).
waiting() {
	local q=$1 c
	if [[ -d $q/working ]]; then
		local f=("$q"/working/*.q "$q"/deliver/*.q "$q"/working/*.json "$q"/deliver/*.json)
		local n=0 x
		for x in "${f[@]}"; do [[ -e $x ]] && n=$((n + 1)); done
		echo "$n"
		return
	fi
	c=$(admin_counts "$2") || {
		echo 1
		return
	}
	count_queues "$c" working deliver
}

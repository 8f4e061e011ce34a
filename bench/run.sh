#!/usr/bin/env bash
# bench/run.sh: measure the converter against plain routing, HAProxy and a
# minimal Go relay on one namespace lab, with one load generator
# (`converter bench`).
#
# In one run, on the same lab, it runs interleaved rounds of:
#   direct-tcp    client -> server, routed by the converter namespace, TCP
#   direct-mptcp  the same, MPTCP end to end over both client paths
#   haproxy       HAProxy (TCP mode, option splice-auto) in the converter
#                 namespace, 10.201.1.1:7000 -> server
#   min-tcp       bench/minrelay in the converter namespace, 10.201.1.1:5125 ->
#                 server: the converter's sockets (MPTCP listener, Convert
#                 message and first bytes in the SYN, TFO to the server) and
#                 no Convert logic, the floor of a Go relay on this path
#   min-mptcp     the same, MPTCP client leg over both client paths
#   conv-tcp      `converter run` in the converter namespace, TCP client leg
#   conv-mptcp    the same, MPTCP client leg over both client paths
#   conv-mptcp-hold  a second `converter run`, the same flags plus
#                 --syn-hold, 10.201.1.1:5126, MPTCP client leg: its
#                 SYN+ACK waits for the server's (connection rate only)
# each for throughput (--bytes per round; uploads, downloads and both at
# once: see --direction) and for connection rate (--duration,
# --concurrency). Around each connect run through a converter's MPTCP leg
# it scrapes that converter's SYN-to-reply histogram (GET /metrics on its
# control socket); after the rounds it reads the hold's counters
# (`converter bpf status --json`). Finally it opens --idle-count idle
# converted sessions through a fresh converter and measures the
# converter's RSS growth per session.
#
# It writes --out/latest.json (every round's figures per path and
# direction, their medians and spread, the ratios converter/direct,
# converter/HAProxy, converter-MPTCP/direct-MPTCP, converter/minimal relay
# (TCP and MPTCP legs), minimal relay/HAProxy per direction and for the
# connection rate and converter with/without --syn-hold for the
# connection rate, the SYN hold's figures ("syn_hold"), the idle figures
# and every raw record) and
# --out/latest.svg, the chart of it, both made by bench/chart (a Go module
# of its own: `go -C bench/chart run . table -markdown "$PWD/bench/results/latest.json"`
# prints the README's tables again), then prints the tables.
#
# Needs root, iproute2, jq, curl and haproxy (installed with apt-get when
# missing), and Go to build bin/converter, bench/minrelay, bench/idlefloor
# and bench/chart.
# The lab is torn down on exit and on interrupt. Every command is printed
# before it runs ("+ ...").
#
#   sudo bench/run.sh                       # defaults: 3 rounds, 2G, 5s, 32
#   sudo bench/run.sh --rounds 1 --bytes 256M --duration 2s --idle-count 1000 --out /tmp/smoke
#   sudo bench/run.sh --direction both      # both ways at once on each stream only
set -euo pipefail

ROUNDS=3
BYTES=2G
STREAMS=1
DIRECTION=all
DURATION=5s
CONCURRENCY=32
IDLE_COUNT=10000
IDLE_HOLD=10s
PREFIX=cvbench
BUILD=1
OUT=

usage() {
	cat <<EOF
usage: $0 [options]
  --rounds N          interleaved rounds (default $ROUNDS)
  --bytes SIZE        throughput: bytes per stream and round (default $BYTES)
  --streams N         throughput: parallel streams (default $STREAMS)
  --direction D       throughput: up (client to server), down (server to client),
                      both (at once on each stream) or all (a run of each; default $DIRECTION)
  --duration D        connection rate: duration of each run (default $DURATION)
  --concurrency N     connection rate: connections in flight (default $CONCURRENCY)
  --idle-count N      idle sessions for the memory measurement, 0 to skip (default $IDLE_COUNT)
  --idle-hold D       how long they are held (default $IDLE_HOLD)
  --prefix NAME       lab name; it must not exist yet (default $PREFIX)
  --out DIR           where latest.json and latest.svg go (default bench/results)
  --no-build          use bin/converter as it is
EOF
}

while (($#)); do
	case $1 in
	--rounds) ROUNDS=$2; shift ;;
	--bytes) BYTES=$2; shift ;;
	--streams) STREAMS=$2; shift ;;
	--direction) DIRECTION=$2; shift ;;
	--duration) DURATION=$2; shift ;;
	--concurrency) CONCURRENCY=$2; shift ;;
	--idle-count) IDLE_COUNT=$2; shift ;;
	--idle-hold) IDLE_HOLD=$2; shift ;;
	--prefix) PREFIX=$2; shift ;;
	--out) OUT=$2; shift ;;
	--no-build) BUILD=0 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
	shift
done

die() { echo "run.sh: $*" >&2; exit 1; }

# The throughput directions to run.
case $DIRECTION in
up | down | both) DIRS=("$DIRECTION") ;;
all) DIRS=(up down both) ;;
*) usage >&2; exit 2 ;;
esac
# cmd prints a command, then runs it.
cmd() { echo "+ $*" >&2; "$@"; }

[[ $(id -u) == 0 ]] || die "needs root (network namespaces)"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(realpath -m "${OUT:-$ROOT/bench/results}")
cd "$ROOT"
BIN=$ROOT/bin/converter
CLI=$PREFIX-cli CONV=$PREFIX-conv SRV=$PREFIX-srv
SERVER=10.201.3.2:7000      # bench --serve, in the server namespace
PROXY=10.201.1.1:7000       # HAProxy, in the converter namespace
CONVERTER=10.201.1.1:5124   # converter run, in the converter namespace
MINRELAY=10.201.1.1:5125    # bench/minrelay, in the converter namespace
HOLD=10.201.1.1:5126        # converter run --syn-hold, in the converter namespace
WORK=$(mktemp -d /tmp/converter-bench.XXXXXX)
PIDS=()
LAB_UP=0

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
	if ((LAB_UP)); then cmd "$BIN" lab down --prefix "$PREFIX" >&2; fi
	rm -rf "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted" >&2; exit 130' INT
trap 'exit 143' TERM

for tool in haproxy jq curl; do
	if ! command -v $tool >/dev/null; then
		cmd apt-get update -qq
		DEBIAN_FRONTEND=noninteractive cmd apt-get install -y -qq $tool >/dev/null
	fi
done

echo "# converter benchmark"
echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "kernel:  $(uname -r)"
echo "cpus:    $(nproc)"
echo "go:      $(go version 2>/dev/null || echo none)"
echo "haproxy: $(haproxy -v | head -1)"
echo "source:  $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
echo "options: rounds $ROUNDS, bytes $BYTES x $STREAMS stream(s), duration $DURATION, concurrency $CONCURRENCY, idle $IDLE_COUNT for $IDLE_HOLD, lab $PREFIX, direction $DIRECTION (${DIRS[*]})"
echo

if ((BUILD)); then CGO_ENABLED=0 cmd go build -o bin/converter ./cmd/converter; fi
[[ -x $BIN ]] || die "$BIN missing"
# The minimal relay lives in $WORK only: built on every run, --no-build or not.
MINRELAY_BIN=$WORK/minrelay
CGO_ENABLED=0 cmd go build -o "$MINRELAY_BIN" ./bench/minrelay
IDLEFLOOR_BIN=$WORK/idlefloor # Go's own memory under an idle session's two sockets
CGO_ENABLED=0 cmd go build -o "$IDLEFLOOR_BIN" ./bench/idlefloor
# The summary, chart and tables: a module of its own, for its plotting library.
CHART=$WORK/chart
cmd go -C bench/chart build -o "$CHART" .
mkdir -p "$OUT"

# The converter, HAProxy, the minimal relay, the server and the generator
# all inherit this.
# Raising the hard limit needs CAP_SYS_RESOURCE; without it, keep the
# hard limit and open fewer idle sessions. An idle session holds its 2
# sockets in the converter (parked, it keeps no splice pipe); 4 fds each
# leaves room for the sessions still opening.
cmd ulimit -n 65536 || cmd ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
echo "RLIMIT_NOFILE: $NOFILE"
FDS_PER_IDLE=4
if ((IDLE_COUNT * FDS_PER_IDLE + 200 > NOFILE)); then
	echo "note: $IDLE_COUNT idle sessions need about $((IDLE_COUNT * FDS_PER_IDLE)) fds in the converter;" \
		"RLIMIT_NOFILE is $NOFILE, so the idle measurement opens $(((NOFILE - 200) / FDS_PER_IDLE))"
	IDLE_COUNT=$(((NOFILE - 200) / FDS_PER_IDLE))
fi

if "$BIN" lab status --prefix "$PREFIX" --json | jq -e '[.namespaces[].exists] | any' >/dev/null; then
	die "a lab named $PREFIX exists already; use --prefix or remove it: $BIN lab down --prefix $PREFIX"
fi
LAB_UP=1
cmd "$BIN" lab up --prefix "$PREFIX"

# MPTCP end to end needs the server namespace to accept joins; the client
# announces its second path with a subflow endpoint.
limits=$(ip -n "$SRV" mptcp limits show)
echo "server mptcp limits: $limits"
if [[ $(awk '{for (i = 1; i < NF; i++) if ($i == "subflows") print $(i + 1)}' <<<"$limits") -lt 1 ]]; then
	cmd ip -n "$SRV" mptcp limits set subflows 4 add_addr_accepted 4
fi
echo "client mptcp endpoints: $(ip -n "$CLI" mptcp endpoint show | tr '\n' ';')"
echo "client ip_local_port_range: $(ip netns exec "$CLI" cat /proc/sys/net/ipv4/ip_local_port_range | tr '\t' ' ')"
echo "converter tcp_fastopen: $(ip netns exec "$CONV" cat /proc/sys/net/ipv4/tcp_fastopen)"

# start NAME NS CMD...: runs CMD in NS in the background, logging to
# $WORK/NAME.log; sets PID. `ip netns exec` execs CMD, so PID is CMD's.
start() {
	local name=$1 ns=$2
	shift 2
	echo "+ ip netns exec $ns $* >$WORK/$name.log 2>&1 &" >&2
	ip netns exec "$ns" "$@" >"$WORK/$name.log" 2>&1 &
	PID=$!
	PIDS+=("$PID")
}

# wait_listen NS PORT NAME: until something listens on PORT in NS.
wait_listen() {
	local i
	for ((i = 0; i < 200; i++)); do
		if [[ -n $(ip netns exec "$1" ss -Hltn "sport = :$2") ]]; then return 0; fi
		sleep 0.05
	done
	cat "$WORK/$3.log" >&2
	die "$3 is not listening on port $2 in $1"
}

start server "$SRV" "$BIN" bench --serve "$SERVER"
wait_listen "$SRV" 7000 server

cat >"$WORK/haproxy.cfg" <<EOF
global
    maxconn $(((NOFILE - 500) / 3))
defaults
    mode tcp
    option splice-auto
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen bench
    bind $PROXY
    server bench $SERVER
EOF
echo "haproxy.cfg:" && sed 's/^/    /' "$WORK/haproxy.cfg"
start haproxy "$CONV" haproxy -db -f "$WORK/haproxy.cfg"
wait_listen "$CONV" 7000 haproxy

# The converter runs at its default log level: one record per session,
# written to its log file, is part of what a connection costs. The lab's
# server has a private address, refused by default; the one generator is
# one client, whose default per-client rate and session caps would refuse
# most of a connect or idle run. Each converter has a control socket of
# its own, in $WORK (its metrics and BPF counters are read there).
CONVERTER_CTL=$WORK/converter.sock
HOLD_CTL=$WORK/converter-hold.sock
CONVERTER_COMMON=(--allow-destinations "${SERVER%:*}/32" --rate-per-client 0 --max-sessions-per-client 100000)
CONVERTER_FLAGS=(--listen "[::]:${CONVERTER##*:}" --control "$CONVERTER_CTL" "${CONVERTER_COMMON[@]}")
start converter "$CONV" "$BIN" run "${CONVERTER_FLAGS[@]}"
CONVERTER_PID=$PID
wait_listen "$CONV" "${CONVERTER##*:}" converter

# The same converter with --syn-hold, on its own port: its programs
# (hold_syn at tcx ingress, hold_synack at tcx egress, on every interface
# that is up, and the SYN+ACK capture at ingress that the hold needs)
# note and hold only what goes to port 5126; the first converter's
# programs are its own. But not the TFO window clamp (synwin, loaded where
# the kernel has the fault): it lowers the window of every Convert SYN that
# arrives in the namespace, whatever its port, so the first converter's
# clamps this one's SYNs too, and a second clamp would lower each SYN's
# window twice (every path's, the minimal relay's included).
HOLD_FLAGS=(--listen "[::]:${HOLD##*:}" --control "$HOLD_CTL" "${CONVERTER_COMMON[@]}" --syn-hold --tfo-window-clamp off)
start converter-hold "$CONV" "$BIN" run "${HOLD_FLAGS[@]}"
HOLD_PID=$PID
wait_listen "$CONV" "${HOLD##*:}" converter-hold

# syn_to_reply SOCKET: the converter's convert_syn_to_reply_seconds
# histogram as {"count", "sum_seconds", "le_seconds": [finite bounds],
# "cumulative": [count at or below each]}; fails without an answer.
syn_to_reply() {
	local text
	text=$(curl -sf --max-time 5 --unix-socket "$1" http://converter/metrics) || return 1
	awk -v m=converter_convert_syn_to_reply_seconds '
		index($0, m "_bucket{") == 1 && $0 !~ /le="\+Inf"/ {
			match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5)
			les = les sep le; cum = cum sep $NF; sep = ","
		}
		$1 == m "_sum" { sum = $2 }
		$1 == m "_count" { count = $2 }
		END {
			if (count == "") exit 1
			printf "{\"count\": %s, \"sum_seconds\": %s, \"le_seconds\": [%s], \"cumulative\": [%s]}\n", count, sum, les, cum
		}' <<<"$text" | jq -c .
}
# Until each converter serves its metrics.
for ctl in "$CONVERTER_CTL" "$HOLD_CTL"; do
	for ((i = 0; i < 100; i++)); do
		syn_to_reply "$ctl" >/dev/null 2>&1 && break
		sleep 0.05
	done
	((i < 100)) || die "no SYN-to-reply histogram on $ctl"
done

# The minimal relay: the converter's sockets, one fixed server like
# HAProxy's, on the converter's addresses (port 5125).
start minrelay "$CONV" "$MINRELAY_BIN" -listen "[::]:${MINRELAY##*:}" -server "$SERVER"
wait_listen "$CONV" "${MINRELAY##*:}" minrelay

# The cases: a name, then the generator's route flags.
CASES=(direct-tcp direct-mptcp haproxy min-tcp min-mptcp conv-tcp conv-mptcp)
# The connect runs add the converter with --syn-hold: the hold only
# changes the handshake, which a throughput run does once in seconds.
CONNECT_CASES=("${CASES[@]}" conv-mptcp-hold)
declare -A FLAGS=(
	[direct-tcp]="--mptcp=false"
	[direct-mptcp]="--mptcp=true"
	[haproxy]="--proxy $PROXY --mptcp=false"
	[min-tcp]="--via $MINRELAY --mptcp=false"
	[min-mptcp]="--via $MINRELAY --mptcp=true"
	[conv-tcp]="--via $CONVERTER --mptcp=false"
	[conv-mptcp]="--via $CONVERTER --mptcp=true"
	[conv-mptcp-hold]="--via $HOLD --mptcp=true"
)
# Where the MPTCP joins of a case land, for the nstat cross-check.
declare -A JOIN_NS=([direct-mptcp]=$SRV [min-mptcp]=$CONV [conv-mptcp]=$CONV [conv-mptcp-hold]=$CONV)
# The control socket whose SYN-to-reply histogram a case's connect runs
# read, before and after the run.
declare -A HIST_CTL=([conv-mptcp]=$CONVERTER_CTL [conv-mptcp-hold]=$HOLD_CTL)

joins() { # NS: MPTcpExtMPJoinAckRx, without touching nstat's history
	ip netns exec "$1" nstat -asz MPTcpExtMPJoinAckRx | awk '$1 == "MPTcpExtMPJoinAckRx" {print $2}'
}

RESULTS=$WORK/results.jsonl
# measure ROUND CASE MODE DIRECTION ARGS...: one generator run, recorded in
# RESULTS with its round and case (a failed run as such, with its mode and
# direction); DIRECTION is empty for connect runs. A connect run of a case
# in HIST_CTL also gets "syn_to_reply": the converter's SYN-to-reply
# histogram over the run (the difference of the snapshots before and
# after; null when a scrape failed).
measure() {
	local round=$1 case=$2 mode=$3 dir=$4 out j0=0 jn=null jns=${JOIN_NS[$2]:-} ctl='' h0=null h1=null
	shift 4
	[[ $mode != connect ]] || ctl=${HIST_CTL[$case]:-}
	[[ -z $ctl ]] || h0=$(syn_to_reply "$ctl") || h0=null
	[[ -z $jns ]] || j0=$(joins "$jns")
	# shellcheck disable=SC2086 # FLAGS holds several words
	if out=$(cmd timeout -k 5 600 ip netns exec "$CLI" "$BIN" bench ${FLAGS[$case]} --mode "$mode" ${dir:+--direction "$dir"} "$@" --json "$SERVER"); then
		[[ -z $jns ]] || jn=$(($(joins "$jns") - j0))
		[[ -z $ctl ]] || h1=$(syn_to_reply "$ctl") || h1=null
		jq -c --argjson round "$round" --arg case "$case" --argjson joins "$jn" --argjson h0 "$h0" --argjson h1 "$h1" --arg hist "${ctl:+1}" '
			. + {round: $round, case: $case, joins: $joins}
			+ if $hist == "" then {} elif $h0 == null or $h1 == null then {syn_to_reply: null} else
				{syn_to_reply: {count: ($h1.count - $h0.count), sum_seconds: ($h1.sum_seconds - $h0.sum_seconds),
					le_seconds: $h1.le_seconds,
					cumulative: [range($h1.cumulative | length) as $i | $h1.cumulative[$i] - $h0.cumulative[$i]]}} end' <<<"$out" | tee -a "$RESULTS"
	else
		echo "run.sh: $case $mode $dir failed in round $round" >&2
		jq -nc --argjson round "$round" --arg case "$case" --arg mode "$mode" --arg dir "$dir" \
			'{round: $round, case: $case, mode: $mode, direction: $dir, failed: true}' >>"$RESULTS"
	fi
}

for ((r = 1; r <= ROUNDS; r++)); do
	echo "## round $r of $ROUNDS"
	for d in "${DIRS[@]}"; do
		for c in "${CASES[@]}"; do
			measure "$r" "$c" throughput "$d" --bytes "$BYTES" --streams "$STREAMS"
		done
	done
	for c in "${CONNECT_CASES[@]}"; do
		measure "$r" "$c" connect "" --duration "$DURATION" --concurrency "$CONCURRENCY"
	done
done
echo "TIME_WAIT sockets: client $(ip netns exec "$CLI" ss -Htan state time-wait | wc -l)," \
	"converter $(ip netns exec "$CONV" ss -Htan state time-wait | wc -l)," \
	"server $(ip netns exec "$SRV" ss -Htan state time-wait | wc -l)"

# The hold's counters over all the rounds (the hold converter served only
# the conv-mptcp-hold runs): its BPF programs' (syns_noted, synacks_held,
# ...) and its decisions (released, released_at_cap, refused_*,
# send_errors) and the SYN+ACKs still held ("pending"). Then it stops,
# before the idle sessions.
echo "## syn hold"
SYNHOLD_JSON=$WORK/synhold.json
if status=$(cmd "$BIN" bpf status --control "$HOLD_CTL" --json); then
	jq -c '(.syn_hold_counters // {}) + {pending: .syn_hold_pending}' <<<"$status" | tee "$SYNHOLD_JSON"
else
	echo "run.sh: no BPF status from the hold converter" >&2
fi
cmd kill "$HOLD_PID"
wait "$HOLD_PID" 2>/dev/null || true

# Memory per idle session, on a fresh converter so that memory freed by
# the rounds does not hide the growth.
IDLE_LINE=""
if ((IDLE_COUNT > 0)); then
	echo "## idle sessions"
	cmd kill "$CONVERTER_PID"
	wait "$CONVERTER_PID" 2>/dev/null || true
	start converter-idle "$CONV" "$BIN" run "${CONVERTER_FLAGS[@]}"
	CONVERTER_PID=$PID
	wait_listen "$CONV" 5124 converter-idle
	sleep 1
	rss() { awk '/^VmRSS:/ {print $2}' "/proc/$CONVERTER_PID/status"; }
	fds() { find "/proc/$CONVERTER_PID/fd" -mindepth 1 -maxdepth 1 | wc -l; }
	rss0=$(rss) fd0=$(fds)
	start idle "$CLI" "$BIN" bench --mode idle --via "$CONVERTER" --count "$IDLE_COUNT" --hold "$IDLE_HOLD" --json "$SERVER"
	IDLE_PID=$PID
	for ((i = 0; i < 1200; i++)); do
		grep -qs holding "$WORK/idle.log" && break
		kill -0 "$IDLE_PID" 2>/dev/null || break
		sleep 0.1
	done
	grep -q holding "$WORK/idle.log" || { cat "$WORK/idle.log" >&2; die "the idle sessions did not open"; }
	sleep 2 # let the last sessions settle
	rss1=$(rss) fd1=$(fds)
	# The kernel's side of the same sessions, in the converter's
	# namespace: each socket's object (its slab's object size: TCP or
	# TCPv6 for subflows and server legs, MPTCP or MPTCPv6 for the MPTCP
	# sockets) plus what it holds in buffers (ss's skmem: receive, send,
	# forward-allocated, queued and option memory).
	kernel=$(ip netns exec "$CONV" ss -HtmnaM 2>/dev/null | awk -v slab="$(awk '$1 ~ /^(TCP|TCPv6|MPTCP|MPTCPv6)$/ {printf "%s=%s ", $1, $4}' /proc/slabinfo 2>/dev/null)" '
		BEGIN { n = split(slab, kv, " "); for (i = 1; i <= n; i++) { split(kv[i], p, "="); size[p[1]] = p[2] } }
		$1 == "tcp" || $1 == "mptcp" { net = $1; state = $2; v6 = ($4 ~ /^\[/); next }
		/skmem:\(/ && state != "LISTEN" && state != "TIME-WAIT" {
			match($0, /skmem:\([^)]*\)/); m = substr($0, RSTART + 6, RLENGTH - 7)
			k = split(m, f, ","); for (i = 1; i <= k; i++) if (f[i] ~ /^(r|t|f|w|o)[0-9]+$/) buf += substr(f[i], 2)
			socks++
			obj += size[(net == "mptcp" ? "MPTCP" : "TCP") (v6 ? "v6" : "")]
		}
		END { printf "{\"sockets\": %d, \"buffer_bytes\": %d, \"object_bytes\": %d}", socks, buf, obj }')
	echo "converter namespace kernel sockets: $kernel"
	echo "converter during the hold: $(grep -E '^(VmRSS|VmHWM|Threads)' "/proc/$CONVERTER_PID/status" | tr -s ' \t\n' ' ')"
	wait "$IDLE_PID" || die "bench --mode idle failed: $(cat "$WORK/idle.log")"
	idle=$(grep '^{' "$WORK/idle.log")
	echo "$idle"
	# The floor under those figures: two idle Go sockets per session and
	# nothing of the converter's (4 sockets per session in one process).
	floor_sessions=$(((NOFILE - 200) / 4))
	((floor_sessions < IDLE_COUNT)) || floor_sessions=$IDLE_COUNT
	floor=$(cmd "$IDLEFLOOR_BIN" -sessions "$floor_sessions" | awk '{for (i = 1; i < NF; i++) if ($(i + 1) == "KiB") print $i}')
	echo "Go's floor for an idle session's two sockets: $floor KiB ($floor_sessions sessions)"
	# The idle figures, for latest.json and the last line of the output.
	jq --argjson rss0 "$rss0" --argjson rss1 "$rss1" --argjson fd0 "$fd0" --argjson fd1 "$fd1" --argjson kernel "$kernel" --argjson floor "${floor:-null}" '
		def per(a; b): if .connections > 0 then (b - a) / .connections * 100 | round / 100 else null end;
		{connections, errors, alive, hold_seconds, transport,
		 rss_kib_before: $rss0, rss_kib_after: $rss1, kib_per_session: per($rss0; $rss1),
		 fds_before: $fd0, fds_after: $fd1, fds_per_session: per($fd0; $fd1),
		 kernel_sockets: $kernel.sockets, kernel_sockets_per_session: per(0; $kernel.sockets),
		 kernel_kib_per_session: per(0; ($kernel.buffer_bytes + $kernel.object_bytes) / 1024),
		 kernel_buffer_kib_per_session: per(0; $kernel.buffer_bytes / 1024),
		 go_floor_kib_per_session: $floor}' <<<"$idle" >"$WORK/idle.json"
	IDLE_LINE=$(jq -r '
		"idle sessions: \(.connections) open (\(.errors) errors, \(.alive) alive after the hold, \(.transport) client leg);" +
		" converter RSS \(.rss_kib_before) KiB -> \(.rss_kib_after) KiB: \(.kib_per_session // "n/a") KiB per session;" +
		" fds \(.fds_before) -> \(.fds_after) (\(.fds_per_session // "n/a") per session);" +
		" kernel: \(.kernel_sockets_per_session // "n/a") sockets and \(.kernel_kib_per_session // "n/a") KiB per session" +
		" (\(.kernel_buffer_kib_per_session // "n/a") KiB of it in buffers);" +
		" Go'"'"'s floor for two idle sockets: \(.go_floor_kib_per_session // "n/a") KiB per session"' "$WORK/idle.json")
fi

# latest.json, its chart and its tables; written beside, then renamed, so
# that a failed run leaves the last results as they were.
jq -n --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg kernel "$(uname -r)" --argjson cpus "$(nproc)" \
	--arg go "$(go version 2>/dev/null || echo none)" --arg haproxy "$(haproxy -v | head -1)" \
	--arg source "$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)" \
	--argjson rounds "$ROUNDS" --arg bytes "$BYTES" --argjson streams "$STREAMS" \
	--arg duration "$DURATION" --argjson concurrency "$CONCURRENCY" --arg dirs "${DIRS[*]}" \
	'{date: $date, kernel: $kernel, cpus: $cpus, go: $go, haproxy: $haproxy, source: $source,
	  rounds: $rounds, bytes: $bytes, streams: $streams, directions: ($dirs | split(" ")),
	  duration: $duration, concurrency: $concurrency}' >"$WORK/meta.json"
SUMMARY_ARGS=()
[[ ! -f $WORK/idle.json ]] || SUMMARY_ARGS=(-idle "$WORK/idle.json")
[[ ! -f $SYNHOLD_JSON ]] || SUMMARY_ARGS+=(-synhold "$SYNHOLD_JSON")
cmd "$CHART" summarize -meta "$WORK/meta.json" "${SUMMARY_ARGS[@]}" "$RESULTS" >"$OUT/.latest.json"
cmd "$CHART" draw "$OUT/.latest.json" "$OUT/.latest.svg"
mv "$OUT/.latest.json" "$OUT/latest.json"
mv "$OUT/.latest.svg" "$OUT/latest.svg"
# Under sudo, leave the results to the user who ran it.
[[ -z ${SUDO_UID:-} ]] || chown "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$OUT/latest.json" "$OUT/latest.svg"

echo
echo "## summary: medians of $ROUNDS round(s) (in parentheses: the lowest and highest round), $(date -u +%Y-%m-%dT%H:%M:%SZ), kernel $(uname -r)"
"$CHART" table "$OUT/latest.json"
echo
echo "throughput: Gbit/s of each run; both: the bytes of both ways over the time of the longer."
echo "ratios: of the medians; in parentheses, the lowest and highest ratio within one round."
echo "subflows: the generator socket's MPTCP_INFO subflow count at the end of each transfer (median);"
echo "joins: MPTcpExtMPJoinAckRx during the throughput run, in the namespace that accepts the joins."
echo "syn hold: conv-mptcp-hold against conv-mptcp; connect latency from the generator (connect to the last response byte),"
echo "SYN to reply from each converter's histogram over the run (accept of the SYN to the Convert reply written)."
[[ -z $IDLE_LINE ]] || echo "$IDLE_LINE"
echo "written: $OUT/latest.json, $OUT/latest.svg"

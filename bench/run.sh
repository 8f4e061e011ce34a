#!/usr/bin/env bash
# bench/run.sh: measure the converter against plain routing and HAProxy on
# one namespace lab, with one load generator (`converter bench`).
#
# In one run, on the same lab, it runs interleaved rounds of:
#   direct-tcp    client -> server, routed by the converter namespace, TCP
#   direct-mptcp  the same, MPTCP end to end over both client paths
#   haproxy       HAProxy (TCP mode, option splice-auto) in the converter
#                 namespace, 10.201.1.1:7000 -> server
#   conv-tcp      `converter run` in the converter namespace, TCP client leg
#   conv-mptcp    the same, MPTCP client leg over both client paths
# each for throughput (--bytes per round, uploads and downloads: see
# --direction) and for connection rate (--duration, --concurrency), then
# prints medians and the ratios converter/direct, converter/HAProxy and
# converter-MPTCP/direct-MPTCP, per direction.
# Finally it opens --idle-count idle converted sessions through a fresh
# converter and reports the converter's RSS growth per session.
#
# Needs root, iproute2, jq and haproxy (installed with apt-get when
# missing), and Go to build bin/converter. The lab is torn down on exit and
# on interrupt. Every command is printed before it runs ("+ ...").
#
#   sudo bench/run.sh                       # defaults: 3 rounds, 2G, 5s, 32
#   sudo bench/run.sh --rounds 1 --bytes 256M --duration 2s --idle-count 1000
#   sudo bench/run.sh --direction both      # both ways at once on each stream
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

usage() {
	cat <<EOF
usage: $0 [options]
  --rounds N          interleaved rounds (default $ROUNDS)
  --bytes SIZE        throughput: bytes per stream and round (default $BYTES)
  --streams N         throughput: parallel streams (default $STREAMS)
  --direction D       throughput: up (client to server), down (server to client),
                      both (at once on each stream) or all (up and down runs; default $DIRECTION)
  --duration D        connection rate: duration of each run (default $DURATION)
  --concurrency N     connection rate: connections in flight (default $CONCURRENCY)
  --idle-count N      idle sessions for the memory measurement, 0 to skip (default $IDLE_COUNT)
  --idle-hold D       how long they are held (default $IDLE_HOLD)
  --prefix NAME       lab name; it must not exist yet (default $PREFIX)
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
	--no-build) BUILD=0 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
	shift
done

die() { echo "run.sh: $*" >&2; exit 1; }

# The throughput directions to run, and the kind each is recorded as: up
# keeps the kind "throughput" it always had.
case $DIRECTION in
up | down | both) DIRS=("$DIRECTION") ;;
all) DIRS=(up down) ;;
*) usage >&2; exit 2 ;;
esac
declare -A KIND=([up]=throughput [down]=download [both]=both)
# cmd prints a command, then runs it.
cmd() { echo "+ $*" >&2; "$@"; }

[[ $(id -u) == 0 ]] || die "needs root (network namespaces)"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BIN=$ROOT/bin/converter
CLI=$PREFIX-cli CONV=$PREFIX-conv SRV=$PREFIX-srv
SERVER=10.201.3.2:7000      # bench --serve, in the server namespace
PROXY=10.201.1.1:7000       # HAProxy, in the converter namespace
CONVERTER=10.201.1.1:5124   # converter run, in the converter namespace
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

for tool in haproxy jq; do
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

# The converter, HAProxy, the server and the generator all inherit this.
# Raising the hard limit needs CAP_SYS_RESOURCE; without it, keep the
# hard limit and open fewer idle sessions. An idle session holds 2 sockets
# and up to 2 splice pipes of 2 fds each in the converter (4 fds were
# measured; 6 leaves room).
cmd ulimit -n 65536 || cmd ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
echo "RLIMIT_NOFILE: $NOFILE"
FDS_PER_IDLE=6
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

# Session logs are info records: warn keeps logging out of the figures.
# The lab's server has a private address, refused by default; the one
# generator is one client, whose default per-client rate and session caps
# would refuse most of a connect or idle run.
CONVERTER_FLAGS=(--listen "[::]:5124" --log-level warn --allow-destinations "${SERVER%:*}/32"
	--rate-per-client 0 --max-sessions-per-client 100000)
start converter "$CONV" "$BIN" run "${CONVERTER_FLAGS[@]}"
CONVERTER_PID=$PID
wait_listen "$CONV" 5124 converter

# The cases: a name, then the generator's route flags.
CASES=(direct-tcp direct-mptcp haproxy conv-tcp conv-mptcp)
declare -A FLAGS=(
	[direct-tcp]="--mptcp=false"
	[direct-mptcp]="--mptcp=true"
	[haproxy]="--proxy $PROXY --mptcp=false"
	[conv-tcp]="--via $CONVERTER --mptcp=false"
	[conv-mptcp]="--via $CONVERTER --mptcp=true"
)
# Where the MPTCP joins of a case land, for the nstat cross-check.
declare -A JOIN_NS=([direct-mptcp]=$SRV [conv-mptcp]=$CONV)

joins() { # NS: MPTcpExtMPJoinAckRx, without touching nstat's history
	ip netns exec "$1" nstat -asz MPTcpExtMPJoinAckRx | awk '$1 == "MPTcpExtMPJoinAckRx" {print $2}'
}

RESULTS=$WORK/results.jsonl
# measure ROUND CASE KIND ARGS...: one generator run, recorded in RESULTS.
measure() {
	local round=$1 case=$2 kind=$3 out j0=0 jn=null jns=${JOIN_NS[$2]:-}
	shift 3
	[[ -z $jns ]] || j0=$(joins "$jns")
	# shellcheck disable=SC2086 # FLAGS holds several words
	if out=$(cmd timeout -k 5 600 ip netns exec "$CLI" "$BIN" bench ${FLAGS[$case]} "$@" --json "$SERVER"); then
		[[ -z $jns ]] || jn=$(($(joins "$jns") - j0))
		jq -c --argjson round "$round" --arg case "$case" --arg kind "$kind" --argjson joins "$jn" \
			'. + {round: $round, case: $case, kind: $kind, joins: $joins}' <<<"$out" | tee -a "$RESULTS"
	else
		echo "run.sh: $case $kind failed in round $round" >&2
		echo "{\"round\": $round, \"case\": \"$case\", \"kind\": \"$kind\", \"failed\": true}" >>"$RESULTS"
	fi
}

for ((r = 1; r <= ROUNDS; r++)); do
	echo "## round $r of $ROUNDS"
	for d in "${DIRS[@]}"; do
		for c in "${CASES[@]}"; do
			measure "$r" "$c" "${KIND[$d]}" --mode throughput --direction "$d" --bytes "$BYTES" --streams "$STREAMS"
		done
	done
	for c in "${CASES[@]}"; do
		measure "$r" "$c" connect --mode connect --duration "$DURATION" --concurrency "$CONCURRENCY"
	done
done
echo "TIME_WAIT sockets: client $(ip netns exec "$CLI" ss -Htan state time-wait | wc -l)," \
	"converter $(ip netns exec "$CONV" ss -Htan state time-wait | wc -l)," \
	"server $(ip netns exec "$SRV" ss -Htan state time-wait | wc -l)"

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
		grep -q holding "$WORK/idle.log" && break
		kill -0 "$IDLE_PID" 2>/dev/null || break
		sleep 0.1
	done
	grep -q holding "$WORK/idle.log" || { cat "$WORK/idle.log" >&2; die "the idle sessions did not open"; }
	sleep 2 # let the last sessions settle
	rss1=$(rss) fd1=$(fds)
	echo "converter during the hold: $(grep -E '^(VmRSS|VmHWM|Threads)' "/proc/$CONVERTER_PID/status" | tr -s ' \t\n' ' ')"
	wait "$IDLE_PID" || die "bench --mode idle failed: $(cat "$WORK/idle.log")"
	idle=$(grep '^{' "$WORK/idle.log")
	echo "$idle"
	IDLE_LINE=$(jq -r --argjson rss0 "$rss0" --argjson rss1 "$rss1" --argjson fd0 "$fd0" --argjson fd1 "$fd1" '
		"idle sessions: \(.connections) open (\(.errors) errors, \(.alive) alive after the hold, MPTCP client leg);" +
		" converter RSS \($rss0) KiB -> \($rss1) KiB: " +
		"\(if .connections > 0 then ($rss1 - $rss0) / .connections * 100 | round / 100 else "n/a" end) KiB per session;" +
		" fds \($fd0) -> \($fd1) (\(if .connections > 0 then ($fd1 - $fd0) / .connections * 100 | round / 100 else "n/a" end) per session)"' <<<"$idle")
fi

echo
echo "## summary: medians of $ROUNDS round(s), $(date -u +%Y-%m-%dT%H:%M:%SZ), kernel $(uname -r)"
# The throughput views besides uploads: each a table of medians and a
# ratio column. The up table and ratio lines above them are as they were.
KINDS=$(for d in "${DIRS[@]}"; do echo "${KIND[$d]}"; done | jq -R . | jq -s .)
jq -rs --argjson cases "$(printf '%s\n' "${CASES[@]}" | jq -R . | jq -s .)" --argjson kinds "$KINDS" '
	def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
	def f(d): if . == null then "-" else (. * pow(10; d) | round / pow(10; d) | tostring) end;
	def ratio(a; b): if a == null or b == null or b == 0 then "-" else (a / b) | f(2) end;
	# rate($get): the bits per second of a throughput record: the whole run, or one direction.
	def rate($get): if $get == "all" then .bits_per_second else .[$get].bits_per_second end;
	. as $all
	# runs($c; $k): the records of case $c and kind $k that did not fail.
	| def runs($c; $k): [$all[] | select(.case == $c and .kind == $k and (.failed | not))];
	# tput($c; $k; $get): the throughput columns of case $c.
	def tput($c; $k; $get): {
		gbps: (runs($c; $k) | map(rate($get) / 1e9) | median),
		gbps_all: (runs($c; $k) | map(rate($get) / 1e9 | f(1)) | join(" ")),
		subflows: (runs($c; $k) | map(.subflows | select(. != null)) | median),
		joins: (runs($c; $k) | map(.joins | select(. != null)) | median)
	};
	def ratios(by): [
		["converter-tcp / direct-tcp", "conv-tcp", "direct-tcp"],
		["converter-tcp / haproxy", "conv-tcp", "haproxy"],
		["converter-mptcp / direct-mptcp", "conv-mptcp", "direct-mptcp"]
	][] as [$name, $a, $b] | [$name, (by[] | ratio(.[$a].gbps; .[$b].gbps))];
	[$cases[] as $c | {
		case: $c,
		cps: (runs($c; "connect") | map(.connections_per_second) | median),
		cps_all: (runs($c; "connect") | map(.connections_per_second | f(0)) | join(" ")),
		p50: (runs($c; "connect") | map(.latency_us.p50) | median),
		p99: (runs($c; "connect") | map(.latency_us.p99) | median),
		errors: (runs($c; "connect") | map(.errors) | add),
		failed: ([$all[] | select(.case == $c and (.kind == "throughput" or .kind == "connect") and .failed)] | length)
	} + tput($c; "throughput"; "all")] as $rows
	| ($rows | map({(.case): .}) | add) as $by
	| [
		{name: "download", title: "download (server to client), --direction down:", kind: "download", get: "all"},
		{name: "both up", title: "both ways at once, --direction both: up", kind: "both", get: "up"},
		{name: "both down", title: "both ways at once, --direction both: down", kind: "both", get: "down"}
	  | select(.kind as $k | any($kinds[]; . == $k))
	  | . as $v
	  | .rows = [$cases[] as $c | {case: $c,
		failed: ([$all[] | select(.case == $c and .kind == $v.kind and .failed)] | length)} + tput($c; $v.kind; $v.get)]
	  | .by = (.rows | map({(.case): .}) | add)
	] as $views
	| (["case", "Gbit/s", "rounds", "subflows", "joins", "conn/s", "rounds", "p50 us", "p99 us", "errors", "failed"] | @tsv),
	  ($rows[] | [.case, (.gbps | f(2)), .gbps_all, (.subflows | f(0)), (.joins | f(0)), (.cps | f(0)), .cps_all, (.p50 | f(0)), (.p99 | f(0)), (.errors | f(0)), .failed] | @tsv),
	  "",
	  (["ratio", "throughput", "conn/s"] | @tsv),
	  (["converter-tcp / direct-tcp", ratio($by["conv-tcp"].gbps; $by["direct-tcp"].gbps), ratio($by["conv-tcp"].cps; $by["direct-tcp"].cps)] | @tsv),
	  (["converter-tcp / haproxy", ratio($by["conv-tcp"].gbps; $by["haproxy"].gbps), ratio($by["conv-tcp"].cps; $by["haproxy"].cps)] | @tsv),
	  (["converter-mptcp / direct-mptcp", ratio($by["conv-mptcp"].gbps; $by["direct-mptcp"].gbps), ratio($by["conv-mptcp"].cps; $by["direct-mptcp"].cps)] | @tsv),
	  ($views[] | "", .title,
		(["case", "Gbit/s", "rounds", "subflows", "joins", "failed"] | @tsv),
		(.rows[] | [.case, (.gbps | f(2)), .gbps_all, (.subflows | f(0)), (.joins | f(0)), .failed] | @tsv)),
	  (if $views == [] then empty else
		"", (["ratio"] + [$views[].name] | @tsv), (ratios([$views[].by]) | @tsv)
	  end)
' "$RESULTS" | awk -F'\t' '
	NF <= 1 { print; next }
	NF == 2 { printf "%-32s %12s\n", $1, $2; next }
	NF == 3 { printf "%-32s %12s %10s\n", $1, $2, $3; next }
	NF == 6 { printf "%-13s %7s %-17s %8s %5s %6s\n", $1, $2, $3, $4, $5, $6; next }
	{ printf "%-13s %7s %-17s %8s %5s %8s %-20s %7s %7s %6s %6s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 }'
echo
echo "subflows: the generator socket's MPTCP_INFO subflow count at the end of each transfer (median);"
echo "joins: MPTcpExtMPJoinAckRx during the throughput run, in the namespace that accepts the joins."
echo "throughput, the first table: uploads (client to server); the other tables: the other directions run."
[[ -z $IDLE_LINE ]] || echo "$IDLE_LINE"

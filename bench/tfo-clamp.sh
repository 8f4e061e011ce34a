#!/usr/bin/env bash
# bench/tfo-clamp.sh: what the TFO window clamp (bpf/synwin.c) costs.
#
# On one namespace lab, interleaved rounds of the converter with
# --tfo-window-clamp on and off, an MPTCP client leg over both paths:
#   download   the bench server sends --bytes to the client
#              clamp on:  Convert message in the SYN (the real path)
#              clamp off: Convert message after the handshake (no TFO, so
#                         the kernel fault cannot strike: the reference)
#   connect    connection rate, Convert message in the SYN, both ways
# then medians and the ratios clamp-on / clamp-off.
#
#   sudo bench/tfo-clamp.sh [--rounds 3] [--bytes 1G] [--duration 5s]
set -euo pipefail

ROUNDS=3 BYTES=1G DURATION=5s CONCURRENCY=32 PREFIX=cvclamp
while (($#)); do
	case $1 in
	--rounds) ROUNDS=$2; shift ;;
	--bytes) BYTES=$2; shift ;;
	--duration) DURATION=$2; shift ;;
	--concurrency) CONCURRENCY=$2; shift ;;
	--prefix) PREFIX=$2; shift ;;
	*) echo "usage: $0 [--rounds N] [--bytes SIZE] [--duration D] [--concurrency N] [--prefix NAME]" >&2; exit 2 ;;
	esac
	shift
done
cmd() { echo "+ $*" >&2; "$@"; }
[[ $(id -u) == 0 ]] || { echo "needs root" >&2; exit 1; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BIN=$ROOT/bin/converter
CLI=$PREFIX-cli CONV=$PREFIX-conv SRV=$PREFIX-srv
SERVER=10.201.3.2:7000 CONVERTER=10.201.1.1:5124
WORK=$(mktemp -d /tmp/converter-clamp.XXXXXX)
PIDS=()
cleanup() {
	set +e
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
	"$BIN" lab down --prefix "$PREFIX" >/dev/null 2>&1
	rm -rf "$WORK"
}
trap cleanup EXIT
command -v jq >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null; }
CGO_ENABLED=0 cmd go build -o bin/converter ./cmd/converter
cmd "$BIN" lab up --prefix "$PREFIX" >/dev/null
wait_listen() { # NS PORT
	for ((i = 0; i < 200; i++)); do
		[[ -n $(ip netns exec "$1" ss -Hltn "sport = :$2") ]] && return 0
		sleep 0.05
	done
	echo "nothing listens on $2 in $1" >&2; exit 1
}
ip netns exec "$SRV" "$BIN" bench --serve "$SERVER" >"$WORK/server.log" 2>&1 &
PIDS+=($!)
wait_listen "$SRV" 7000

RESULTS=$WORK/results.jsonl
for ((r = 1; r <= ROUNDS; r++)); do
	for clamp in on off; do
		ip netns exec "$CONV" "$BIN" run --listen "[::]:5124" --log-level warn --tfo-window-clamp "$clamp" \
			--allow-destinations 10.201.3.2/32 --rate-per-client 0 --max-sessions-per-client 100000 \
			--control "$WORK/control.sock" >"$WORK/conv-$clamp.log" 2>&1 &
		conv=$!
		PIDS+=("$conv")
		wait_listen "$CONV" 5124
		syn=true
		[[ $clamp == off ]] && syn=false
		for args in "--mode throughput --direction down --bytes $BYTES --syn-data=$syn" \
			"--mode connect --duration $DURATION --concurrency $CONCURRENCY"; do
			# shellcheck disable=SC2086
			out=$(cmd ip netns exec "$CLI" "$BIN" bench --via "$CONVERTER" --mptcp $args --json "$SERVER")
			jq -c --arg clamp "$clamp" --argjson round "$r" '. + {clamp: $clamp, round: $round}' <<<"$out" | tee -a "$RESULTS"
		done
		kill "$conv"
		wait "$conv" 2>/dev/null || true
	done
done
echo
echo "## TFO window clamp: medians of $ROUNDS round(s), $(date -u +%Y-%m-%dT%H:%M:%SZ), kernel $(uname -r)"
jq -rs '
	def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
	def r2: . * 100 | round / 100;
	. as $all
	| def v($c; $m; f): [$all[] | select(.clamp == $c and .mode == $m) | f] ;
	(v("on"; "throughput"; .down.bits_per_second / 1e9) | median) as $don
	| (v("off"; "throughput"; .down.bits_per_second / 1e9) | median) as $doff
	| (v("on"; "connect"; .connections_per_second) | median) as $con
	| (v("off"; "connect"; .connections_per_second) | median) as $coff
	| "download Gbit/s: clamp on, message in the SYN \($don | r2) (\(v("on"; "throughput"; .down.bits_per_second / 1e9 | r2) | map(tostring) | join(" ")));" +
	  " clamp off, message after the handshake \($doff | r2) (\(v("off"; "throughput"; .down.bits_per_second / 1e9 | r2) | map(tostring) | join(" "))); ratio \($don / $doff | r2)",
	  "connections/s (message in the SYN): clamp on \($con | round) (\(v("on"; "connect"; .connections_per_second | round) | map(tostring) | join(" ")));" +
	  " clamp off \($coff | round) (\(v("off"; "connect"; .connections_per_second | round) | map(tostring) | join(" "))); ratio \($con / $coff | r2)"
' "$RESULTS"

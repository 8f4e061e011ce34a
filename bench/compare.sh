#!/usr/bin/env bash
# bench/compare.sh: two converter settings side by side.
#
# On one namespace lab, interleaved rounds of the converter run with the
# flags of arm A, then of arm B; each round measures, through the converter
# with an MPTCP client leg over both paths:
#   download   the bench server sends --bytes to the client
#   connect    connection rate and connect latency (Convert message in
#              the SYN, 64 B each way)
# with each arm's own bench flags, then prints medians and the ratios A/B.
#
#   sudo bench/compare.sh --a NAME 'CONVERTER FLAGS' 'BENCH FLAGS' \
#                         --b NAME 'CONVERTER FLAGS' 'BENCH FLAGS' \
#                         [--rounds 3] [--bytes 1G] [--duration 5s]
#
# bench/tfo-clamp.sh and bench/verify-first.sh are the comparisons the
# README quotes.
set -euo pipefail

ROUNDS=3 BYTES=1G DURATION=5s CONCURRENCY=32 PREFIX=cvcmp
declare -A NAME CONV BENCH
while (($#)); do
	case $1 in
	--a | --b) arm=${1#--}; NAME[$arm]=$2 CONV[$arm]=$3 BENCH[$arm]=$4; shift 3 ;;
	--rounds) ROUNDS=$2; shift ;;
	--bytes) BYTES=$2; shift ;;
	--duration) DURATION=$2; shift ;;
	--concurrency) CONCURRENCY=$2; shift ;;
	--prefix) PREFIX=$2; shift ;;
	*) echo "usage: $0 --a NAME CONV_FLAGS BENCH_FLAGS --b NAME CONV_FLAGS BENCH_FLAGS [--rounds N] [--bytes SIZE] [--duration D] [--concurrency N] [--prefix NAME]" >&2; exit 2 ;;
	esac
	shift
done
[[ -n ${NAME[a]:-} && -n ${NAME[b]:-} ]] || { echo "$0: need --a and --b" >&2; exit 2; }
WORK_NAME=compare TOOLS="jq"
# shellcheck source=bench/lab.sh
. "$(dirname "$0")/lab.sh"

RESULTS=${RESULTS:-$WORK/results.jsonl} # RESULTS=FILE keeps the raw records
for ((r = 1; r <= ROUNDS; r++)); do
	for arm in a b; do
		# shellcheck disable=SC2086 # the flag strings hold several words
		ip netns exec "$CONV_NS" "$BIN" run --listen "[::]:5124" --log-level warn \
			--allow-destinations 10.201.3.2/32 --rate-per-client 0 --max-sessions-per-client 100000 \
			--control "$WORK/control.sock" ${CONV[$arm]} >"$WORK/conv-$arm.log" 2>&1 &
		conv=$!
		PIDS+=("$conv")
		wait_listen "$CONV_NS" 5124
		for args in "--mode throughput --direction down --bytes $BYTES" \
			"--mode connect --duration $DURATION --concurrency $CONCURRENCY"; do
			# shellcheck disable=SC2086
			out=$(cmd ip netns exec "$CLI" "$BIN" bench --via "$CONVERTER" --mptcp $args ${BENCH[$arm]} --json "$SERVER")
			jq -c --arg arm "$arm" --argjson round "$r" '. + {arm: $arm, round: $round}' <<<"$out" | tee -a "$RESULTS"
		done
		kill "$conv"
		wait "$conv" 2>/dev/null || true
	done
done
echo
echo "## ${NAME[a]} (A: converter ${CONV[a]:-defaults}; bench ${BENCH[a]:-defaults}) against ${NAME[b]} (B: converter ${CONV[b]:-defaults}; bench ${BENCH[b]:-defaults})"
echo "## medians of $ROUNDS round(s), $(date -u +%Y-%m-%dT%H:%M:%SZ), kernel $(uname -r)"
jq -rs --arg a "${NAME[a]}" --arg b "${NAME[b]}" '
	def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
	def r2: . * 100 | round / 100;
	. as $all
	| def v($arm; $m; f): [$all[] | select(.arm == $arm and .mode == $m) | f];
	def row($what; $m; f; fmt): (v("a"; $m; f) | median) as $x | (v("b"; $m; f) | median) as $y
		| "\($what): \($a) \($x | fmt) (\(v("a"; $m; f | fmt) | map(tostring) | join(" "))); \($b) \($y | fmt) (\(v("b"; $m; f | fmt) | map(tostring) | join(" "))); ratio A/B \(if $y > 0 then $x / $y | r2 else "-" end)";
	row("download Gbit/s"; "throughput"; .down.bits_per_second / 1e9; r2),
	row("connections/s"; "connect"; .connections_per_second; round),
	row("connect p50 us"; "connect"; .latency_us.p50; round),
	row("connect p99 us"; "connect"; .latency_us.p99; round)
' "$RESULTS"

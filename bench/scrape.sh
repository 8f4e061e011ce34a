#!/usr/bin/env bash
# bench/scrape.sh: does scraping the metrics slow the data path?
#
# On one namespace lab and one converter, interleaved runs of the
# connection rate (`converter bench --mode connect`: Convert message in
# the SYN, MPTCP client leg over both paths, 64 B each way) without a
# scraper ("off") and with one that gets /metrics on the control socket
# at --hz ("on", curl --rate, one process for the whole run). The order
# alternates every round (off on, on off, ...) so that drift on a shared
# machine falls on both arms. It prints the medians, each round's ratio
# on/off and the median of those ratios, and the scrapes' count and
# latency under load.
#
#   sudo bench/scrape.sh [--rounds 5] [--duration 5s] [--concurrency 32] [--hz 10]
#
# Needs root, iproute2, curl and jq (installed with apt-get when missing),
# and Go to build bin/converter. The lab is torn down on exit.
set -euo pipefail

ROUNDS=5 DURATION=5s CONCURRENCY=32 HZ=10 PREFIX=cvscr
while (($#)); do
	case $1 in
	--rounds) ROUNDS=$2; shift ;;
	--duration) DURATION=$2; shift ;;
	--concurrency) CONCURRENCY=$2; shift ;;
	--hz) HZ=$2; shift ;;
	--prefix) PREFIX=$2; shift ;;
	*) echo "usage: $0 [--rounds N] [--duration D] [--concurrency N] [--hz N] [--prefix NAME]" >&2; exit 2 ;;
	esac
	shift
done
WORK_NAME=scrape TOOLS="jq curl"
# shellcheck source=bench/lab.sh
. "$(dirname "$0")/lab.sh"
CTL=$WORK/control.sock
ip netns exec "$CONV_NS" "$BIN" run --listen "[::]:5124" --log-level warn \
	--allow-destinations 10.201.3.2/32 --rate-per-client 0 --max-sessions-per-client 100000 \
	--control "$CTL" >"$WORK/conv.log" 2>&1 &
PIDS+=($!)
wait_listen "$CONV_NS" 5124
for ((i = 0; i < 100; i++)); do
	[[ $(curl -sf --unix-socket "$CTL" http://converter/metrics 2>/dev/null) == *converter_sessions_converted_total* ]] && break
	sleep 0.05
done
((i < 100)) || { echo "no metrics on $CTL" >&2; exit 1; }

RESULTS=${RESULTS:-$WORK/results.jsonl} # RESULTS=FILE keeps the raw records
run() { # ARM ROUND
	local scraper=
	if [[ $1 == on ]]; then
		# One curl for the whole run: the scraper's own start-up cost
		# stays out of the measurement. Each scrape's status and time go
		# to stderr.
		curl -s --unix-socket "$CTL" --rate "$HZ/s" -w '%{stderr}%{http_code} %{time_total}\n' \
			"http://converter/metrics?n=[1-1000000]" >/dev/null 2>"$WORK/scrapes-$2.log" &
		scraper=$!
	fi
	out=$(cmd ip netns exec "$CLI" "$BIN" bench --via "$CONVERTER" --mptcp --mode connect \
		--duration "$DURATION" --concurrency "$CONCURRENCY" --json "$SERVER")
	local scrapes=0 slowest=0 median=0 failed=0
	if [[ -n $scraper ]]; then
		kill "$scraper"
		wait "$scraper" 2>/dev/null || true
		scrapes=$(wc -l <"$WORK/scrapes-$2.log")
		failed=$(awk '$1 != 200' "$WORK/scrapes-$2.log" | wc -l)
		slowest=$(awk '{ if ($2 > m) m = $2 } END { print m * 1000 + 0 }' "$WORK/scrapes-$2.log")
		median=$(awk '{ print $2 * 1000 }' "$WORK/scrapes-$2.log" | sort -n | awk '{ a[NR] = $1 } END { print (NR ? a[int((NR + 1) / 2)] : 0) }')
	fi
	jq -c --arg arm "$1" --argjson round "$2" --argjson scrapes "$scrapes" --argjson failed "$failed" \
		--argjson slowest "$slowest" --argjson median "$median" \
		'. + {arm: $arm, round: $round, scrapes: $scrapes, scrapes_failed: $failed, scrape_ms_median: $median, scrape_ms_max: $slowest}' <<<"$out" | tee -a "$RESULTS"
}
for ((r = 1; r <= ROUNDS; r++)); do
	if ((r % 2)); then run off "$r"; run on "$r"; else run on "$r"; run off "$r"; fi
done
echo
echo "## connection rate with and without a /metrics scraper at $HZ Hz (control socket), $ROUNDS interleaved round(s)"
echo "## connect mode, --duration $DURATION --concurrency $CONCURRENCY, MPTCP client leg, Convert message in the SYN; $(nproc) CPUs, kernel $(uname -r), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
jq -rs '
	def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
	def r3: . * 1000 | round / 1000;
	. as $all
	| def arm($a): [$all[] | select(.arm == $a)] | sort_by(.round);
	(arm("off") | map(.connections_per_second | round)) as $off
	| (arm("on") | map(.connections_per_second | round)) as $on
	| ([range(0; [$off, $on | length] | min)] | map($on[.] / $off[.] | r3)) as $ratios
	| "connections/s off: median \($off | median) (\($off | map(tostring) | join(" ")))",
	  "connections/s on:  median \($on | median) (\($on | map(tostring) | join(" ")))",
	  "ratio on/off per round: \($ratios | map(tostring) | join(" ")); median \($ratios | median | r3); ratio of medians \(($on | median) / ($off | median) | r3)",
	  "connect p99 us off \(arm("off") | map(.latency_us.p99) | median), on \(arm("on") | map(.latency_us.p99) | median)",
	  "errors off \(arm("off") | map(.errors) | add), on \(arm("on") | map(.errors) | add)",
	  "scrapes under load: \(arm("on") | map(.scrapes) | add) (\(arm("on") | map(.scrapes_failed) | add) failed), median \(arm("on") | map(.scrape_ms_median) | median | r3) ms, slowest \(arm("on") | map(.scrape_ms_max) | max) ms"
' "$RESULTS"

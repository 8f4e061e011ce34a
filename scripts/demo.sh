#!/usr/bin/env bash
# The demo: a namespace lab (a client with two paths, the converter, a
# server), a real transfer from the client through the converter over both
# paths, the session table while it runs, and the throughput. Everything is
# torn down on exit, also when interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-bin/converter}
PREFIX=${PREFIX:-cvdemo$$}
BYTES=${BYTES:-4G}
CLI=$PREFIX-cli CONV=$PREFIX-conv SRV=$PREFIX-srv
TMP=$(mktemp -d)
CONTROL=$TMP/control.sock
pids=()

cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	"$BIN" lab down --prefix "$PREFIX" >/dev/null 2>&1 || true
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'echo "interrupted"; exit 130' INT TERM

say() { printf '\n== %s\n' "$*"; }

say "lab $PREFIX: client (two paths) -> converter -> server"
"$BIN" lab up --prefix "$PREFIX" >/dev/null
"$BIN" lab status --prefix "$PREFIX" | sed 's/^/   /'

say "converter in $CONV listening on [::]:5124; bench server in $SRV on 10.201.3.2:9000"
ip netns exec "$CONV" "$BIN" run --listen '[::]:5124' --allow-destinations 10.201.0.0/16 --allow-destinations fd01::/16 --control "$CONTROL" --log-level warn \
	--metrics-listen 127.0.0.1:9464 &
pids+=($!)
ip netns exec "$SRV" "$BIN" bench --serve 10.201.3.2:9000 &
pids+=($!)
for _ in $(seq 50); do [ -S "$CONTROL" ] && break; sleep 0.1; done

say "transfer: $BYTES from the client through the converter (MPTCP client leg, Convert message in the SYN)"
ip netns exec "$CLI" "$BIN" bench --via 10.201.1.1:5124 --bytes "$BYTES" --json 10.201.3.2:9000 >"$TMP/result.json" &
bench=$!
pids+=($bench)
shown=0
while kill -0 "$bench" 2>/dev/null; do
	sleep 0.7
	if "$BIN" sessions --control "$CONTROL" >"$TMP/sessions.txt" 2>/dev/null && grep -q subflow "$TMP/sessions.txt"; then
		say "converter sessions (while the transfer runs)"
		cat "$TMP/sessions.txt"
		shown=$((shown + 1))
	fi
done
wait "$bench"

say "result"
cat "$TMP/result.json"
python3 - "$TMP/result.json" <<'PY' 2>/dev/null || true
import json, sys
r = json.load(open(sys.argv[1]))
print("throughput: %.2f Gbit/s (%d bytes in %.2f s)" % (r["bits_per_second"] / 1e9, r["bytes"], r["seconds"]))
PY
[ "$shown" -gt 0 ] || echo "(the transfer ended before the session table could be shown; try BYTES=16G)"

say "download: $BYTES from the server to the client (what phones mostly do; Convert message in the SYN, two subflows)"
ip netns exec "$CLI" "$BIN" bench --via 10.201.1.1:5124 --direction down --bytes "$BYTES" --json 10.201.3.2:9000 >"$TMP/down.json"
cat "$TMP/down.json"
python3 - "$TMP/down.json" <<'PY' 2>/dev/null || true
import json, sys
r = json.load(open(sys.argv[1]))
print("download: %.2f Gbit/s (%d bytes in %.2f s, %s subflows)" % (r["down"]["bits_per_second"] / 1e9, r["down"]["bytes"], r["down"]["seconds"], r.get("subflows")))
PY
say "the converter's TFO window clamp (kernel fault of MPTCP sockets accepted with SYN data; README, known kernel issues)"
"$BIN" bpf status --control "$CONTROL" --json 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); print("synwin counters:", d.get("synwin_counters"))' || true

say "metrics: a few lines of one scrape of /metrics (curl --unix-socket $CONTROL http://converter/metrics; --metrics-listen serves the same over HTTP)"
ip netns exec "$CONV" curl -s http://127.0.0.1:9464/metrics >"$TMP/metrics.txt" || curl -s --unix-socket "$CONTROL" http://converter/metrics >"$TMP/metrics.txt" || true
grep -E '^converter_(connections_accepted_total|sessions_converted_total|relayed_bytes_total|convert_syn_to_reply_seconds_(count|sum)|server_connect_seconds_count|session_subflows_(count|sum)|subflows_open|bpf_events_total\{program="synwin",event="clamped"\}|kernel_mptcp_events_total\{counter="MPJoinSynRx"\})' "$TMP/metrics.txt" | head -20 || echo "(no metrics read)"

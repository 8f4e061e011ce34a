#!/usr/bin/env bash
# bench/verify-first.sh: what --verify-client-first costs: the server leg
# waits for the client's handshake instead of starting at once (0-RTT).
# Extra arguments go to compare.sh.
exec "$(dirname "$0")/compare.sh" \
	--a verify-first "--verify-client-first" "" \
	--b zero-rtt "" "" "$@"

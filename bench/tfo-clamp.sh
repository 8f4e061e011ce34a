#!/usr/bin/env bash
# bench/tfo-clamp.sh: what the TFO window clamp (bpf/synwin.c) costs.
# A: the clamp on, the Convert message in the SYN (the real path);
# B: the clamp off, the message after the handshake (no TFO, so the kernel
#    fault cannot strike: the reference). Extra arguments go to compare.sh.
exec "$(dirname "$0")/compare.sh" \
	--a clamp-on "--tfo-window-clamp on" "--syn-data=true" \
	--b clamp-off-no-tfo "--tfo-window-clamp off" "--syn-data=false" "$@"

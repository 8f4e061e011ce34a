# Sourced by the comparison scripts (compare.sh, scrape.sh): root check,
# paths, a lab named $PREFIX with the bench server on $SERVER, cleanup
# on exit, and wait_listen. The caller sets PREFIX and WORK_NAME, and
# TOOLS (Debian packages it needs) before sourcing.
cmd() { echo "+ $*" >&2; "$@"; }
[[ $(id -u) == 0 ]] || { echo "needs root" >&2; exit 1; }
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN=$ROOT/bin/converter
CLI=$PREFIX-cli CONV_NS=$PREFIX-conv SRV=$PREFIX-srv
SERVER=10.201.3.2:7000 CONVERTER=10.201.1.1:5124
WORK=$(mktemp -d "/tmp/converter-$WORK_NAME.XXXXXX")
PIDS=()
cleanup() {
	set +e
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
	"$BIN" lab down --prefix "$PREFIX" >/dev/null 2>&1
	rm -rf "$WORK"
}
trap cleanup EXIT
for tool in ${TOOLS:-}; do
	command -v "$tool" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null; }
done
CGO_ENABLED=0 cmd go build -o bin/converter ./cmd/converter
cmd "$BIN" lab up --prefix "$PREFIX" >/dev/null
wait_listen() { # NS PORT
	for ((i = 0; i < 200; i++)); do
		[[ -n $(ip netns exec "$1" ss -Hltn "sport = :$2") ]] && return 0
		sleep 0.05
	done
	echo "nothing listens on $2 in $1" >&2
	exit 1
}
ip netns exec "$SRV" "$BIN" bench --serve "$SERVER" >"$WORK/server.log" 2>&1 &
PIDS+=($!)
wait_listen "$SRV" 7000

#!/usr/bin/env bash
# kernel/check.sh: build a kernel with and without kernel/patches/*.patch,
# boot each under qemu (TCG) with the host's / as a read-only virtio-9p root,
# run kernel/repro in the guest and print the stall counts per kernel.
# Exits non-zero if the patched kernel stalls (see verdict below) or a run fails.
#
# Environment:
#   KERNEL_SRC  kernel source tree (default: Debian's linux-source-6.12,
#               unpacked under $WORKDIR/src)
#   WORKDIR     where copies, builds and results go (default /var/tmp/converter-kernel)
#   N           downloads per boot (default 20)
#   SIZE        bytes per download (default 4194304)
#   RUNS        boots per kernel (default 1)
#   CONTROL     1 (default): each boot first runs the reproducer with -no-tfo
#   STALL       stall threshold in the guest (default 1.5s: under TCG a
#               healthy 4 MiB download already takes 0.2-1 s, against
#               ~5 ms on the host, where the reproducer's default is 0.5s)
#   JOBS        make -j (default nproc)
#   SMP, MEM    guest CPUs (default 1: the minimal config, without ACPI,
#               brings up one CPU anyway) and MiB (default 1024)
#   QEMU_TIMEOUT seconds per boot (default 1800)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
WORKDIR=${WORKDIR:-/var/tmp/converter-kernel}
N=${N:-20}
SIZE=${SIZE:-4194304}
RUNS=${RUNS:-1}
CONTROL=${CONTROL:-1}
STALL=${STALL:-1.5s}
JOBS=${JOBS:-$(nproc)}
SMP=${SMP:-1}
MEM=${MEM:-1024}
QEMU_TIMEOUT=${QEMU_TIMEOUT:-1800}
GO=${GO:-go}

log() { printf '%s kernel-check: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

[ "$(id -u)" = 0 ] || die "run as root (apt, qemu with 9p of /)"
mkdir -p "$WORKDIR"
WORKDIR=$(cd "$WORKDIR" && pwd)

# --- packages ---------------------------------------------------------------
pkgs="qemu-system-x86 build-essential flex bison bc libelf-dev libssl-dev cpio iproute2 patch"
[ -n "${KERNEL_SRC:-}" ] || pkgs="$pkgs linux-source-6.12"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
	log "installing:$missing"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

# --- source -----------------------------------------------------------------
if [ -z "${KERNEL_SRC:-}" ]; then
	tarball=$(ls /usr/src/linux-source-6.12.tar.* 2>/dev/null | head -n1)
	[ -n "$tarball" ] || die "no /usr/src/linux-source-6.12.tar.*"
	KERNEL_SRC=$WORKDIR/src/linux-source-6.12
	if [ ! -f "$KERNEL_SRC/.unpacked" ]; then
		log "unpacking $tarball"
		rm -rf "$KERNEL_SRC"; mkdir -p "$WORKDIR/src"
		tar -xf "$tarball" -C "$WORKDIR/src"
		touch "$KERNEL_SRC/.unpacked"
	fi
fi
KERNEL_SRC=$(cd "$KERNEL_SRC" && pwd)
[ -f "$KERNEL_SRC/net/mptcp/fastopen.c" ] || die "$KERNEL_SRC: no net/mptcp/fastopen.c"
KVER=$(make -s -C "$KERNEL_SRC" kernelversion 2>/dev/null | tail -n1)
[ -n "$KVER" ] || die "cannot read the kernel version of $KERNEL_SRC"
TOP=$WORKDIR/$KVER
mkdir -p "$TOP"
log "kernel $KVER from $KERNEL_SRC, work dir $TOP"

# The patched copy shares files with KERNEL_SRC through hard links; the files
# the patches touch are copied first so that KERNEL_SRC stays pristine.
PATCHES=$(ls "$HERE"/patches/*.patch)
psum=$(cat $PATCHES | sha256sum | cut -c1-16)
PSRC=$TOP/src-patched
if [ "$(cat "$PSRC/.patches" 2>/dev/null)" != "$psum" ]; then
	log "preparing the patched copy"
	rm -rf "$PSRC"
	cp -al "$KERNEL_SRC" "$PSRC"
	for f in $(sed -n 's|^+++ b/||p' $PATCHES | sort -u); do
		[ -f "$PSRC/$f" ] && cp --remove-destination "$KERNEL_SRC/$f" "$PSRC/$f"
	done
	for p in $PATCHES; do
		log "applying $(basename "$p")"
		patch -d "$PSRC" -p1 --forward --no-backup-if-mismatch < "$p" >&2 \
			|| die "$(basename "$p") does not apply to $KVER"
	done
	echo "$psum" > "$PSRC/.patches"
fi

# --- kernels ----------------------------------------------------------------
build() { # build NAME SRC
	local name=$1 src=$2 out=$TOP/build-$1
	mkdir -p "$out"
	if [ ! -f "$out/.config" ] || ! cmp -s "$HERE/config.fragment" "$out/.fragment"; then
		log "$name: configuring (tinyconfig + kernel/config.fragment)"
		make -s -C "$src" O="$out" ARCH=x86_64 tinyconfig >/dev/null
		(cd "$out" && "$src/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" "$HERE/config.fragment" >/dev/null)
		make -s -C "$src" O="$out" ARCH=x86_64 olddefconfig >/dev/null
		for opt in $(sed -n 's/^\(CONFIG_[A-Z0-9_]*\)=y$/\1/p' "$HERE/config.fragment"); do
			grep -qx "$opt=y" "$out/.config" || die "$name: $opt=y did not stick (dependency missing?)"
		done
		cp "$HERE/config.fragment" "$out/.fragment"
	fi
	log "$name: building bzImage (make -j$JOBS, nice)"
	local t0=$SECONDS
	nice make -s -C "$src" O="$out" ARCH=x86_64 -j"$JOBS" bzImage >"$out/build.log" 2>&1 \
		|| { tail -n 30 "$out/build.log" >&2; die "$name: build failed, see $out/build.log"; }
	log "$name: built in $((SECONDS - t0)) s"
}
build unpatched "$KERNEL_SRC"
build patched "$PSRC"

# --- reproducer -------------------------------------------------------------
log "building the reproducer"
(cd "$REPO" && CGO_ENABLED=0 "$GO" build -o "$TOP/repro" ./kernel/repro)

# --- boots ------------------------------------------------------------------
boot() { # boot NAME RUN -> prints the summary line
	local name=$1 run=$2 res=$TOP/results-$1-$2
	rm -rf "$res"; mkdir -p "$res"
	cat > "$res/env" <<ENV
REPRO='$TOP/repro'
REPRO_ARGS='-n $N -size $SIZE -stall $STALL'
ENV
	[ "$CONTROL" = 1 ] && echo "REPRO_CONTROL_ARGS='-n $N -size $SIZE -stall $STALL -no-tfo'" >> "$res/env"
	log "$name run $run: booting $TOP/build-$name/arch/x86/boot/bzImage (TCG, $SMP CPUs)"
	local t0=$SECONDS rc=0
	timeout "$QEMU_TIMEOUT" qemu-system-x86_64 -accel tcg,thread=multi -smp "$SMP" -m "$MEM" \
		-display none -monitor none -serial "file:$res/console.log" -no-reboot \
		-kernel "$TOP/build-$name/arch/x86/boot/bzImage" \
		-append "console=ttyS0 root=hostroot rootfstype=9p rootflags=trans=virtio,version=9p2000.L,msize=262144 ro init=$HERE/vm-init.sh panic=-1" \
		-fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap \
		-device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
		-fsdev local,id=results,path="$res",security_model=none \
		-device virtio-9p-pci,fsdev=results,mount_tag=results \
		</dev/null >"$res/qemu.log" 2>&1 || rc=$?
	log "$name run $run: qemu exited ($rc) after $((SECONDS - t0)) s"
	if [ ! -f "$res/output.txt" ] || ! grep -q '^stalled ' "$res/output.txt"; then
		log "$name run $run: no result; console tail:"
		tail -n 20 "$res/console.log" >&2 || true
		echo "$name ($KVER) run $run: FAILED (see $res)"
		return 1
	fi
	local kv; kv=$(cat "$res/uname" 2>/dev/null || echo "$KVER")
	echo "$name ($kv) run $run: $(grep '^stalled ' "$res/output.txt")"
	if [ -f "$res/output-control.txt" ]; then
		echo "  control, no TFO ($kv) run $run: $(grep '^stalled ' "$res/output-control.txt" || echo 'no result')"
	fi
}

# verdict RESULTS: the patched kernel passes when its TFO downloads show no
# out-of-window drop (MPTcpExtNoDSSInWindow, the fault's signature: every
# download on an unpatched kernel has some) and do not stall more often than
# the control of the same boot (under TCG on a busy host, a download now and
# then takes over STALL for lack of CPU, TFO or not, without any drop).
verdict() {
	local out=$1/output.txt ctl=$1/output-control.txt st drops cst=0
	st=$(sed -n 's/^stalled \([0-9]*\)\/.*/\1/p' "$out" 2>/dev/null)
	drops=$(sed -n 's/^stalled .*MPTcpExtNoDSSInWindow +\([0-9]*\) in .*/\1/p' "$out" 2>/dev/null)
	[ -f "$ctl" ] && cst=$(sed -n 's/^stalled \([0-9]*\)\/.*/\1/p' "$ctl")
	[ -n "$st" ] && [ -n "$drops" ] || { log "verdict: no result in $out"; return 1; }
	if [ "$drops" -gt 0 ]; then log "verdict: patched kernel: $drops out-of-window drops"; return 1; fi
	if [ "$st" -gt "${cst:-0}" ]; then log "verdict: patched kernel: $st stalls against ${cst:-0} in the control"; return 1; fi
	if [ "$st" -gt 0 ]; then log "verdict: $st slow download(s) without any drop, as many as the control's: attributed to the machine"; fi
	return 0
}

fail=0 summary=""
for name in unpatched patched; do
	for run in $(seq 1 "$RUNS"); do
		line=$(boot "$name" "$run") || fail=1
		summary="$summary$line"$'\n'
		printf '%s\n' "$line"
		[ "$name" = patched ] && ! verdict "$TOP/results-$name-$run" && fail=1
		if [ "$name" = unpatched ] && printf '%s' "$line" | grep -q '^unpatched .*: stalled 0/'; then
			log "note: the unpatched kernel did not stall: the fault was not reproduced"
		fi
	done
done
echo "---- $KVER, $N downloads of $SIZE bytes per boot (results under $TOP)"
printf '%s' "$summary"
exit $fail

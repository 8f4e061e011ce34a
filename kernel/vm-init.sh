#!/bin/sh
# kernel/vm-init.sh: init (PID 1) of the test guest started by kernel/check.sh.
# The root is the host's / over virtio-9p, read-only; the results share
# (9p tag "results") holds env (REPRO, REPRO_ARGS, optionally
# REPRO_CONTROL_ARGS) and receives the output.
# Powers the guest off at the end (reboot via sysrq; qemu runs -no-reboot).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /tmp/results
if mount -t 9p -o trans=virtio,version=9p2000.L results /tmp/results; then
	. /tmp/results/env
	uname -r > /tmp/results/uname
	# The control (no TFO) runs first, so that connections the TFO run
	# leaves behind (stalled, then abandoned) cannot slow it down.
	if [ -n "${REPRO_CONTROL_ARGS:-}" ]; then
		echo "vm-init: running $REPRO $REPRO_CONTROL_ARGS" > /dev/console
		# shellcheck disable=SC2086
		"$REPRO" $REPRO_CONTROL_ARGS > /tmp/results/output-control.txt 2>&1
		cat /tmp/results/output-control.txt > /dev/console
	fi
	echo "vm-init: running $REPRO $REPRO_ARGS" > /dev/console
	# shellcheck disable=SC2086
	"$REPRO" $REPRO_ARGS > /tmp/results/output.txt 2>&1
	echo $? > /tmp/results/rc
	cat /tmp/results/output.txt > /dev/console
	sync
	umount /tmp/results
else
	echo "vm-init: cannot mount the results share" > /dev/console
fi
echo b > /proc/sysrq-trigger
sleep 5

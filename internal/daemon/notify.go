package daemon

import (
	"fmt"
	"log/slog"

	sd "github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// notifier tells systemd (Type=notify, NOTIFY_SOCKET) where the daemon
// is in its life; without NOTIFY_SOCKET every call does nothing.
type notifier struct{ log *slog.Logger }

func (n notifier) send(state string) {
	if _, err := sd.SdNotify(false, state); err != nil {
		n.log.Warn("tell systemd", "state", state, "error", err.Error())
	}
}

// ready: listeners, steering and addressing are up.
func (n notifier) ready(status string) { n.send("READY=1\nSTATUS=" + status) }

// reloading: a reload began (MONOTONIC_USEC, as Type=notify-reload wants).
func (n notifier) reloading() {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	n.send(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", ts.Nano()/1000))
}

// stopping: the drain began.
func (n notifier) stopping() { n.send("STOPPING=1\nSTATUS=draining") }

package tfowindow

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Mode is how the daemon chooses to clamp Convert SYN windows: auto (where
// Probe finds the fault), on, or off.
type Mode string

const (
	ModeAuto Mode = "auto"
	ModeOn   Mode = "on"
	ModeOff  Mode = "off"
)

// ParseMode checks a mode given on the command line.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeAuto, ModeOn, ModeOff:
		return m, nil
	}
	return "", fmt.Errorf("%q: want auto, on or off", s)
}

// probeTimeout bounds one probe; it takes about 0.3 s.
const probeTimeout = 5 * time.Second

// Decision is whether to work around the fault, and why.
type Decision struct {
	On      bool
	Reason  string
	Verdict *Verdict // the probe's reading, when it ran
}

// Decide resolves mode for the running kernel. In auto mode a probe that
// cannot run turns the workaround on: it costs nothing where the kernel
// is right, and the fault costs whole seconds per download.
func Decide(ctx context.Context, mode Mode) Decision {
	if mode == ModeOff {
		return Decision{Reason: "turned off"}
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	v, err := Probe(ctx, nil)
	switch {
	case mode == ModeOn:
		d := Decision{On: true, Reason: "asked for"}
		if err == nil {
			d.Verdict = &v
		}
		return d
	case errors.Is(err, ErrNoFastOpen):
		return Decision{Reason: "the kernel refuses data in MPTCP SYNs: nothing to work around"}
	case err != nil:
		return Decision{On: true, Reason: "probe failed, working around to be safe: " + err.Error()}
	case v.Faulty:
		return Decision{On: true, Reason: "the kernel inflates the send window of MPTCP sockets accepted with SYN data", Verdict: &v}
	}
	return Decision{Reason: "the kernel keeps the send window of MPTCP sockets accepted with SYN data right", Verdict: &v}
}

// Verify runs the probe again with setup in place (the workaround on the
// private namespace's lo) and reports whether it still finds the fault.
func Verify(ctx context.Context, setup Setup) (Verdict, error) {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	v, err := Probe(ctx, setup)
	if err != nil {
		return v, err
	}
	if v.Faulty {
		return v, fmt.Errorf("the fault persists with the workaround in place: %v", v)
	}
	return v, nil
}

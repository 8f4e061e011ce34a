package tfowindow

import (
	"context"
	"testing"
	"time"

	"github.com/convert-tc/converter/internal/labtest"
)

func TestParseMode(t *testing.T) {
	for _, s := range []string{"auto", "on", "off"} {
		if m, err := ParseMode(s); err != nil || string(m) != s {
			t.Errorf("ParseMode(%q) = %q, %v", s, m, err)
		}
	}
	for _, s := range []string{"", "yes", "AUTO"} {
		if _, err := ParseMode(s); err == nil {
			t.Errorf("ParseMode(%q) accepted", s)
		}
	}
}

func TestDecideOffProbesNothing(t *testing.T) {
	d := Decide(context.Background(), ModeOff)
	if d.On || d.Verdict != nil {
		t.Errorf("off: %+v", d)
	}
}

// TestProbe runs the probe on this kernel. Whatever the kernel, the
// control run must stop near the receiver's window and the verdict must
// follow the rule; on the kernels this project runs on (6.18) the fault
// is there, which the log shows.
func TestProbe(t *testing.T) {
	labtest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	v, err := Probe(ctx, nil)
	if err != nil {
		t.Fatalf("probe: %v", err)
	}
	t.Logf("%v", v)
	if v.SentWithout == 0 || v.SentWithout > 1<<20 {
		t.Errorf("the control run handed %d bytes to its subflow: want a receiver's window, not 0 and not megabytes", v.SentWithout)
	}
	if v.SentWithSYNData == 0 {
		t.Errorf("the SYN-data run sent nothing")
	}
	if want := v.SentWithSYNData > 2*v.SentWithout+64<<10; v.Faulty != want {
		t.Errorf("faulty=%v, want %v", v.Faulty, want)
	}
	// The probe lives in a namespace of its own: this process's is as
	// it was, and a second probe gives the same verdict.
	v2, err := Probe(ctx, nil)
	if err != nil || v2.Faulty != v.Faulty {
		t.Errorf("second probe: %v, %v; first %v", v2, err, v)
	}
}

func TestProbeSetupRunsInItsNamespace(t *testing.T) {
	labtest.Require(t)
	ran, undone := 0, 0
	_, err := Probe(context.Background(), func(lo int) (func(), error) {
		ran++
		if lo <= 0 {
			t.Errorf("setup got ifindex %d for lo", lo)
		}
		return func() { undone++ }, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if ran != 1 || undone != 1 {
		t.Errorf("setup ran %d times, undo %d times; want once each", ran, undone)
	}
}

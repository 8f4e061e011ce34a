package main

import (
	"testing"
)

// A few hundred sessions give a positive figure of the right magnitude:
// more than nothing, less than a goroutine stack's worth (without the
// race detector, which shadows every allocation).
func TestMeasure(t *testing.T) {
	kib, err := measure(t.Context(), 300)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%.2f KiB per session", kib)
	if kib <= 0 {
		t.Fatalf("%.2f KiB per session for two idle sockets: the measurement saw no growth", kib)
	}
	if !raceEnabled && kib > 8 {
		t.Fatalf("%.2f KiB per session for two idle sockets", kib)
	}
}

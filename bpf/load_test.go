package bpf

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/convert-tc/converter/internal/labtest"
)

func TestTokenKey(t *testing.T) {
	// MP_JOIN carries token 0x11223344 as bytes 11 22 33 44; the key is the
	// u32 with that memory layout.
	key := tokenKey(0x11223344)
	b := [4]byte{byte(key), byte(key >> 8), byte(key >> 16), byte(key >> 24)}
	if isBigEndian() {
		b = [4]byte{byte(key >> 24), byte(key >> 16), byte(key >> 8), byte(key)}
	}
	if b != [4]byte{0x11, 0x22, 0x33, 0x44} {
		t.Fatalf("tokenKey(0x11223344) = %#08x, memory % x, want 11 22 33 44", key, b)
	}
}

func isBigEndian() bool { return binary.NativeEndian.Uint16([]byte{0, 1}) == 1 }

func TestConfigRejected(t *testing.T) {
	for _, cfg := range []SteeringConfig{{Port: 5124}, {Mark: 1}} {
		if s, err := LoadSteering(cfg); err == nil {
			s.Close()
			t.Errorf("LoadSteering(%+v) succeeded, want an error", cfg)
		}
	}
}

func TestLoad(t *testing.T) {
	labtest.Require(t)
	if err := Supported(); err != nil {
		t.Fatalf("Supported: %v", err)
	}
	s, err := LoadSteering(SteeringConfig{Mark: 7, Port: 5124, MaxTokens: 128})
	if err != nil {
		t.Fatalf("LoadSteering: %+v", err)
	}
	c, err := LoadSynAckCapture()
	if err != nil {
		s.Close()
		t.Fatalf("LoadSynAckCapture: %+v", err)
	}

	for name, p := range map[string]*ebpf.Program{"steer": s.objs.Steer, "synack": c.objs.Synack} {
		if info, err := p.Info(); err == nil {
			n, _ := info.VerifiedInstructions()
			t.Logf("%s: %d instructions verified", name, n)
		}
	}

	st, err := s.Status()
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if st.ProgramID == 0 || len(st.Links) != 0 || len(st.Maps) != 2 || st.Maps[0].MaxEntries != 128 || st.Maps[0].Entries != 0 ||
		st.Maps[1].Name != "listener_ports" || st.Maps[1].MaxEntries != 65536 || st.Maps[1].Entries != 0 {
		t.Errorf("fresh steering status = %+v", st)
	}
	for _, tok := range []uint32{1, 0xdeadbeef, 0x11223344} {
		if err := s.AddToken(tok); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.RemoveToken(1); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveToken(1); err != nil {
		t.Errorf("removing an absent token: %v", err)
	}
	if st, _ := s.Status(); st.Maps[0].Entries != 2 {
		t.Errorf("tokens after 3 adds and 1 remove: %+v", st.Maps)
	}
	for _, port := range []uint16{80, 443, 80, 65535} {
		if err := s.AddListenerPort(port); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddListenerPort(0); err == nil {
		t.Error("AddListenerPort(0) succeeded, want an error")
	}
	if err := s.RemoveListenerPort(443); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveListenerPort(443); err != nil {
		t.Errorf("removing an absent listener port: %v", err)
	}
	var v uint8
	if err := s.objs.ListenerPorts.Lookup(uint16(80), &v); err != nil || v != 1 {
		t.Errorf("listener_ports[80] = %d, %v; want 1", v, err)
	}
	if st, _ := s.Status(); st.Maps[1].Entries != 2 {
		t.Errorf("listener ports after adding 80, 443, 80, 65535 and removing 443: %+v", st.Maps)
	}
	counters, err := s.Counters()
	if err != nil || len(counters) != 7 {
		t.Errorf("Counters = %v, %v", counters, err)
	}
	for name, v := range counters {
		if v != 0 {
			t.Errorf("fresh counter %s = %d", name, v)
		}
	}
	if cs, err := c.Counters(); err != nil || len(cs) != 3 {
		t.Errorf("SynAckCapture.Counters = %v, %v", cs, err)
	}

	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := s.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("second Close = %v, want ErrClosed", err)
	}
	if err := s.Attach(1); !errors.Is(err, ErrClosed) {
		t.Errorf("Attach after Close = %v, want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// TestTokenMapSize loads the steering program with the token map sized for
// the daemon's default session limit and wants exactly that many tokens to
// fit: the engine holds one per session.
func TestTokenMapSize(t *testing.T) {
	labtest.Require(t)
	const n = 100000 // engine.Config's default MaxSessions
	s, err := LoadSteering(SteeringConfig{Mark: 7, Port: 5124, MaxTokens: n})
	if err != nil {
		t.Fatalf("LoadSteering: %+v", err)
	}
	defer s.Close()
	if got := s.objs.Tokens.MaxEntries(); got != n {
		t.Fatalf("tokens map max_entries %d, want %d", got, n)
	}
	for i := range uint32(n) {
		if err := s.AddToken(0x9e3779b9 * (i + 1)); err != nil { // distinct: odd multiplier
			t.Fatalf("token %d of %d: %v", i+1, n, err)
		}
	}
	if err := s.AddToken(0); err == nil {
		t.Errorf("token %d in a map sized for %d: accepted", n+1, n)
	} else {
		t.Logf("token %d refused: %v", n+1, err)
	}
	if err := s.RemoveToken(0x9e3779b9); err != nil {
		t.Fatal(err)
	}
	if err := s.AddToken(0); err != nil {
		t.Errorf("a token after one was removed: %v", err)
	}
	if st, err := s.Status(); err != nil || st.Maps[0].Entries != n || st.Maps[0].MaxEntries != n {
		t.Errorf("status %+v, %v: want %d of %d tokens", st.Maps, err, n, n)
	}
}

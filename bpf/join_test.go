package bpf

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/convert-tc/converter/lab"
	"github.com/convert-tc/converter/sockinfo"
)

// TestSteeringJoin checks the token byte order end to end: a client's
// MP_JOIN SYN, sent to the original destination on its second path, is
// steered to the per-port transparent listener only when the token was
// added with AddToken, and the converter's connection gains the subflow.
// The per-port listener is registered with AddListenerPort, as the engine
// does; without that, no SYN to its port would reach it.
// The control run stores the token unconverted (host order) and the join
// must leak past the converter instead.
func TestSteeringJoin(t *testing.T) {
	e := newSteerEnv(t)
	ad := e.lab.Addr
	for _, tc := range []struct {
		name          string
		network       string
		server, path2 netip.Addr
	}{
		{"ipv4", "tcp4", ad.ServerV4, ad.ClientPath2V4},
		{"ipv6", "tcp6", ad.ServerV6, ad.ClientPath2V6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Joins are only accepted on the connection's own local port.
			ln := e.transparentListener(t, tc.network, convertPort)
			if err := e.s.AddListenerPort(convertPort); err != nil {
				t.Fatal(err)
			}
			defer e.s.RemoveListenerPort(convertPort)
			dst := netip.AddrPortFrom(tc.server, convertPort)

			wrongOrder := func(token uint32) error { return e.s.objs.Tokens.Put(token, uint8(1)) }
			subflows, d := e.join(t, ln, dst, tc.path2, wrongOrder)
			t.Logf("counters with the token in host order: %v", d)
			// The leaked join SYN counts as passed.
			if subflows != 1 || d["joins_steered"] != 0 || d["passed"] == 0 {
				t.Errorf("token stored in host order: %d subflows, counters %v; want the join SYN passed, not steered", subflows, d)
			}
			subflows, d = e.join(t, ln, dst, tc.path2, e.s.AddToken)
			t.Logf("counters for a Convert connection and its join: %v", d)
			if subflows != 2 || d["joins_steered"] != 1 || d["steered"] != 2 {
				t.Errorf("AddToken: %d subflows, counters %v; want 2 subflows, steered 2, joins_steered 1", subflows, d)
			}
		})
	}
}

// join opens a Convert connection to dst, registers its token with add,
// lets the client join from path2 and returns the converter's subflow count
// and the counters' change.
func (e *steerEnv) join(t *testing.T, ln *net.TCPListener, dst netip.AddrPort, path2 netip.Addr, add func(uint32) error) (int, map[string]uint64) {
	t.Helper()
	before := e.counters(t)
	c := e.dialClient(t, dst, convertMessage(dst, "join"))
	defer c.Close()
	conv := acceptWithin(t, ln, dialDeadline)
	if conv == nil {
		t.Fatalf("converter accepted nothing; counters %v", delta(e.counters(t), before))
	}
	defer conv.Close()
	info, err := sockinfo.GetMPTCPInfo(conv)
	if err != nil {
		t.Fatalf("MPTCP_INFO: %v", err)
	}
	if err := add(info.Token); err != nil {
		t.Fatal(err)
	}
	defer e.s.RemoveToken(info.Token)
	defer e.s.objs.Tokens.Delete(info.Token) // the control's unconverted key
	ctx, cancel := context.WithTimeout(context.Background(), dialDeadline)
	defer cancel()
	if err := sockinfo.WaitEstablished(ctx, conv); err != nil {
		t.Fatal(err)
	}
	// The client's path manager opens subflows only once its connection
	// is fully established: when data from the converter has arrived.
	if _, err := conv.Write([]byte("ok")); err != nil {
		t.Fatal(err)
	}
	readN(t, c, 2)

	// Only now does the client open its second subflow: the token is in
	// the map before the join SYN leaves, with no race.
	run(t, "ip", "-n", e.lab.Client, "mptcp", "endpoint", "add", path2.String(), "dev", lab.IfClientPath2, "subflow")
	defer run(t, "ip", "-n", e.lab.Client, "mptcp", "endpoint", "flush")

	// A join that is steered completes within a few RTTs; one that leaks
	// is reset by the server namespace at once. Wait for either.
	subflows := 1
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		subs, err := sockinfo.GetSubflows(conv)
		if err != nil {
			t.Fatalf("subflows: %v", err)
		}
		if subflows = len(subs); subflows == 2 {
			if got := subs[1].Remote.Addr().Unmap(); got != path2 {
				t.Errorf("second subflow from %s, want %s", got, path2)
			}
			if got := subs[1].Local.Addr().Unmap(); got != dst.Addr() {
				t.Errorf("second subflow to %s, want the original destination %s", got, dst.Addr())
			}
			break
		}
	}
	return subflows, delta(e.counters(t), before)
}

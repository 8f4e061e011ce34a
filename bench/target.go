package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/convert-tc/converter/client"
)

// Target says where the generator's connections go.
type Target struct {
	// Dest is the bench server, HOST:PORT. Through a converter it must be
	// an IP literal (it goes in the Connect TLV); through a proxy it is
	// only informational.
	Dest string
	// Via is the converter's address; when valid, every connection is a
	// Convert connection: the Convert message and the first bytes ride in
	// the SYN (TCP Fast Open, no cookie).
	Via netip.AddrPort
	// Proxy is the address of a TCP proxy (e.g. HAProxy) that forwards to
	// Dest; connections are plain TCP to it.
	Proxy string
	// MPTCP opens the first leg (to the converter, the proxy or Dest) with
	// Multipath TCP.
	MPTCP bool
	// AfterHandshake, through a converter, sends the Convert message and
	// the first bytes right after the handshake instead of in the SYN.
	// Other routes always send their first bytes after the handshake.
	AfterHandshake bool
}

// Route names how connections reach the server: "direct", "proxy" or
// "via".
func (t Target) Route() string {
	switch {
	case t.Via.IsValid():
		return "via"
	case t.Proxy != "":
		return "proxy"
	default:
		return "direct"
	}
}

// Transport is "mptcp" or "tcp", for the first leg.
func (t Target) Transport() string {
	if t.MPTCP {
		return "mptcp"
	}
	return "tcp"
}

// synData is, through a converter, whether the first bytes ride in the
// SYN; nil for other routes.
func (t Target) synData() *bool {
	if !t.Via.IsValid() {
		return nil
	}
	in := !t.AfterHandshake
	return &in
}

// dialFunc opens one connection; early is sent first (in the SYN through a
// converter unless AfterHandshake, right after the handshake otherwise).
type dialFunc func(ctx context.Context, early []byte) (*net.TCPConn, error)

// dialer checks t and returns the function that opens its connections.
func (t Target) dialer() (dialFunc, error) {
	if t.Dest == "" {
		return nil, errors.New("no destination")
	}
	if t.Via.IsValid() {
		if t.Proxy != "" {
			return nil, errors.New("a converter and a proxy at once")
		}
		dest, err := netip.ParseAddrPort(t.Dest)
		if err != nil {
			return nil, fmt.Errorf("destination %q: through a converter it must be IP:PORT: %w", t.Dest, err)
		}
		opts := client.Options{Via: t.Via, Dest: dest, MPTCP: t.MPTCP, AfterHandshake: t.AfterHandshake}
		return func(ctx context.Context, early []byte) (*net.TCPConn, error) {
			c, err := client.Dial(ctx, opts, early)
			if err != nil {
				return nil, err
			}
			return c.TCPConn, nil
		}, nil
	}
	addr := t.Dest
	if t.Proxy != "" {
		addr = t.Proxy
	}
	var d net.Dialer
	d.SetMultipathTCP(t.MPTCP)
	return func(ctx context.Context, early []byte) (*net.TCPConn, error) {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		tc := c.(*net.TCPConn)
		if len(early) > 0 {
			if _, err := tc.Write(early); err != nil {
				tc.Close()
				return nil, err
			}
		}
		return tc, nil
	}, nil
}

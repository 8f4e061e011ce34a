package engine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/convert-tc/converter/client"
	"github.com/convert-tc/converter/cookie"
	sessions "github.com/convert-tc/converter/session"
	"github.com/convert-tc/converter/tlv"
	"github.com/convert-tc/converter/tlv/tlvtest"
)

// The engine in-process on loopback, no root: it takes a listener and a
// dialer from the test. Destinations are documentation addresses opened
// with AllowDestinations; the test dialer maps them to loopback servers.

// loop is one engine on 127.0.0.1 and the servers it dials.
type loop struct {
	t      *testing.T
	srv    *Server
	via    netip.AddrPort
	dialTo map[netip.AddrPort]func(ctx context.Context, early []byte) (*net.TCPConn, error)
	stop   func() error // stops Serve (once) and returns its error
}

func newLoop(t *testing.T, mod func(*Config)) *loop {
	t.Helper()
	l, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	lp := &loop{t: t, via: l.Addr().(*net.TCPAddr).AddrPort(), dialTo: map[netip.AddrPort]func(context.Context, []byte) (*net.TCPConn, error){}}
	cfg := Config{
		Listeners:         []*net.TCPListener{l},
		AllowDestinations: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")},
		HandshakeTimeout:  2 * time.Second,
		DrainTimeout:      200 * time.Millisecond,
		ShutdownDrain:     -1,
		Dial: func(ctx context.Context, dest netip.AddrPort, early []byte) (*net.TCPConn, error) {
			d, ok := lp.dialTo[dest]
			if !ok {
				return nil, syscall.ECONNREFUSED
			}
			return d(ctx, early)
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Listen(t.Context()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	var once sync.Once
	var serveErr error
	lp.stop = func() error {
		once.Do(func() {
			cancel()
			serveErr = <-done
		})
		return serveErr
	}
	t.Cleanup(func() {
		if err := lp.stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	lp.srv = s
	return lp
}

// server starts a loopback server for dest running fn on each connection.
func (lp *loop) server(dest string, fn func(*net.TCPConn)) netip.AddrPort {
	lp.t.Helper()
	l, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		lp.t.Fatal(err)
	}
	lp.t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.AcceptTCP()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fn(c)
			}()
		}
	}()
	d := netip.MustParseAddrPort(dest)
	lp.dialTo[d] = func(ctx context.Context, early []byte) (*net.TCPConn, error) {
		var dl net.Dialer
		c, err := dl.DialContext(ctx, "tcp4", l.Addr().String())
		if err != nil {
			return nil, err
		}
		tc := c.(*net.TCPConn)
		if _, err := tc.Write(early); err != nil {
			tc.Close()
			return nil, err
		}
		return tc, nil
	}
	return d
}

func (lp *loop) convert(o client.Options, early []byte) (*client.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	o.Via = lp.via
	c, err := client.Dial(ctx, o, early)
	if c != nil {
		lp.t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// raw sends payload as the client's first bytes and returns all the
// converter answers until it closes.
func (lp *loop) raw(payload []byte) ([]byte, error) {
	c, err := net.DialTCP("tcp4", nil, net.TCPAddrFromAddrPort(lp.via))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.Write(payload)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	return io.ReadAll(c)
}

func echoConn(c *net.TCPConn) { io.Copy(c, c); c.CloseWrite() }

func errCode(t *testing.T, err error) tlv.ErrorCode {
	t.Helper()
	var ce *client.Error
	if !errors.As(err, &ce) {
		t.Fatalf("want an Error TLV, got %v", err)
	}
	return ce.Code
}

func TestLoopbackConversion(t *testing.T) {
	lp := newLoop(t, nil)
	dest := lp.server("203.0.113.1:80", echoConn)
	c, err := lp.convert(client.Options{Dest: dest}, []byte("early "))
	if err != nil {
		t.Fatal(err)
	}
	// The reply: header plus an Extended TCP Header TLV, nothing else.
	var m tlv.Message
	if n, err := tlv.ParseReply(c.Reply, &m); err != nil || n != len(c.Reply) {
		t.Fatalf("reply %x: %v", c.Reply, err)
	}
	if _, ok := m.ExtendedTCPHeader(); !ok {
		t.Errorf("reply %x without Extended TCP Header", c.Reply)
	}
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	go func() { c.Write(payload); c.CloseWrite() }()
	got, err := io.ReadAll(c)
	want := append([]byte("early "), payload...)
	if err != nil || sha256.Sum256(got) != sha256.Sum256(want) {
		t.Fatalf("echo: %d of %d bytes, %v", len(got), len(want), err)
	}
}

// TestLoopbackVectors sends every request vector of the protocol and
// checks the converter's answer byte for byte (the codec decides these
// refusals: codes 0, 1, 2 and 33, resets and silent aborts).
func TestLoopbackVectors(t *testing.T) {
	lp := newLoop(t, func(c *Config) {
		// The vectors' servers live in the documentation ranges.
		c.AllowDestinations = append(c.AllowDestinations, netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::/32"))
		c.HandshakeTimeout = 500 * time.Millisecond
	})
	for _, v := range tlvtest.Load(t) {
		if v.Dir != "request" || v.Reply == nil && v.Expect != "reset" && v.Expect != "abort" {
			continue
		}
		if v.Expect == "ok" || v.Expect == "cookie" {
			continue // successes need a server; cookies are tested below
		}
		r, err := lp.raw(v.Input)
		switch v.Expect {
		case "reset", "abort":
			if len(r) != 0 {
				t.Errorf("%s: want no reply, got %x (%v)", v.ID, r, err)
			}
		default:
			if !bytes.Equal(r, v.Reply) {
				t.Errorf("%s: reply %x, %v; want %x", v.ID, r, err, v.Reply)
			}
		}
	}
}

// TestLoopbackPolicyCodes: the refusals the engine decides itself.
func TestLoopbackPolicyCodes(t *testing.T) {
	secret := bytes.Repeat([]byte{7}, 32)
	keys, err := cookie.New(secret, nil)
	if err != nil {
		t.Fatal(err)
	}
	fail := func(err error) func(context.Context, []byte) (*net.TCPConn, error) {
		return func(context.Context, []byte) (*net.TCPConn, error) { return nil, err }
	}
	t.Run("dial failures", func(t *testing.T) {
		lp := newLoop(t, nil)
		lp.dialTo[netip.MustParseAddrPort("203.0.113.2:80")] = fail(syscall.ECONNREFUSED)
		lp.dialTo[netip.MustParseAddrPort("203.0.113.3:80")] = fail(syscall.EHOSTUNREACH)
		lp.dialTo[netip.MustParseAddrPort("203.0.113.4:80")] = fail(context.DeadlineExceeded)
		for dest, want := range map[string]tlv.ErrorCode{
			"203.0.113.2:80": tlv.CodeConnectionReset,
			"203.0.113.3:80": tlv.CodeDestinationUnreachable,
			"203.0.113.4:80": tlv.CodeNetworkFailure,
			"203.0.113.9:80": tlv.CodeConnectionReset, // no server at all
		} {
			_, err := lp.convert(client.Options{Dest: netip.MustParseAddrPort(dest)}, nil)
			if got := errCode(t, err); got != want {
				t.Errorf("%s: %s, want %s", dest, got, want)
			}
		}
	})
	t.Run("authorisation", func(t *testing.T) {
		lp := newLoop(t, func(c *Config) { c.Deny = []netip.Prefix{netip.MustParsePrefix("203.0.113.66/32")} })
		for _, dest := range []string{"203.0.113.66:80", "198.51.100.1:80", "[::ffff:169.254.169.254]:80"} {
			_, err := lp.convert(client.Options{Dest: netip.MustParseAddrPort(dest)}, nil)
			if got := errCode(t, err); got != tlv.CodeNotAuthorized {
				t.Errorf("%s: %s, want Not Authorized", dest, got)
			}
		}
	})
	t.Run("cookies", func(t *testing.T) {
		lp := newLoop(t, func(c *Config) { c.Cookies = keys })
		dest := lp.server("203.0.113.5:80", echoConn)
		_, err := lp.convert(client.Options{Dest: dest}, nil)
		if errCode(t, err) != tlv.CodeMissingCookie {
			t.Fatalf("no cookie: %v", err)
		}
		_, err = lp.convert(client.Options{Dest: dest, Cookie: bytes.Repeat([]byte{1}, cookie.Len)}, nil)
		if got := errCode(t, err); got != tlv.CodeNotAuthorized {
			t.Errorf("a forged cookie: %s", got)
		}
		if _, err := lp.convert(client.Options{Dest: dest, Cookie: keys.Make(netip.MustParseAddr("127.0.0.1"))}, nil); err != nil {
			t.Errorf("a valid cookie: %v", err)
		}
	})
	t.Run("resources", func(t *testing.T) {
		lp := newLoop(t, func(c *Config) { c.MaxSessionsPerClient = 1; c.Backoff = 9 })
		dest := lp.server("203.0.113.6:80", echoConn)
		if _, err := lp.convert(client.Options{Dest: dest}, nil); err != nil {
			t.Fatal(err)
		}
		_, err := lp.convert(client.Options{Dest: dest}, nil)
		var ce *client.Error
		if !errors.As(err, &ce) || ce.Code != tlv.CodeResourceExceeded || ce.Value[0] != 9 {
			t.Errorf("second session: %v, want Resource Exceeded with back-off 9", err)
		}
	})
	t.Run("reload", func(t *testing.T) {
		lp := newLoop(t, nil)
		dest := lp.server("203.0.113.7:80", echoConn)
		if err := lp.srv.SetPolicy(Policy{AllowDestinations: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")},
			Deny: []netip.Prefix{netip.MustParsePrefix("203.0.113.7/32")}}); err != nil {
			t.Fatal(err)
		}
		if _, err := lp.convert(client.Options{Dest: dest}, nil); errCode(t, err) != tlv.CodeNotAuthorized {
			t.Errorf("after SetPolicy with a deny list: %v", err)
		}
		if err := lp.srv.SetPolicy(Policy{MaxSessions: -1}); err == nil {
			t.Errorf("a negative limit was accepted")
		}
		if _, err := lp.convert(client.Options{Dest: dest}, nil); errCode(t, err) != tlv.CodeNotAuthorized {
			t.Errorf("a refused policy replaced the one in force: %v", err)
		}
	})
}

// TestLoopbackHalfCloseAndResets: a FIN on either leg is a half-close on
// the other, in both orders; a reset on either leg resets the other.
func TestLoopbackHalfCloseAndResets(t *testing.T) {
	lp := newLoop(t, nil)
	t.Run("client closes first", func(t *testing.T) {
		dest := lp.server("203.0.113.10:80", func(c *net.TCPConn) {
			b, _ := io.ReadAll(c) // to the client's FIN
			c.Write(append([]byte("after your FIN: "), b...))
		})
		c, err := lp.convert(client.Options{Dest: dest}, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("bye"))
		c.CloseWrite()
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "after your FIN: bye" {
			t.Errorf("got %q, %v", got, err)
		}
	})
	t.Run("server closes first", func(t *testing.T) {
		dest := lp.server("203.0.113.11:80", func(c *net.TCPConn) {
			c.Write([]byte("done"))
			c.CloseWrite()
			b, _ := io.ReadAll(c) // the client may still send
			if string(b) != "still talking" {
				c.SetLinger(0)
			}
		})
		c, err := lp.convert(client.Options{Dest: dest}, nil)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "done" {
			t.Fatalf("got %q, %v", got, err)
		}
		if _, err := c.Write([]byte("still talking")); err != nil {
			t.Errorf("write after the server's FIN: %v", err)
		}
		c.CloseWrite()
	})
	t.Run("server resets", func(t *testing.T) {
		// The server resets once the session is up (a reset before the
		// reply is a Connection Reset refusal instead).
		dest := lp.server("203.0.113.12:80", func(c *net.TCPConn) {
			c.Read(make([]byte, 1))
			c.SetLinger(0)
		})
		c, err := lp.convert(client.Options{Dest: dest}, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("x"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("client after the server's reset: %v, want a reset", err)
		}
	})
	t.Run("client resets", func(t *testing.T) {
		seen := make(chan error, 1)
		dest := lp.server("203.0.113.13:80", func(c *net.TCPConn) {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err := io.ReadAll(c)
			seen <- err
		})
		c, err := lp.convert(client.Options{Dest: dest}, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.SetLinger(0)
		c.Close()
		if err := <-seen; !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("server after the client's reset: %v, want a reset", err)
		}
	})
}

func TestLoopbackIdleTimeout(t *testing.T) {
	lp := newLoop(t, func(c *Config) { c.IdleTimeout = 300 * time.Millisecond })
	dest := lp.server("203.0.113.20:80", echoConn)
	c, err := lp.convert(client.Options{Dest: dest}, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = io.ReadAll(c)
	if took := time.Since(start); err == nil || took < 250*time.Millisecond || took > 3*time.Second {
		t.Errorf("idle session ended after %v with %v; want a reset after about 300 ms", took, err)
	}
}

// TestLoopbackTableFull: a session the table has no room for is served
// all the same, and the one in the table counts its bytes there.
func TestLoopbackTableFull(t *testing.T) {
	lp := newLoop(t, func(c *Config) { c.Table = sessions.NewTable(1) })
	dest := lp.server("203.0.113.30:80", echoConn)
	first, err := lp.convert(client.Options{Dest: dest}, []byte("early"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(first, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	second, err := lp.convert(client.Options{Dest: dest}, []byte("hello"))
	if err != nil {
		t.Fatalf("session past the table's limit: %v", err)
	}
	second.CloseWrite()
	if got, err := io.ReadAll(second); err != nil || string(got) != "hello" {
		t.Fatalf("echo past the table's limit: %q, %v", got, err)
	}
	tb := lp.srv.Table()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := tb.Snapshot(false).Sessions
		if len(s) == 1 && s[0].BytesToServer == 5 && s[0].BytesToClient == 5 {
			if s[0].Destination != dest || s[0].State != sessions.StateEstablished || s[0].LastActivity.IsZero() {
				t.Errorf("entry: %+v", s[0])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("table: %+v", s)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if c := tb.Counts(); c.Refused != 1 {
		t.Errorf("counts %+v, want one refused", c)
	}
	first.Close()
	for tb.Len() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the ended session stayed in the table")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/convert-tc/converter/client"
)

// echoServer echoes every connection on loopback, then closes it.
func echoServer(t *testing.T) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).AddrPort()
}

func mptcpEnabled() bool {
	b, err := os.ReadFile("/proc/sys/net/mptcp/enabled")
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// startRelay runs the relay on loopback toward server until the test ends.
func startRelay(t *testing.T, server netip.AddrPort) netip.AddrPort {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l, err := listen(ctx, "127.0.0.1:0")
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- serve(ctx, l, server.String()) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("serve did not return after the cancel")
		}
	})
	return l.Addr().(*net.TCPAddr).AddrPort()
}

func TestRelayEcho(t *testing.T) {
	echo := echoServer(t)
	via := startRelay(t, echo)
	// Without the server bit of net.ipv4.tcp_fastopen (loopback outside
	// the lab), the SYN data is refused and an MPTCP client falls back to
	// TCP: the after-handshake cases keep the MPTCP client leg (and the
	// relay's buffered copy) covered.
	for _, tc := range []struct {
		name         string
		mptcp, after bool
		size         int
	}{
		{"tcp/small", false, false, 64},
		{"tcp/large", false, false, 4 << 20},
		{"mptcp/small", true, false, 64},
		{"mptcp/large", true, false, 4 << 20},
		{"mptcp-after-handshake/small", true, true, 64},
		{"mptcp-after-handshake/large", true, true, 4 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			data := make([]byte, tc.size)
			for i := range data {
				data[i] = byte(rand.Uint32())
			}
			early := data[:min(len(data), 100)] // with the Convert message, in the SYN
			c, err := client.Dial(ctx, client.Options{Via: via, Dest: echo, MPTCP: tc.mptcp, AfterHandshake: tc.after}, early)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if !bytes.Equal(c.Reply, reply) {
				t.Errorf("reply %x, want %x", c.Reply, reply)
			}
			d, _ := ctx.Deadline()
			c.SetDeadline(d)
			werr := make(chan error, 1)
			go func() {
				_, err := c.Write(data[len(early):])
				if err == nil {
					err = c.CloseWrite()
				}
				werr <- err
			}()
			got, err := io.ReadAll(c) // until the echo server's close
			if err != nil {
				t.Fatalf("read the echo: %v (%d bytes)", err, len(got))
			}
			if err := <-werr; err != nil {
				t.Fatalf("write: %v", err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("echo of %d bytes differs from the %d sent", len(got), len(data))
			}
			mp, _ := c.MultipathTCP()
			t.Logf("client leg MPTCP: %v", mp)
			if tc.mptcp && tc.after && mptcpEnabled() && !mp {
				t.Error("the client leg fell back to TCP")
			}
		})
	}
}

// A connection that is not a Convert message gets no reply, only a close.
func TestRelayRefusesGarbage(t *testing.T) {
	via := startRelay(t, echoServer(t))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := client.DialRaw(ctx, via, false, []byte("GET / HTTP/1.0\r\n\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(make([]byte, 16))
	if n != 0 || (!errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET)) {
		t.Fatalf("read %d bytes, %v; want the end of the stream", n, err)
	}
}

// A server that refuses the connection gets the client no reply, only a
// close.
func TestRelayServerDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := l.Addr().(*net.TCPAddr).AddrPort()
	l.Close() // nothing listens there any more
	via := startRelay(t, down)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Options{Via: via, Dest: down}, []byte("early"))
	if err == nil {
		c.Close()
		t.Fatalf("reply %x from a relay whose server is down", c.Reply)
	}
	t.Logf("client: %v", err)
}

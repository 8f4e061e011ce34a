package netns

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/convert-tc/converter/client"
	"github.com/convert-tc/converter/cookie"
	"github.com/convert-tc/converter/tlv"
	"github.com/convert-tc/converter/tlv/tlvtest"
)

// rawExchange sends payload in the SYN of a new connection (half-closing
// after it when shut is set) and returns everything the converter sent
// back before closing, or the read error (a reset).
func (e *env) rawExchange(via netip.AddrPort, payload []byte, shut bool) ([]byte, error) {
	var c *net.TCPConn
	err := e.inClient(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var err error
		if len(payload) == 0 {
			var d net.Dialer
			d.SetMultipathTCP(true)
			var nc net.Conn
			nc, err = d.DialContext(ctx, "tcp", via.String())
			if err == nil {
				c = nc.(*net.TCPConn)
			}
			return err
		}
		c, err = client.DialRaw(ctx, via, true, payload)
		return err
	})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if shut {
		c.CloseWrite()
	}
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	return io.ReadAll(c)
}

// wireVector is one request vector of the codec and the reply it gets.
type wireVector struct {
	expect       string
	input, reply []byte
}

func loadWireVectors(t *testing.T) map[string]wireVector {
	t.Helper()
	out := map[string]wireVector{}
	for _, v := range tlvtest.Load(t) {
		out[v.ID] = wireVector{expect: v.Expect, input: v.Input, reply: v.Reply}
	}
	return out
}

// errorReply checks that reply is exactly one Convert message carrying an
// Error TLV with code, and returns its value.
func errorReply(t *testing.T, reply []byte, err error, code tlv.ErrorCode) []byte {
	t.Helper()
	if err != nil {
		t.Fatalf("want Error %d (%s), got %v", code, code, err)
	}
	var m tlv.Message
	n, perr := tlv.ParseReply(reply, &m)
	if perr != nil || n != len(reply) {
		t.Fatalf("reply %x: %v (message %d of %d bytes)", reply, perr, n, len(reply))
	}
	e, ok := m.Error()
	if !ok || e.Code != code {
		t.Fatalf("reply %x: want Error %d (%s)", reply, code, code)
	}
	return e.Value
}

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

// bystander is a session that stays up while refusals happen around it and
// must stay intact.
type bystander struct {
	c    *client.Conn
	seed uint64
}

func (b *bystander) roundTrip(t *testing.T) {
	t.Helper()
	b.seed++
	want, _ := io.ReadAll(stream(b.seed, 64<<10))
	go b.c.Write(want)
	got := make([]byte, len(want))
	b.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(b.c, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("bystander session damaged: %v", err)
	}
}

// TestErrorCodes provokes every Error code the converter can produce and
// checks each on the wire as a client sees it, with a bystander session
// checked intact after each one.
func TestErrorCodes(t *testing.T) {
	e := newEnv(t)
	secret := []byte("0123456789abcdef0123456789abcdef")
	secretFile := filepath.Join(t.TempDir(), "cookie-secret")
	os.WriteFile(secretFile, []byte(hex.EncodeToString(secret)+"\n"), 0o600)

	// The documentation ranges stand for servers without a route, and
	// 192.0.2.0/24 for the servers of the protocol's test vectors.
	main := e.startConverter(append([]string{"--listen", "[::]:5124", "--deny", "10.201.3.77/32", "--deny", "fd01:3::77",
		"--allow-destinations", "203.0.113.0/24", "--allow-destinations", "2001:db8::/32", "--allow-destinations", "192.0.2.0/24"}, labDestinations...)...)
	e.startConverter("--listen", "[::]:5125", "--cookie-secret", secretFile)
	e.startConverter("--listen", "[::]:5126", "--max-sessions", "1", "--backoff", "7")
	e.startConverter("--listen", "[::]:5127", "--max-pending-per-client", "1", "--backoff", "9")
	echo(e.listen(e.serverNS(), "[::]:8020", false))

	bc, err := e.convert(client.Options{Via: e.via4(), Dest: netip.MustParseAddrPort("10.201.3.2:8020"), MPTCP: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	by := &bystander{c: bc, seed: 1000}
	via := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(e.a.ConvPath1V4, port) }
	refuse := func(viaPort uint16, dest string) ([]byte, error) {
		req, _ := client.Options{Dest: netip.MustParseAddrPort(dest)}.Request()
		return e.rawExchange(via(viaPort), append(req, "client data"...), false)
	}
	check := func(name string, f func(t *testing.T)) {
		t.Run(name, func(t *testing.T) {
			f(t)
			by.roundTrip(t)
		})
	}

	check("connection-reset-96", func(t *testing.T) {
		r, err := refuse(5124, "10.201.3.2:9")
		errorReply(t, r, err, tlv.CodeConnectionReset)
	})
	check("destination-unreachable-97", func(t *testing.T) {
		// No host answers ARP or ND for these: the kernel reports host
		// unreachable after its resolution timeout.
		var wg sync.WaitGroup
		got := map[string][]byte{}
		var mu sync.Mutex
		for _, d := range []string{"10.201.3.99:80", "[fd01:3::99]:80"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := refuse(5124, d)
				if err != nil {
					r = []byte(err.Error())
				}
				mu.Lock()
				got[d] = r
				mu.Unlock()
			}()
		}
		wg.Wait()
		if v := errorReply(t, got["10.201.3.99:80"], nil, tlv.CodeDestinationUnreachable); v[0] != 1 {
			t.Errorf("IPv4 ICMP code %d, want 1 (host unreachable)", v[0])
		}
		if v := errorReply(t, got["[fd01:3::99]:80"], nil, tlv.CodeDestinationUnreachable); v[0] != 3 {
			t.Errorf("IPv6 ICMP code %d, want 3 (address unreachable)", v[0])
		}
	})
	check("network-failure-65", func(t *testing.T) {
		for _, d := range []string{"203.0.113.1:80", "[2001:db8::1]:80"} {
			r, err := refuse(5124, d)
			errorReply(t, r, err, tlv.CodeNetworkFailure)
		}
	})
	check("not-authorized-32", func(t *testing.T) {
		for _, d := range []string{"10.201.3.77:80", "[fd01:3::77]:80", "10.201.1.1:80", "[fd01:3::1]:5124"} {
			r, err := refuse(5124, d)
			errorReply(t, r, err, tlv.CodeNotAuthorized)
		}
	})
	check("request-vectors", func(t *testing.T) {
		vs := loadWireVectors(t)
		for _, id := range []string{"D1", "D2", "D3", "D4", "D5", "D6", "D7", "D8", "D9", "D10", "D11", "D12", "D13",
			"D14a", "D14b", "D14c", "D14d", "D14e", "D14f", "D14g", "D15", "D16", "D17a", "D17b", "D18a", "D18b",
			"D19", "D23", "D24", "D25", "A12", "A13"} {
			v := vs[id]
			shut := id == "D1" || id == "D2" || id == "D25"
			r, err := e.rawExchange(e.via4(), v.input, shut)
			switch v.expect {
			case "reset", "abort":
				if !isReset(err) || len(r) != 0 {
					t.Errorf("%s: want a reset without reply, got %x, %v", id, r, err)
				}
			default:
				if err != nil || !bytes.Equal(r, v.reply) {
					t.Errorf("%s: reply %x, %v; want %x", id, r, err, v.reply)
				}
			}
		}
	})
	check("cookies-3-and-32", func(t *testing.T) {
		vs := loadWireVectors(t)
		keys, _ := cookie.New(secret, nil)
		fresh := keys.Make(e.a.ClientPath1V4)
		want := tlv.AppendErrorMessage(nil, tlv.CodeMissingCookie, append([]byte{0}, fresh...), nil)
		r, err := e.rawExchange(via(5125), vs["D20"].input, false)
		if err != nil || !bytes.Equal(r, want) {
			t.Fatalf("D20: reply %x, %v; want %x", r, err, want)
		}
		r, err = e.rawExchange(via(5125), vs["D22"].input, false)
		if err != nil || !bytes.Equal(r, vs["D22"].reply) {
			t.Fatalf("D22: reply %x, %v; want %x", r, err, vs["D22"].reply)
		}
		// The cookie handed out opens the door.
		err = echoSessionWith(e, client.Options{Via: via(5125), Dest: netip.MustParseAddrPort("10.201.3.2:8020"), MPTCP: true, Cookie: fresh}, 77, 64<<10)
		if err != nil {
			t.Fatalf("with the issued cookie: %v", err)
		}
	})
	check("resource-exceeded-64", func(t *testing.T) {
		held, err := e.convert(client.Options{Via: via(5126), Dest: netip.MustParseAddrPort("10.201.3.2:8020"), MPTCP: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		r, err := refuse(5126, "10.201.3.2:8020")
		if v := errorReply(t, r, err, tlv.CodeResourceExceeded); v[0] != 7 {
			t.Errorf("back-off %d, want 7", v[0])
		}
		held.Close()
		// Pending per client: a session stuck dialing an unreachable
		// host holds the client's only pending slot.
		go refuse(5127, "10.201.3.98:80")
		time.Sleep(300 * time.Millisecond)
		r, err = refuse(5127, "10.201.3.2:8020")
		if v := errorReply(t, r, err, tlv.CodeResourceExceeded); v[0] != 9 {
			t.Errorf("back-off %d, want 9", v[0])
		}
	})
	refusals := main.waitRecords(t, "refused", 1)
	codes := map[string]int{}
	for _, r := range refusals {
		codes[fmt.Sprintf("%v %v", r["code"], r["action"])]++
	}
	t.Logf("refusal records on the main converter: %v", codes)
	for _, want := range []string{"0 reply", "1 reply", "2 reply", "32 reply", "33 reply", "65 reply", "96 reply", "97 reply", "<nil> reset", "<nil> abort"} {
		if codes[want] == 0 {
			t.Errorf("no refusal record %q: %v", want, codes)
		}
	}
	by.roundTrip(t)
}

// echoSessionWith is echoSession with full options.
func echoSessionWith(e *env, o client.Options, seed uint64, size int64) error {
	c, err := e.convert(o, nil)
	if err != nil {
		return err
	}
	defer c.Close()
	r := exchange(c.TCPConn, seed, size)
	if r.err != nil || r.got != size || r.gotDigest != streamDigest(seed, size) {
		return fmt.Errorf("echo of %d bytes: got %d, %v", size, r.got, r.err)
	}
	return nil
}

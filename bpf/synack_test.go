package bpf

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"github.com/convert-tc/converter/internal/labtest"
	"net"
	"net/netip"
	"testing"

	"github.com/convert-tc/converter/lab"
)

// TestSynAckCapture dials a server from the converter namespace and checks
// that the options of the server's SYN+ACK are in the map, that they are
// the ones on the wire (tcpdump), and that Delete removes them.
func TestSynAckCapture(t *testing.T) {
	l := upLab(t)
	c, err := LoadSynAckCapture()
	if err != nil {
		t.Fatalf("LoadSynAckCapture: %+v", err)
	}
	defer c.Close()
	attachIn(t, l.Converter, c.Attach, lab.IfConvServer)

	const port = 7001
	ln := listen(t, l.Server, "tcp", fmt.Sprintf(":%d", port), false)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()

	for _, tc := range []struct {
		name string
		addr netip.Addr
		mss  uint16
	}{
		{"ipv4", l.Addr.ServerV4, 1460},
		{"ipv6", l.Addr.ServerV6, 1440},
	} {
		t.Run(tc.name, func(t *testing.T) {
			server := netip.AddrPortFrom(tc.addr, port)
			pc := startCapture(t, l, l.Converter, lab.IfConvServer, fmt.Sprintf("tcp and src port %d", port))
			var local uint16
			err := lab.RunIn(l.Converter, func() error {
				conn, err := net.Dial("tcp", server.String())
				if err != nil {
					return err
				}
				defer conn.Close()
				local = uint16(conn.LocalAddr().(*net.TCPAddr).Port)
				return nil
			})
			if err != nil {
				t.Fatalf("dial %s from the converter: %v", server, err)
			}

			opts, ok := c.Lookup(server, local)
			if !ok {
				t.Fatalf("Lookup(%s, %d): nothing captured", server, local)
			}
			t.Logf("SYN+ACK options from %s to port %d: % x", server, local, opts)
			checkSynAckOptions(t, opts, tc.mss)

			if pc != nil {
				wire := synAckOnWire(t, pc, tc.addr, local)
				if !bytes.Equal(opts, wire) {
					t.Errorf("captured by BPF % x\non the wire     % x", opts, wire)
				}
			}

			if err := c.Delete(server, local); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			if _, ok := c.Lookup(server, local); ok {
				t.Errorf("Lookup after Delete still finds an entry")
			}
			if err := c.Delete(server, local); err != nil {
				t.Errorf("second Delete: %v", err)
			}
		})
	}

	counters, err := c.Counters()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("synack counters: %v", counters)
	if counters["captured"] < 2 || counters["update_failed"] != 0 {
		t.Errorf("counters = %v, want captured >= 2, update_failed 0", counters)
	}
	st, err := c.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Links) != 1 || st.Links[0].Interface != lab.IfConvServer || st.Links[0].LinkID == 0 || st.Links[0].ProgramID != st.ProgramID {
		t.Errorf("status = %+v, want one link on %s running program %d", st, lab.IfConvServer, st.ProgramID)
	}
}

// checkSynAckOptions parses opts and wants Linux's SYN+ACK set: MSS,
// SACK permitted, timestamps and window scale.
func checkSynAckOptions(t *testing.T, opts []byte, mss uint16) {
	t.Helper()
	seen := map[byte][]byte{}
	for i := 0; i < len(opts); {
		kind := opts[i]
		if kind == 0 {
			break
		}
		if kind == 1 {
			i++
			continue
		}
		if i+1 >= len(opts) || int(opts[i+1]) < 2 || i+int(opts[i+1]) > len(opts) {
			t.Fatalf("malformed options at byte %d: % x", i, opts)
		}
		seen[kind] = opts[i+2 : i+int(opts[i+1])]
		i += int(opts[i+1])
	}
	if v := seen[2]; len(v) != 2 || binary.BigEndian.Uint16(v) != mss {
		t.Errorf("MSS option = % x, want %d", v, mss)
	}
	if v, ok := seen[4]; !ok || len(v) != 0 {
		t.Errorf("SACK permitted option missing: % x", opts)
	}
	if v := seen[8]; len(v) != 8 {
		t.Errorf("timestamp option = % x, want 8 bytes", v)
	}
	if v := seen[3]; len(v) != 1 {
		t.Errorf("window scale option = % x, want 1 byte", v)
	}
}

// synAckOnWire returns the option bytes of the SYN+ACK from server to
// localPort in the capture.
func synAckOnWire(t *testing.T, c *labtest.Capture, server netip.Addr, localPort uint16) []byte {
	t.Helper()
	for _, p := range c.Segments(t) {
		if p.TCP.SYN && p.TCP.ACK && p.Src == server && uint16(p.TCP.DstPort) == localPort {
			return p.TCP.Contents[20:]
		}
	}
	t.Fatalf("no SYN+ACK from %s to port %d in the capture", server, localPort)
	return nil
}

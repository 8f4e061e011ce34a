package sockinfo

import (
	"context"
	"io"
	"net"
	"testing"
	"time"
)

func TestScratch2(t *testing.T) {
	ctx := context.Background()
	var lc net.ListenConfig
	lc.SetMultipathTCP(true)
	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	synrecv := 0
	var maxWait time.Duration
	for i := 0; i < 200; i++ {
		var d net.Dialer
		d.SetMultipathTCP(true)
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		ti, _ := GetTCPInfo(s.(*net.TCPConn))
		if ti.State != 1 {
			synrecv++
			t0 := time.Now()
			if err := WaitEstablished(ctx, s.(*net.TCPConn)); err != nil {
				t.Fatal(err)
			}
			maxWait = max(maxWait, time.Since(t0))
		}
		if i == 0 {
			const N = 1 << 20
			go func() { c.Write(make([]byte, N)); c.(*net.TCPConn).CloseWrite() }()
			n, _ := io.Copy(io.Discard, s)
			time.Sleep(50 * time.Millisecond)
			cm, _ := GetMPTCPInfo(c.(*net.TCPConn))
			sm, _ := GetMPTCPInfo(s.(*net.TCPConn))
			t.Logf("read %d\nclient %+v\nserver %+v", n, cm, sm)
			cs, err := GetSubflows(c.(*net.TCPConn))
			t.Logf("client subflows %v %+v", err, cs)
			ss, err := GetSubflows(s.(*net.TCPConn))
			t.Logf("server subflows %v %+v", err, ss)
			ct, _ := GetTCPInfo(c.(*net.TCPConn))
			t.Logf("client tcpinfo %+v", ct)
		}
		c.Close()
		s.Close()
	}
	t.Logf("accepted in non-established state: %d/200, max wait %v", synrecv, maxWait)
}

package mptcppm

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/convert-tc/converter/internal/labtest"
	"github.com/convert-tc/converter/lab"
)

// TestAnnounceEndpoint adds a signal endpoint with a port in a lab's
// converter namespace, checks it with ip mptcp, and removes it.
func TestAnnounceEndpoint(t *testing.T) {
	labtest.Require(t)
	l, err := lab.Up(context.Background(), lab.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ns := l.NS(lab.RoleConverter)
	show := func() string {
		out, _ := l.Command(context.Background(), ns, "ip", "mptcp", "endpoint", "show").CombinedOutput()
		return string(out)
	}
	var ifindex int
	lab.RunIn(ns, func() error {
		ifc, err := net.InterfaceByName(lab.IfConvPath2)
		if err == nil {
			ifindex = ifc.Index
		}
		return err
	})
	e := Endpoint{ID: 42, Addr: netip.AddrPortFrom(l.Addr.ConvPath2V4, 5125), IfIndex: int32(ifindex), Flags: FlagSignal}
	err = lab.RunIn(ns, func() error {
		c, err := Open()
		if err != nil {
			return err
		}
		defer c.Close()
		return c.Add(e)
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := show(); !strings.Contains(got, "10.201.2.1 port 5125 id 42 signal dev cv2") {
		t.Fatalf("endpoint not installed:\n%s", got)
	}
	err = lab.RunIn(ns, func() error {
		c, err := Open()
		if err != nil {
			return err
		}
		defer c.Close()
		return c.Delete(e)
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := show(); strings.Contains(got, "id 42") {
		t.Fatalf("endpoint left behind:\n%s", got)
	}
}

package engine

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"testing"

	"github.com/convert-tc/converter/sockinfo"
	"github.com/convert-tc/converter/tlv"
)

func TestDialRefusalMapping(t *testing.T) {
	v4 := netip.MustParseAddrPort("192.0.2.1:80")
	v6 := netip.MustParseAddrPort("[2001:db8::1]:80")
	sys := func(e syscall.Errno) error { return fmt.Errorf("dial: %w", os.NewSyscallError("connect", e)) }
	tests := []struct {
		name  string
		dest  netip.AddrPort
		err   error
		code  tlv.ErrorCode
		value byte
	}{
		{"refused", v4, sys(syscall.ECONNREFUSED), tlv.CodeConnectionReset, 0},
		{"timeout", v4, context.DeadlineExceeded, tlv.CodeNetworkFailure, 0},
		{"etimedout", v6, sys(syscall.ETIMEDOUT), tlv.CodeNetworkFailure, 0},
		{"host down", v4, sys(syscall.EHOSTDOWN), tlv.CodeDestinationUnreachable, 7},
		{"no fds", v4, sys(syscall.EMFILE), tlv.CodeResourceExceeded, 0},
		{"no source port", v6, sys(syscall.EADDRNOTAVAIL), tlv.CodeResourceExceeded, 0},
		{"v6 prohibited", v6, sys(syscall.EACCES), tlv.CodeDestinationUnreachable, 1},
		{"v4 local firewall", v4, sys(syscall.EPERM), tlv.CodeNetworkFailure, 0},
		{"other", v4, errors.New("strange"), tlv.CodeNetworkFailure, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := dialRefusal(tt.dest, tt.err)
			want := tlv.AppendErrorMessage(nil, tt.code, []byte{tt.value}, nil)
			if r.code != tt.code || !bytes.Equal(r.reply, want) {
				t.Fatalf("got %v %x, want %v %x", r.code, r.reply, tt.code, want)
			}
		})
	}
}

func TestICMPCodes(t *testing.T) {
	if icmpCode(syscall.EHOSTUNREACH, true) != 1 || icmpCode(syscall.EHOSTUNREACH, false) != 3 || icmpCode(syscall.ENETUNREACH, true) != 0 {
		t.Fatal("unreachable errno to ICMP code mapping changed")
	}
}

func TestSynthesizedOptionsLayout(t *testing.T) {
	info := sockinfo.TCPInfo{Options: sockinfo.OptTimestamps | sockinfo.OptSACK | sockinfo.OptWScale, SndMSS: 1448, SndWScale: 7}
	got := synthesizeSynAckOptions(info, false)
	want := []byte{2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0, 1, 3, 3, 7}
	if !bytes.Equal(got, want) {
		t.Fatalf("options %x, want the Linux layout %x", got, want)
	}
	got = synthesizeSynAckOptions(sockinfo.TCPInfo{Options: sockinfo.OptSACK, SndMSS: 1460}, true)
	want = []byte{2, 4, 0x05, 0xb4, 1, 1, 4, 2, 0x1e, 12, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0}
	if !bytes.Equal(got, want) {
		t.Fatalf("options %x, want %x", got, want)
	}
}

func TestSuccessReplies(t *testing.T) {
	opts := []byte{2, 4, 5, 0xb4, 4, 2, 8, 10, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 1, 3, 3, 7}
	b1, _ := hex.DecodeString("0107226314060000020405b40402080a112233445566778801030307")
	if got := successReply(false, nil, opts); !bytes.Equal(got, b1) {
		t.Errorf("reply %x, want vector B1 %x", got, b1)
	}
	b8, _ := hex.DecodeString("010922631502000004081e0014060000020405b40402080a112233445566778801030307")
	if got := successReply(true, tlv.ReferenceSupportedKinds(), opts); !bytes.Equal(got, b8) {
		t.Errorf("reply %x, want vector B8 %x", got, b8)
	}
	b5, _ := hex.DecodeString("010322631502000004081e00")
	if got := infoReply(tlv.ReferenceSupportedKinds()); !bytes.Equal(got, b5) {
		t.Errorf("info reply %x, want vector B5 %x", got, b5)
	}
}

func TestRefusalFromParse(t *testing.T) {
	var m tlv.Message
	_, err := tlv.ParseRequest([]byte{1, 0, 0x22, 0x63}, &m)
	if r := fromParse(err); r.action != tlv.ActionReset || len(r.reply) != 0 {
		t.Fatalf("total length 0: %+v", r)
	}
}

// TestClientICMPCode: the ICMP code a held client gets gives its kernel
// the server leg's errno, in the client's family (net/ipv4/icmp.c
// icmp_err_convert, net/ipv6/icmp.c icmpv6_err_convert).
func TestClientICMPCode(t *testing.T) {
	for _, tc := range []struct {
		errno  syscall.Errno
		v4, v6 byte
	}{
		{syscall.ENETUNREACH, 0, 0},
		{syscall.EHOSTUNREACH, 1, 3},
		{syscall.ENOPROTOOPT, 2, 3},
		{syscall.EHOSTDOWN, 7, 3},
		{syscall.EACCES, 13, 1},
		{syscall.EPERM, 13, 1},
	} {
		if got := clientICMPCode(tc.errno, true); got != tc.v4 {
			t.Errorf("%v, IPv4 client: code %d, want %d", tc.errno, got, tc.v4)
		}
		if got := clientICMPCode(tc.errno, false); got != tc.v6 {
			t.Errorf("%v, IPv6 client: code %d, want %d", tc.errno, got, tc.v6)
		}
	}
}

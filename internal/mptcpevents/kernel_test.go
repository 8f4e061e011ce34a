package mptcpevents

import (
	"github.com/convert-tc/converter/internal/labtest"
	"io"
	"net/netip"
	"os/exec"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/convert-tc/converter/lab"
	"github.com/convert-tc/converter/sockinfo"
)

// TestKernelAttributes checks the event and attribute numbers against the
// running kernel: what the events of a live two-subflow connection decode
// to must match what the sockets, interfaces and endpoints say. It listens
// on both ends, since some attributes (if_idx) only appear on the side
// that opened the subflow.
func TestKernelAttributes(t *testing.T) {
	labtest.Require(t)
	l, err := lab.Up(t.Context(), lab.Config{Prefix: lab.UniquePrefix()})
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	defer l.Close()
	for _, tc := range []struct {
		name      string
		dst, join netip.Addr
		family    uint16
	}{
		{"ipv4", l.Addr.ConvPath1V4, l.Addr.ClientPath2V4, unix.AF_INET},
		{"ipv6", l.Addr.ConvPath1V6, l.Addr.ClientPath2V6, unix.AF_INET6},
	} {
		t.Run(tc.name, func(t *testing.T) { checkAttributes(t, l, tc.dst, tc.join, tc.family) })
	}
}

func checkAttributes(t *testing.T, l *lab.Lab, dst, joinAddr netip.Addr, family uint16) {
	conv := startRecorder(t, l.Converter)
	cli := startRecorder(t, l.Client)
	server, client := connectMPTCP(t, l, dst)
	token, cliToken := tokenOf(t, server), tokenOf(t, client)
	go io.Copy(io.Discard, server)
	if _, err := client.Write(make([]byte, 256<<10)); err != nil {
		t.Fatalf("write: %v", err)
	}

	// created and established: token, family, both addresses and ports,
	// and the server-side attribute and flag.
	evs := conv.wait(t, "created, established, sub_established", func(evs []Event) bool {
		return len(of(evs, Created, token)) == 1 && len(of(evs, Established, token)) == 1 &&
			len(of(evs, SubEstablished, token)) == 1
	})
	local, remote := unmap(server.LocalAddr()), unmap(server.RemoteAddr())
	for _, ev := range append(of(evs, Created, token), of(evs, Established, token)...) {
		if ev.Local != local || ev.Remote != remote || ev.Family != family || !ev.ServerSide || ev.Flags&FlagServerSide == 0 {
			t.Errorf("converter %s: got %s family %d flags %#x, want %s -> %s family %d, server side", ev.Type, ev, ev.Family, ev.Flags, local, remote, family)
		}
	}
	if ev := cli.wait(t, "client created", hasOne(Created, cliToken))[0]; ev.ServerSide || ev.Local != remote {
		t.Errorf("client created = %s, want local %s and not server side", ev, remote)
	}

	// sub_established: the joined subflow is one the socket lists, its
	// remote id is the client's endpoint id, and the client, which bound
	// the subflow to its interface, reports that interface.
	join := of(evs, SubEstablished, token)[0]
	subs, err := sockinfo.GetSubflows(server)
	if err != nil {
		t.Fatalf("subflows: %v", err)
	}
	epID := endpointID(t, l.Client, joinAddr)
	if !hasSubflow(subs, join.Local, join.Remote) || join.Remote.Addr() != joinAddr || join.RemID != epID || join.Backup {
		t.Errorf("sub_established = %s, want a subflow from %s, rem_id %d, no backup; sockets: %+v", join, joinAddr, epID, subs)
	}
	cjoin := of(cli.wait(t, "client sub_established", hasOne(SubEstablished, cliToken)), SubEstablished, cliToken)[0]
	if want := ifIndex(t, l.Client, lab.IfClientPath2); cjoin.IfIndex != want || cjoin.LocID != epID || cjoin.Local != join.Remote {
		t.Errorf("client sub_established = %s, want if_idx %d, loc_id %d, local %s", cjoin, want, epID, join.Remote)
	}

	// sub_priority: the client marks its endpoint backup and sends MP_PRIO.
	ipCmd(t, "-n", l.Client, "mptcp", "endpoint", "change", "id", strconv.Itoa(int(epID)), "backup")
	defer ipCmd(t, "-n", l.Client, "mptcp", "endpoint", "change", "id", strconv.Itoa(int(epID)), "nobackup")
	conv.wait(t, "sub_priority with backup", func(evs []Event) bool {
		for _, ev := range of(evs, SubPriority, token) {
			if ev.Backup && ev.Remote == join.Remote {
				return true
			}
		}
		return false
	})

	// announced and removed. Only over IPv4: an IPv6 ADD_ADDR with a port
	// does not fit in the option space beside timestamps, and Linux drops
	// it (MPTcpExtAddAddrTxDrop on the client).
	if joinAddr.Is4() {
		checkAnnounce(t, l, conv, token, joinAddr)
	}

	// sub_closed with an error: SOCK_DESTROY aborts the joined subflow on
	// the converter, which sets sk_err to ECONNABORTED.
	out, err := exec.CommandContext(t.Context(), "ip", "netns", "exec", l.Converter, "ss", "-K", "-t",
		"src", join.Local.String(), "dst", join.Remote.String()).CombinedOutput()
	if err != nil {
		t.Fatalf("ss -K: %v: %s", err, out)
	}
	evs = conv.wait(t, "sub_closed of the joined subflow", func(evs []Event) bool {
		for _, ev := range of(evs, SubClosed, token) {
			if ev.Remote == join.Remote {
				return true
			}
		}
		return false
	})
	for _, ev := range of(evs, SubClosed, token) {
		if ev.Remote == join.Remote && ev.Error != uint32(unix.ECONNABORTED) {
			t.Errorf("sub_closed = %s, want error %d (ECONNABORTED)", ev, unix.ECONNABORTED)
		}
	}

	client.Close()
	server.Close()
	evs = conv.wait(t, "closed", hasOne(Closed, token))
	for _, ev := range evs {
		t.Logf("converter event: %s", ev)
	}
}

// checkAnnounce makes the client signal its address with a port (ADD_ADDR)
// and then withdraw it (RM_ADDR).
func checkAnnounce(t *testing.T, l *lab.Lab, conv *recorder, token uint32, joinAddr netip.Addr) {
	const annPort = 7777
	ipCmd(t, "-n", l.Client, "mptcp", "endpoint", "add", joinAddr.String(), "dev", lab.IfClientPath2, "port", strconv.Itoa(annPort), "signal")
	annID := endpointIDPort(t, l.Client, joinAddr, annPort)
	ann := of(conv.wait(t, "announced", hasOne(Announced, token)), Announced, token)[0]
	if ann.Remote != netip.AddrPortFrom(joinAddr, annPort) || ann.RemID != annID {
		t.Errorf("announced = %s rem_id %d, want %s:%d rem_id %d", ann, ann.RemID, joinAddr, annPort, annID)
	}
	ipCmd(t, "-n", l.Client, "mptcp", "endpoint", "delete", "id", strconv.Itoa(int(annID)))
	if rm := of(conv.wait(t, "removed", hasOne(Removed, token)), Removed, token)[0]; rm.RemID != annID {
		t.Errorf("removed rem_id = %d, want %d", rm.RemID, annID)
	}
}

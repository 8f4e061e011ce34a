package bpf

import (
	"net"
	"testing"

	"github.com/convert-tc/converter/lab"
)

// TestHandOverSteering: a successor's steering program shares the
// predecessor's token map and takes its link over in place: the link keeps
// its id and runs the new program, the tokens added before are there, and
// closing the predecessor leaves the link attached.
func TestHandOverSteering(t *testing.T) {
	l := upLab(t)
	old, err := LoadSteering(SteeringConfig{Mark: 0x77, Port: 5124, MaxTokens: 1024})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	var ifindex int
	err = lab.RunIn(l.Converter, func() error {
		ifc, err := net.InterfaceByName(lab.IfConvPath1)
		if err != nil {
			return err
		}
		ifindex = ifc.Index
		return old.Attach(ifindex)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := old.AddToken(0xabcd1234); err != nil {
		t.Fatal(err)
	}
	before, _ := old.Status()
	objs, err := old.HandOver()
	if err != nil {
		t.Fatal(err)
	}
	var next *Steering
	err = lab.RunIn(l.Converter, func() error {
		// A different --max-sessions: the inherited map keeps its size.
		next, err = LoadSteering(SteeringConfig{Mark: 0x77, Port: 5124, MaxTokens: 4096, Inherit: objs})
		if err != nil {
			return err
		}
		return next.Attach(ifindex) // adopted: a no-op
	})
	for _, o := range objs {
		o.File.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	after, _ := next.Status()
	if len(after.Links) != 1 || after.Links[0].LinkID != before.Links[0].LinkID {
		t.Fatalf("links %+v, want the predecessor's link %d", after.Links, before.Links[0].LinkID)
	}
	if after.Links[0].ProgramID != after.ProgramID || after.ProgramID == before.ProgramID {
		t.Fatalf("link runs program %d; new program %d, old %d", after.Links[0].ProgramID, after.ProgramID, before.ProgramID)
	}
	if after.Maps[0].Entries != 1 || after.Maps[0].MaxEntries != 1024 {
		t.Fatalf("token map %+v, want the predecessor's %+v", after.Maps[0], before.Maps[0])
	}
	if err := next.RemoveToken(0xabcd1234); err != nil {
		t.Fatal(err)
	}
	old.Close()
	if n := tcxLinksOf(t, after.ProgramID); n != 1 {
		t.Fatalf("%d links run the new program once the old one closed, want 1", n)
	}
}

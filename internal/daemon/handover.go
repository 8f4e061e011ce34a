package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/convert-tc/converter/bpf"
	"github.com/convert-tc/converter/control"
	"github.com/convert-tc/converter/engine"
	"github.com/convert-tc/converter/internal/handover"
	"github.com/convert-tc/converter/internal/tfowindow"
	"github.com/convert-tc/converter/nat"
)

// Programs' names in a hand-over.
const (
	progSynwin = "synwin"
	progSteer  = "steer"
	progSynack = "synack"
)

// natReserve is how many free port blocks per pool address a daemon that
// hands over keeps for the sessions it accepts until it stops accepting.
const natReserve = 16

// adoptPool takes the predecessor's port blocks into the new pool; the
// ports it holds go on hold once it is gone.
func (d *daemon) adoptPool(g *group) error {
	p := d.pred
	if p == nil || d.addr.pool == nil || p.offer.State["nat_blocks"] == "" {
		return nil
	}
	var blocks []nat.HandedBlock
	if err := json.Unmarshal([]byte(p.offer.State["nat_blocks"]), &blocks); err != nil {
		return fmt.Errorf("take over the address pool: %w", err)
	}
	release, err := d.addr.pool.Adopt(blocks)
	if err != nil {
		return fmt.Errorf("take over the address pool: %w", err)
	}
	d.log.Info("address pool taken over", "blocks", len(blocks))
	g.run(func(ctx context.Context) {
		select {
		case <-p.gone:
			release()
		case <-ctx.Done():
		}
	})
	return nil
}

// handOverTimeout bounds each wait of a hand-over: the successor's start
// (a probe, BPF loads) and the predecessor's answer.
const handOverTimeout = 60 * time.Second

// predecessor is the running daemon this one takes over from.
type predecessor struct {
	conn      *handover.Conn
	offer     handover.Offer
	files     []*os.File
	bpf       map[string][]bpf.Object
	listeners []engine.HandedListener
	begun     time.Time
	// released closes once the predecessor stopped accepting (or the
	// hand-over failed); gone once it exited.
	released chan struct{}
	gone     chan struct{}
	answered atomic.Bool
}

// takeOver asks a daemon already serving on the control socket for its
// listening sockets and BPF objects. Nobody there: a plain start.
func (d *daemon) takeOver(ctx context.Context) (func(), error) {
	if d.cfg.Control == "" {
		return nil, nil
	}
	begun := time.Now()
	reqCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	uc, err := control.Handover(reqCtx, d.cfg.Control)
	if errors.Is(err, control.ErrNoDaemon) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("take over from the converter on %s: %w", d.cfg.Control, err)
	}
	p := &predecessor{conn: handover.NewConn(uc), begun: begun, released: make(chan struct{}), gone: make(chan struct{}), bpf: map[string][]bpf.Object{}}
	p.conn.SetDeadline(time.Now().Add(handOverTimeout))
	if p.files, err = p.conn.Receive(&p.offer); err != nil {
		p.conn.Close()
		return nil, fmt.Errorf("take over from the converter on %s: %w", d.cfg.Control, err)
	}
	fail := func(err error) (func(), error) {
		p.refuse(err)
		return nil, fmt.Errorf("take over from the converter on %s (pid %d): %w", d.cfg.Control, p.offer.PID, err)
	}
	if p.offer.Error != "" {
		return fail(errors.New(p.offer.Error))
	}
	if len(p.files) != len(p.offer.Files) {
		return fail(fmt.Errorf("%d files for %d descriptions", len(p.files), len(p.offer.Files)))
	}
	if ns := netnsID(); p.offer.State["netns"] != ns {
		return fail(fmt.Errorf("it runs in another network namespace (%s, this is %s): use another --control", p.offer.State["netns"], ns))
	}
	for i, f := range p.offer.Files {
		switch f.Kind {
		case handover.KindListener:
			p.listeners = append(p.listeners, engine.HandedListener{File: p.files[i], Port: f.Port})
		case handover.KindMap:
			p.bpf[f.Program] = append(p.bpf[f.Program], bpf.Object{Map: f.Name, File: p.files[i]})
		case handover.KindLink:
			p.bpf[f.Program] = append(p.bpf[f.Program], bpf.Object{Ifindex: f.Ifindex, File: p.files[i]})
		default:
			return fail(fmt.Errorf("unknown kind of file %q", f.Kind))
		}
	}
	d.log.Info("taking over", "from_pid", p.offer.PID, "from_version", p.offer.Version, "listeners", len(p.listeners), "files", len(p.files))
	d.pred = p
	d.ecfg.Inherited = p.listeners
	d.ecfg.PredecessorDone = p.gone
	return func() {
		p.refuse(errors.New("the successor stopped before it served"))
		p.closeFiles()
	}, nil
}

// refuse tells the predecessor to go on as before, once.
func (p *predecessor) refuse(err error) {
	if p.answered.Swap(true) {
		return
	}
	p.conn.Send(handover.Ready{OK: false, Error: err.Error(), PID: os.Getpid()}, nil)
	p.conn.Close()
	close(p.released)
	p.closeFiles()
}

func (p *predecessor) closeFiles() {
	for _, f := range p.files {
		f.Close()
	}
	p.files = nil
}

// completeTakeOver runs once this daemon accepts on the inherited sockets:
// the predecessor stops accepting and drains; its exit closes p.gone.
func (d *daemon) completeTakeOver() {
	p := d.pred
	if p == nil || p.answered.Swap(true) {
		return
	}
	// Engine and programs hold their own copies by now.
	p.closeFiles()
	err := p.conn.Send(handover.Ready{OK: true, PID: os.Getpid()}, nil)
	var rel handover.Released
	if err == nil {
		_, err = p.conn.Receive(&rel)
	}
	close(p.released)
	if err != nil {
		d.log.Error("hand-over: the predecessor did not confirm; both may accept until it drains", "from_pid", p.offer.PID, "error", err.Error())
		p.conn.Close()
		close(p.gone)
		return
	}
	took := time.Since(p.begun)
	d.log.Info("took over", "from_pid", p.offer.PID, "from_version", p.offer.Version, "listeners", len(p.listeners),
		"bpf_objects", len(p.offer.Files)-len(p.listeners), "predecessor_sessions", rel.Sessions, "took_ms", took.Milliseconds())
	p.conn.SetDeadline(time.Time{})
	go func() {
		// The predecessor keeps the connection until it exits.
		for {
			if _, err := p.conn.Receive(nil); err != nil {
				break
			}
		}
		p.conn.Close()
		d.log.Info("predecessor gone", "pid", p.offer.PID)
		close(p.gone)
	}()
}

// inheritance is what the data plane takes from a predecessor.
type inheritance struct {
	bpf        map[string][]bpf.Object // by program
	earlyDemux string                  // what the predecessor's routing restores
	// clampDecided: the TFO window clamp decision is the predecessor's
	// (same kernel, same mode), its probe and check are not run again:
	// they need CAP_SYS_ADMIN, which a re-executed daemon no longer has.
	clampDecided bool
}

// clampDecision takes the predecessor's TFO window clamp decision when it
// ran in the same mode.
func (p *predecessor) clampDecision(mode tfowindow.Mode) (tfowindow.Decision, bool) {
	st := p.offer.State
	if st["tfo_clamp_mode"] != string(mode) || (st["tfo_clamp"] != "on" && st["tfo_clamp"] != "off") {
		return tfowindow.Decision{}, false
	}
	return tfowindow.Decision{On: st["tfo_clamp"] == "on", Reason: "as the predecessor found: " + st["tfo_clamp_reason"]}, true
}

// objects keeps the maps, and the links on the interfaces named, of a
// program's inherited objects; the other links go with the predecessor.
func (in *inheritance) objects(prog string, names []string) []bpf.Object {
	if in == nil {
		return nil
	}
	objs := in.bpf[prog]
	want := map[int]bool{}
	for _, n := range names {
		if idx, err := ifindex(n); err == nil {
			want[idx] = true
		}
	}
	var out []bpf.Object
	for _, o := range objs {
		if o.Map != "" || want[o.Ifindex] {
			out = append(out, o)
		}
	}
	return out
}

// handOver is the running daemon's side: POST /handover on the control
// socket.
func (d *daemon) handOver(uc *net.UnixConn) {
	conn := handover.NewConn(uc)
	refuse := func(why string) {
		d.log.Warn("hand-over refused", "reason", why)
		conn.Send(handover.Offer{PID: os.Getpid(), Version: d.opts.Version, Error: why}, nil)
		conn.Close()
	}
	if ok, state := d.srv.Readiness(); !ok {
		refuse("this converter is " + state)
		return
	}
	if !d.handing.CompareAndSwap(false, true) {
		refuse("a hand-over is in progress")
		return
	}
	offer, files, err := d.offer()
	if err != nil {
		d.handing.Store(false)
		refuse(err.Error())
		return
	}
	d.log.Info("handing over", "files", len(files))
	err = conn.Send(offer, files)
	for _, f := range files {
		f.Close()
	}
	var ready handover.Ready
	if err == nil {
		conn.SetDeadline(time.Now().Add(handOverTimeout))
		_, err = conn.Receive(&ready)
	}
	if err == nil && !ready.OK {
		err = errors.New(ready.Error)
	}
	if pool := d.addr.pool; pool != nil {
		if err != nil {
			pool.CancelHandOver()
		} else {
			pool.HandedOver()
		}
	}
	if err != nil {
		d.handing.Store(false)
		conn.Close()
		d.log.Error("hand-over abandoned: serving on as before", "error", err.Error())
		return
	}
	// From here the successor accepts on the same sockets and runs the
	// programs: stop accepting, keep what it uses, drain.
	d.srv.HandedOver()
	d.dp.handedOver()
	d.addr.handedOver()
	sessions := d.srv.Stats().Active
	if d.upgrades.reexecuting(ready.PID) {
		// Our own re-execution, in our cgroup: systemd follows it.
		d.mainPIDSent.Store(true)
		d.notify.send(fmt.Sprintf("MAINPID=%d\nSTATUS=handed over to pid %d", ready.PID, ready.PID))
	}
	conn.SetDeadline(time.Time{})
	conn.Send(handover.Released{Sessions: sessions}, nil)
	d.successor = conn // closed by the exit: the successor's cue
	d.log.Info("handed over", "to_pid", ready.PID, "sessions", sessions)
	d.upgrades.handedOver(ready.PID)
	d.stopServing()
}

// offer lists what this daemon hands over, with duplicates of the files.
func (d *daemon) offer() (handover.Offer, []*os.File, error) {
	o := handover.Offer{PID: os.Getpid(), Version: d.opts.Version, State: map[string]string{"netns": netnsID()}}
	var files []*os.File
	fail := func(err error) (handover.Offer, []*os.File, error) {
		for _, f := range files {
			f.Close()
		}
		return handover.Offer{}, nil, err
	}
	ls, err := d.srv.HandOverListeners()
	if err != nil {
		return fail(err)
	}
	for _, l := range ls {
		files = append(files, l.File)
		o.Files = append(o.Files, handover.File{Kind: handover.KindListener, Port: l.Port})
	}
	type handing interface{ HandOver() ([]bpf.Object, error) }
	progs := []struct {
		name string
		p    handing
		ok   bool
	}{
		{progSynwin, d.dp.synwin, d.dp.synwin != nil},
		{progSteer, d.dp.steering, d.dp.steering != nil},
		{progSynack, d.dp.synacks, d.dp.synacks != nil},
	}
	for _, p := range progs {
		if !p.ok {
			continue
		}
		objs, err := p.p.HandOver()
		if err != nil {
			return fail(err)
		}
		for _, ob := range objs {
			files = append(files, ob.File)
			kind := handover.KindMap
			if ob.Map == "" {
				kind = handover.KindLink
			}
			o.Files = append(o.Files, handover.File{Kind: kind, Program: p.name, Name: ob.Map, Ifindex: ob.Ifindex})
		}
	}
	if d.dp.routing != nil {
		o.State["early_demux"] = d.dp.routing.EarlyDemux()
	}
	if pool := d.addr.pool; pool != nil {
		// The successor takes the blocks in use (clients keep their
		// address); a few stay in reserve for the sessions this daemon
		// accepts until it stops.
		b, err := json.Marshal(pool.PrepareHandOver(natReserve))
		if err != nil {
			pool.CancelHandOver()
			return fail(err)
		}
		o.State["nat_blocks"] = string(b)
	}
	o.State["tfo_clamp_mode"] = string(d.cfg.TFOWindowClamp)
	o.State["tfo_clamp"] = map[bool]string{true: "on", false: "off"}[d.dp.synwin != nil]
	o.State["tfo_clamp_reason"] = d.dp.clampReason
	return o, files, nil
}

// netnsID names the network namespace of the calling thread.
func netnsID() string {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return "unknown"
	}
	return strconv.FormatUint(st.Ino, 10)
}

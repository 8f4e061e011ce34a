package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"syscall"

	"github.com/convert-tc/converter/bpf"
	"github.com/convert-tc/converter/engine"
	"github.com/convert-tc/converter/internal/cluster"
	"github.com/convert-tc/converter/internal/mptcppm"
	"github.com/convert-tc/converter/internal/tfowindow"
	"github.com/convert-tc/converter/internal/tproxy"
	"github.com/convert-tc/converter/synhold"
)

// announceIDBase numbers the endpoints the daemon announces, away from
// the ids an operator is likely to use by hand.
const announceIDBase = 200

// dataplane is what the daemon attached to the kernel; close undoes all of
// it, in reverse order.
type dataplane struct {
	synwin   *bpf.SynWindowClamp
	steering *bpf.Steering
	synacks  *bpf.SynAckCapture
	synhold  *synhold.Holder
	cluster  *cluster.Node
	routing  *tproxy.Routing
	pm       *mptcppm.Client
	announce []mptcppm.Endpoint
	// inherit is what a predecessor handed over (an upgrade), nil
	// otherwise; released: a successor took the data plane over, close
	// leaves it.
	inherit  *inheritance
	released bool
	// clampReason is why the TFO window clamp is on or off, for a
	// successor.
	clampReason string
}

// handedOver leaves the routing and the endpoints to the successor; the
// programs' links and maps live on in its hands.
func (dp *dataplane) handedOver() {
	dp.released = true
	if dp.cluster != nil {
		dp.cluster.HandedOver()
	}
}

// setupDataplane loads and attaches the BPF programs, installs the policy
// routing and announces addresses, as cfg asks; ecfg learns where the
// engine finds tokens and SYN+ACK options.
func setupDataplane(ctx context.Context, cfg Config, ecfg *engine.Config, clamp tfowindow.Decision, inherit *inheritance, log *slog.Logger) (*dataplane, error) {
	dp := &dataplane{inherit: inherit}
	ok := false
	defer func() {
		if !ok {
			dp.close(log)
		}
	}()
	if err := dp.clampSynWindows(ctx, cfg, clamp, log); err != nil {
		return nil, err
	}
	if cfg.Transparent || cfg.NAT.preserves() {
		if err := dp.steer(cfg, ecfg); err != nil {
			return nil, err
		}
	}
	if len(cfg.ServerIfaces) > 0 {
		if err := dp.captureSynAcks(cfg.ServerIfaces, ecfg); err != nil {
			return nil, err
		}
	}
	if cfg.SynHold {
		if err := dp.holdSynAcks(cfg, ecfg, log); err != nil {
			return nil, err
		}
	}
	if len(cfg.ClusterVIPs) > 0 {
		n, err := cluster.Setup(cfg.clusterConfig(), log)
		if err != nil {
			return nil, err
		}
		dp.cluster = n
		log.Info("cluster node", "vips", cfg.ClusterVIPs, "node_addresses", cfg.NodeAddresses, "device", n.Device(),
			"shared_tfo_key", cfg.TFOKey != "")
	}
	if len(cfg.Announce) > 0 {
		if err := dp.announceAddrs(cfg, ecfg); err != nil {
			return nil, err
		}
	}
	ok = true
	return dp, nil
}

// steer loads the steering program: on client-facing interfaces it steers
// Convert SYNs (transparent mode); on server-facing ones it marks the
// replies to server legs sourced from client addresses (preservation), so
// that they are delivered here and not forwarded to the client.
func (dp *dataplane) steer(cfg Config, ecfg *engine.Config) error {
	var ifaces []string
	if cfg.Transparent {
		if len(cfg.ClientIfaces) == 0 {
			return configErrorf("--transparent needs at least one --client-iface")
		}
		ifaces = append(ifaces, cfg.ClientIfaces...)
	}
	if cfg.NAT.preserves() {
		if len(cfg.ServerIfaces) == 0 {
			return configErrorf("--nat %s needs the server-facing --server-iface", cfg.NAT)
		}
		ifaces = append(ifaces, cfg.ServerIfaces...)
	}
	if err := bpf.Supported(); err != nil {
		return fmt.Errorf("transparent mode: %w", err)
	}
	s, err := bpf.LoadSteering(bpf.SteeringConfig{Mark: cfg.Mark, Port: listenPort(ecfg.Listen), MaxTokens: maxTokens(*ecfg), Inherit: dp.inherit.objects(progSteer, ifaces)})
	if err != nil {
		return fmt.Errorf("load steering program: %w", err)
	}
	dp.steering = s
	for _, name := range ifaces {
		idx, err := ifindex(name)
		if err != nil {
			return err
		}
		if err := s.Attach(idx); err != nil {
			return fmt.Errorf("attach steering to %s: %w", name, err)
		}
	}
	if dp.routing, err = tproxy.Install(cfg.Mark, cfg.RouteTable); err != nil {
		return fmt.Errorf("policy routing: %w", err)
	}
	if dp.inherit != nil {
		dp.routing.SetEarlyDemux(dp.inherit.earlyDemux)
	}
	if cfg.Transparent {
		ecfg.Transparent = true
		ecfg.Joins = s
	}
	return nil
}

// clampSynWindows loads and attaches the synwin program where the kernel
// has the MPTCP TCP Fast Open window fault (internal/tfowindow), after
// checking in a private namespace that the program removes it. It goes on
// the client-facing interfaces, or on every interface that is up when
// none is named. Where the program cannot load, auto mode logs the
// fault and goes on; "on" refuses to start.
func (dp *dataplane) clampSynWindows(ctx context.Context, cfg Config, d tfowindow.Decision, log *slog.Logger) error {
	dp.clampReason = d.Reason
	attrs := []any{"mode", string(cfg.TFOWindowClamp), "reason", d.Reason}
	if v := d.Verdict; v != nil {
		attrs = append(attrs, "probe_sent_with_syn_data", v.SentWithSYNData, "probe_sent_without", v.SentWithout)
	}
	if !d.On {
		log.Info("tfo window clamp", append(attrs, "on", false)...)
		return nil
	}
	strict := cfg.TFOWindowClamp == tfowindow.ModeOn
	fail := func(err error) error {
		if strict {
			return fmt.Errorf("--tfo-window-clamp on: %w", err)
		}
		log.Error("tfo window clamp", append(attrs, "on", false, "error", err.Error())...)
		return nil
	}
	if err := bpf.Supported(); err != nil {
		return fail(err)
	}
	names := cfg.ClientIfaces
	if len(names) == 0 {
		var err error
		if names, err = upInterfaces(); err != nil {
			return err
		}
	}
	clamp, err := bpf.LoadSynWindowClamp(dp.inherit.objects(progSynwin, names)...)
	if err != nil {
		return fail(err)
	}
	var v tfowindow.Verdict
	if dp.inherit == nil || !dp.inherit.clampDecided {
		v, err = tfowindow.Verify(ctx, func(lo int) (func(), error) {
			if err := clamp.Attach(lo); err != nil {
				return nil, err
			}
			return func() { clamp.Detach(lo) }, nil
		})
		if err != nil {
			clamp.Close()
			return fail(fmt.Errorf("check the clamp in a private namespace: %w", err))
		}
	}
	dp.synwin = clamp
	for _, name := range names {
		idx, err := ifindex(name)
		if err != nil {
			return err
		}
		if err := clamp.Attach(idx); err != nil {
			return fmt.Errorf("attach the TFO window clamp to %s: %w", name, err)
		}
	}
	log.Info("tfo window clamp", append(attrs, "on", true, "interfaces", names, "verified_sent_with_syn_data", v.SentWithSYNData)...)
	return nil
}

// upInterfaces names the interfaces of this namespace that are up.
func upInterfaces() ([]string, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var names []string
	for _, i := range ifs {
		if i.Flags&net.FlagUp != 0 {
			names = append(names, i.Name)
		}
	}
	return names, nil
}

func (dp *dataplane) captureSynAcks(ifaces []string, ecfg *engine.Config) error {
	if err := bpf.Supported(); err != nil {
		return fmt.Errorf("SYN+ACK capture: %w", err)
	}
	capt, err := bpf.LoadSynAckCapture(dp.inherit.objects(progSynack, ifaces)...)
	if err != nil {
		return fmt.Errorf("load SYN+ACK capture: %w", err)
	}
	dp.synacks = capt
	for _, name := range ifaces {
		idx, err := ifindex(name)
		if err != nil {
			return err
		}
		if err := capt.Attach(idx); err != nil {
			return fmt.Errorf("attach SYN+ACK capture to %s: %w", name, err)
		}
	}
	ecfg.SynAcks = capt
	return nil
}

// holdSynAcks loads the SYN+ACK hold (--syn-hold) on the client-facing
// interfaces, or every interface that is up when none is named, for the
// listening ports (every port in transparent mode). The reply's Extended
// TCP Header must then be the server's own: without --server-iface the
// SYN+ACK capture goes on every interface that is up.
//
// An upgrade does not hand the hold over: the successor's programs run
// ahead of the predecessor's, and a released SYN+ACK carries a mark that
// every hold program lets pass.
func (dp *dataplane) holdSynAcks(cfg Config, ecfg *engine.Config, log *slog.Logger) error {
	if err := bpf.Supported(); err != nil {
		return fmt.Errorf("--syn-hold: %w", err)
	}
	ports := []uint16{0}
	if !cfg.Transparent {
		ports = listenPorts(ecfg.Listen)
	}
	names := cfg.ClientIfaces
	up, err := upInterfaces()
	if err != nil {
		return err
	}
	if len(names) == 0 {
		names = up
	}
	if dp.synacks == nil {
		if err := dp.captureSynAcks(up, ecfg); err != nil {
			return err
		}
	}
	h, err := synhold.New(ports, cfg.SynHoldMax, log)
	if err != nil {
		return fmt.Errorf("--syn-hold: %w", err)
	}
	dp.synhold = h
	for _, name := range names {
		idx, err := ifindex(name)
		if err != nil {
			return err
		}
		if err := h.Attach(idx); err != nil {
			return fmt.Errorf("attach the SYN+ACK hold to %s: %w", name, err)
		}
	}
	ecfg.SynHold = heldSynAcks{h}
	log.Info("syn hold", "interfaces", names, "ports", ports, "max", cfg.SynHoldMax.String())
	return nil
}

// heldSynAcks is the Holder as the engine sees it.
type heldSynAcks struct{ h *synhold.Holder }

func (a heldSynAcks) Take(client, local netip.AddrPort) engine.HeldSynAck {
	if o := a.h.Take(client, local); o != nil {
		return o
	}
	return nil // not a typed nil
}

func (dp *dataplane) announceAddrs(cfg Config, ecfg *engine.Config) error {
	pm, err := mptcppm.Open()
	if err != nil {
		return err
	}
	dp.pm = pm
	for i, ap := range cfg.Announce {
		e := mptcppm.Endpoint{ID: uint8(announceIDBase + i), Addr: ap, Flags: mptcppm.FlagSignal}
		if err := pm.Add(e); err != nil && !(dp.inherit != nil && (errors.Is(err, syscall.EEXIST) || errors.Is(err, syscall.EBUSY))) {
			return err
		}
		dp.announce = append(dp.announce, e)
		// The kernel listens on an announced port itself. A join to it
		// carries a known token, so the steering program would assign it
		// to the converter's port, where the kernel refuses it
		// (MismatchPortSynRx); registered, the port is looked up on the
		// join's own tuple and finds the kernel's listener. The engine
		// never opens or closes a per-port listener on it.
		if p := ap.Port(); p != 0 && dp.steering != nil {
			if err := dp.steering.AddListenerPort(p); err != nil {
				return err
			}
			ecfg.ReservedPorts = append(ecfg.ReservedPorts, p)
		}
	}
	return nil
}

// close undoes everything; the tcx links would go with the process anyway,
// the routing and the endpoints would not.
func (dp *dataplane) close(log *slog.Logger) {
	if dp.released {
		dp.announce, dp.routing = nil, nil // the successor's now
	}
	for _, e := range dp.announce {
		if err := dp.pm.Delete(e); err != nil {
			log.Warn("remove announced endpoint", "error", err.Error())
		}
	}
	if dp.pm != nil {
		dp.pm.Close()
	}
	if dp.routing != nil {
		if err := dp.routing.Remove(); err != nil {
			log.Warn("remove policy routing", "error", err.Error())
		}
	}
	if dp.cluster != nil {
		if err := dp.cluster.Close(); err != nil {
			log.Warn("cluster: undo", "error", err.Error())
		}
	}
	if dp.synhold != nil {
		dp.synhold.Close()
	}
	if dp.synacks != nil {
		dp.synacks.Close()
	}
	if dp.steering != nil {
		dp.steering.Close()
	}
	if dp.synwin != nil {
		dp.synwin.Close()
	}
}

// loaded reports whether any BPF program is in use.
func (dp *dataplane) loaded() bool {
	return dp.synwin != nil || dp.steering != nil || dp.synacks != nil || dp.synhold != nil
}

// status is what `converter bpf status` shows, served on the control socket.
func (dp *dataplane) status() any {
	out := map[string]any{}
	if dp.synwin != nil {
		counters, _ := dp.synwin.Counters()
		st, _ := dp.synwin.Status()
		out["synwin_counters"] = counters
		out["synwin"] = st
	}
	if dp.steering != nil {
		counters, _ := dp.steering.Counters()
		st, _ := dp.steering.Status()
		out["counters"] = counters
		out["steering"] = st
	}
	if dp.synacks != nil {
		counters, _ := dp.synacks.Counters()
		st, _ := dp.synacks.Status()
		out["synack_counters"] = counters
		out["synack_capture"] = st
	}
	if dp.synhold != nil {
		counters, _ := dp.synhold.Counters()
		st, _ := dp.synhold.Status()
		out["syn_hold_counters"] = counters
		out["syn_hold"] = st
		out["syn_hold_pending"] = dp.synhold.Pending()
	}
	return out
}

func ifindex(name string) (int, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return 0, fmt.Errorf("interface %s: %w", name, err)
	}
	return ifc.Index, nil
}

// maxTokens sizes the steering program's token map: the engine holds one
// MPTCP token per session (removed before the session leaves the table), so
// the session limit bounds the tokens; 0 is the engine's default limit.
func maxTokens(cfg engine.Config) uint32 {
	n := cfg.MaxSessions
	if n <= 0 {
		n = cfg.WithDefaults().MaxSessions
	}
	if uint64(n) > math.MaxUint32 {
		return math.MaxUint32 // the kernel refuses a map this size: load fails and says so
	}
	return uint32(n)
}

// listenPorts are the ports of the listen addresses (the default's
// without any).
func listenPorts(listen []string) []uint16 {
	var out []uint16
	for _, l := range listen {
		if _, p, err := net.SplitHostPort(l); err == nil {
			if n, err := strconv.ParseUint(p, 10, 16); err == nil && !slices.Contains(out, uint16(n)) {
				out = append(out, uint16(n))
			}
		}
	}
	if len(out) == 0 {
		out = append(out, listenPort(nil))
	}
	return out
}

// listenPort is the port of the first listen address (else the default
// one's): the steering program's fallback listener.
func listenPort(listen []string) uint16 {
	for _, l := range slices.Concat(listen, []string{engine.DefaultListen}) {
		if _, p, err := net.SplitHostPort(l); err == nil {
			if n, err := strconv.ParseUint(p, 10, 16); err == nil {
				return uint16(n)
			}
		}
	}
	return 0
}

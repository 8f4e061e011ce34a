package main

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"strconv"

	"github.com/urfave/cli/v2"

	"github.com/convert-tc/converter/bpf"
	"github.com/convert-tc/converter/engine"
	"github.com/convert-tc/converter/internal/mptcppm"
	"github.com/convert-tc/converter/internal/tfowindow"
	"github.com/convert-tc/converter/internal/tproxy"
)

// Defaults of transparent mode: the mark the steering program sets and the
// routing table that delivers marked packets locally.
const (
	defaultMark       = 0x2263
	defaultRouteTable = 2263
	// announceIDBase numbers the endpoints the daemon announces, away from
	// the ids an operator is likely to use by hand.
	announceIDBase = 200
)

func transparentFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "transparent", Usage: "steer Convert SYNs addressed to the real servers to this converter with eBPF (needs --client-iface)"},
		&cli.StringSliceFlag{Name: "client-iface", Usage: "client-facing interface `IF` for the steering program (repeatable)"},
		&cli.StringSliceFlag{Name: "server-iface", Usage: "server-facing interface `IF` whose SYN+ACKs are captured for an exact Extended TCP Header (repeatable; any mode)"},
		&cli.StringSliceFlag{Name: "announce", Usage: "announce `ADDR[:PORT]` to MPTCP clients (ADD_ADDR) through the kernel path manager, so their extra subflows join it (repeatable)"},
		&cli.UintFlag{Name: "mark", Value: defaultMark, Usage: "fwmark of steered packets (transparent mode)"},
		&cli.IntFlag{Name: "route-table", Value: defaultRouteTable, Usage: "routing table of the local route for marked packets (transparent mode)"},
		&cli.IntFlag{Name: "max-transparent-ports", Value: engine.DefaultMaxTransparentPorts, Usage: "per-port listeners for the joins of steered connections, at most (one per destination port in use; transparent mode)"},
	}
}

// dataplane is what the daemon attached to the kernel; close undoes all of
// it, in reverse order.
type dataplane struct {
	synwin   *bpf.SynWindowClamp
	steering *bpf.Steering
	synacks  *bpf.SynAckCapture
	routing  *tproxy.Routing
	pm       *mptcppm.Client
	announce []mptcppm.Endpoint
}

// setupDataplane loads and attaches the BPF programs, installs the policy
// routing and announces addresses, as the flags ask; cfg learns where the
// engine finds tokens and SYN+ACK options.
func setupDataplane(c *cli.Context, cfg *engine.Config, clamp tfowindow.Decision, log *slog.Logger) (*dataplane, error) {
	dp := &dataplane{}
	ok := false
	defer func() {
		if !ok {
			dp.close(log)
		}
	}()
	if err := dp.clampSynWindows(c, clamp, log); err != nil {
		return nil, err
	}
	preserve := c.String("nat") == "preserve" || c.String("nat") == "mixed"
	if c.Bool("transparent") || preserve {
		if err := dp.steer(c, cfg, c.Bool("transparent"), preserve); err != nil {
			return nil, err
		}
	}
	if ifaces := c.StringSlice("server-iface"); len(ifaces) > 0 {
		if err := dp.captureSynAcks(ifaces, cfg); err != nil {
			return nil, err
		}
	}
	if addrs := c.StringSlice("announce"); len(addrs) > 0 {
		if err := dp.announceAddrs(addrs, cfg); err != nil {
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
func (dp *dataplane) steer(c *cli.Context, cfg *engine.Config, transparent, preserve bool) error {
	var ifaces []string
	if transparent {
		if len(c.StringSlice("client-iface")) == 0 {
			return usageError("--transparent needs at least one --client-iface")
		}
		ifaces = append(ifaces, c.StringSlice("client-iface")...)
	}
	if preserve {
		if len(c.StringSlice("server-iface")) == 0 {
			return usageError("--nat %s needs the server-facing --server-iface", c.String("nat"))
		}
		ifaces = append(ifaces, c.StringSlice("server-iface")...)
	}
	if err := bpf.Supported(); err != nil {
		return fmt.Errorf("transparent mode: %w", err)
	}
	mark := uint32(c.Uint("mark"))
	s, err := bpf.LoadSteering(bpf.SteeringConfig{Mark: mark, Port: listenPort(cfg.Listen), MaxTokens: maxTokens(*cfg)})
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
	if dp.routing, err = tproxy.Install(mark, c.Int("route-table")); err != nil {
		return fmt.Errorf("policy routing: %w", err)
	}
	if transparent {
		cfg.Transparent = true
		cfg.Joins = s
	}
	return nil
}

// clampSynWindows loads and attaches the synwin program where the kernel
// has the MPTCP TCP Fast Open window fault (internal/tfowindow), after
// checking in a private namespace that the program removes it. It goes on
// the client-facing interfaces, or on every interface that is up when
// none is named. Where the program cannot load, auto mode logs the
// fault and goes on; "on" refuses to start.
func (dp *dataplane) clampSynWindows(c *cli.Context, d tfowindow.Decision, log *slog.Logger) error {
	attrs := []any{"mode", c.String("tfo-window-clamp"), "reason", d.Reason}
	if v := d.Verdict; v != nil {
		attrs = append(attrs, "probe_sent_with_syn_data", v.SentWithSYNData, "probe_sent_without", v.SentWithout)
	}
	if !d.On {
		log.Info("tfo window clamp", append(attrs, "on", false)...)
		return nil
	}
	strict := c.String("tfo-window-clamp") == string(tfowindow.ModeOn)
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
	clamp, err := bpf.LoadSynWindowClamp()
	if err != nil {
		return fail(err)
	}
	v, err := tfowindow.Verify(c.Context, func(lo int) (func(), error) {
		if err := clamp.Attach(lo); err != nil {
			return nil, err
		}
		return func() { clamp.Detach(lo) }, nil
	})
	if err != nil {
		clamp.Close()
		return fail(fmt.Errorf("check the clamp in a private namespace: %w", err))
	}
	dp.synwin = clamp
	names := c.StringSlice("client-iface")
	if len(names) == 0 {
		if names, err = upInterfaces(); err != nil {
			return err
		}
	}
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

func (dp *dataplane) captureSynAcks(ifaces []string, cfg *engine.Config) error {
	if err := bpf.Supported(); err != nil {
		return fmt.Errorf("SYN+ACK capture: %w", err)
	}
	capt, err := bpf.LoadSynAckCapture()
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
	cfg.SynAcks = capt
	return nil
}

func (dp *dataplane) announceAddrs(addrs []string, cfg *engine.Config) error {
	pm, err := mptcppm.Open()
	if err != nil {
		return err
	}
	dp.pm = pm
	for i, s := range addrs {
		ap, err := parseAnnounce(s)
		if err != nil {
			return usageError("--announce %q: %v", s, err)
		}
		e := mptcppm.Endpoint{ID: uint8(announceIDBase + i), Addr: ap, Flags: mptcppm.FlagSignal}
		if err := pm.Add(e); err != nil {
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
			cfg.ReservedPorts = append(cfg.ReservedPorts, p)
		}
	}
	return nil
}

// close undoes everything; the tcx links would go with the process anyway,
// the routing and the endpoints would not.
func (dp *dataplane) close(log *slog.Logger) {
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
	return dp.synwin != nil || dp.steering != nil || dp.synacks != nil
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

// listenPort is the port of the first listen address: the steering
// program's fallback listener.
func listenPort(listen []string) uint16 {
	for _, l := range listen {
		if _, p, err := net.SplitHostPort(l); err == nil {
			if n, err := strconv.ParseUint(p, 10, 16); err == nil {
				return uint16(n)
			}
		}
	}
	return 5124
}

// parseAnnounce accepts ADDR or ADDR:PORT ([v6]:PORT). Without a port the
// address is announced alone and joins use the connection's own port.
func parseAnnounce(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, errors.New("want ADDR or ADDR:PORT")
	}
	return netip.AddrPortFrom(a, 0), nil
}

package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/convert-tc/converter/control"
	"github.com/convert-tc/converter/cookie"
	"github.com/convert-tc/converter/engine"
	"github.com/convert-tc/converter/internal/addrpolicy"
	"github.com/convert-tc/converter/internal/cluster"
	"github.com/convert-tc/converter/internal/tfowindow"
	"github.com/convert-tc/converter/nat"
	"github.com/convert-tc/converter/synhold"
)

// Defaults the other packages do not define.
const (
	// DefaultBackoff is the wait in seconds asked of a refused client.
	DefaultBackoff = 30
	// DefaultIdleTimeout is a little over the two hours of TCP keepalive
	// (RFC 1122), so that a session kept alive by keepalives is not cut.
	DefaultIdleTimeout = 2*time.Hour + 4*time.Minute
	// DefaultMark is the fwmark the steering program sets and
	// DefaultRouteTable the routing table that delivers marked packets
	// locally (transparent mode and --nat preserve).
	DefaultMark       = 0x2263
	DefaultRouteTable = 2263
)

// NATMode is where server legs take their source address from.
type NATMode string

const (
	NATOwn      NATMode = "own"      // the converter's own address
	NATPreserve NATMode = "preserve" // the client's
	NATShare    NATMode = "share"    // a shared pool
	NATMixed    NATMode = "mixed"    // the client's when the families match, else the pool
)

// preserves: the steering program marks replies on the server side.
func (m NATMode) preserves() bool { return m == NATPreserve || m == NATMixed }

// shares: a pool is in use.
func (m NATMode) shares() bool { return m == NATShare || m == NATMixed }

func (m NATMode) valid() bool {
	switch m {
	case NATOwn, NATPreserve, NATShare, NATMixed:
		return true
	}
	return false
}

// Config is everything `converter run` takes. The tag flag names the
// field's flag (every field has one); ",reload" marks what a reload puts
// in force, any other change needs a restart.
type Config struct {
	Listen []string `flag:"listen"`

	CookieSecret   string        `flag:"cookie-secret,reload"`   // file; turns on cookie mode
	CookieLifetime time.Duration `flag:"cookie-lifetime,reload"` // at least cookie.MinLifetime

	Deny              []netip.Prefix `flag:"deny,reload"`
	AllowDestinations []netip.Prefix `flag:"allow-destinations,reload"`
	AllowClients      []netip.Prefix `flag:"allow-clients,reload"` // empty: every client

	MaxSessions          int  `flag:"max-sessions,reload"`
	MaxPendingPerClient  int  `flag:"max-pending-per-client,reload"`
	MaxSessionsPerClient int  `flag:"max-sessions-per-client,reload"`
	MaxHandshakes        int  `flag:"max-handshakes,reload"`
	RatePerClient        int  `flag:"rate-per-client,reload"` // 0: no limit
	ClientPrefixV6       int  `flag:"client-prefix-v6"`
	Backoff              uint `flag:"backoff,reload"` // seconds, at most 255

	HandshakeTimeout time.Duration `flag:"handshake-timeout"`
	DialTimeout      time.Duration `flag:"dial-timeout"`
	DrainTimeout     time.Duration `flag:"drain-timeout"` // 0: abort at once
	IdleTimeout      time.Duration `flag:"idle-timeout"`  // 0: never

	LogLevel          slog.Level `flag:"log-level,reload"`
	Control           string     `flag:"control"` // empty: no control socket
	VerifyClientFirst bool       `flag:"verify-client-first"`
	MetricsListen     string     `flag:"metrics-listen"` // ADDR:PORT serving /metrics over HTTP; empty: off
	Web               string     `flag:"web"`            // ADDR:PORT serving the live page; empty: off

	User           string         `flag:"user"`
	KeepPrivileges bool           `flag:"keep-privileges"`
	TFOWindowClamp tfowindow.Mode `flag:"tfo-window-clamp"`
	SynHold        bool           `flag:"syn-hold"`
	SynHoldMax     time.Duration  `flag:"syn-hold-max"`

	Transparent         bool             `flag:"transparent"`
	ClientIfaces        []string         `flag:"client-iface"`
	ServerIfaces        []string         `flag:"server-iface"`
	Announce            []netip.AddrPort `flag:"announce"` // port 0: the address alone
	Mark                uint32           `flag:"mark"`
	RouteTable          int              `flag:"route-table"`
	MaxTransparentPorts int              `flag:"max-transparent-ports"`

	ClusterVIPs   []netip.Addr `flag:"cluster-vip"`    // anycast service addresses (scale-out)
	NodeAddresses []netip.Addr `flag:"node-address"`   // this node's unique addresses, one per family
	TFOKey        string       `flag:"tfo-key,reload"` // the TCP Fast Open server key file every node shares (read again on reload)

	NAT                NATMode        `flag:"nat"`
	Pool               []netip.Prefix `flag:"pool"`
	PortBlock          int            `flag:"port-block"`
	MaxBlocksPerClient int            `flag:"max-blocks-per-client"`
	PortHold           time.Duration  `flag:"port-hold"`
	Hairpin            bool           `flag:"hairpin"`
	NATLog             string         `flag:"nat-log"`
}

// Defaults is the configuration of `converter run` without flags: the one
// place the daemon's defaults are written (the engine's, the pool's and
// the cookies' are theirs, taken from there).
func Defaults() Config {
	e := engine.Config{}.WithDefaults()
	return Config{
		Listen:               []string{engine.DefaultListen},
		CookieLifetime:       cookie.DefaultLifetime,
		MaxSessions:          e.MaxSessions,
		MaxPendingPerClient:  engine.DefaultMaxPendingPerClient,
		MaxSessionsPerClient: engine.DefaultMaxSessionsPerClient,
		MaxHandshakes:        engine.DefaultMaxHandshakes,
		RatePerClient:        engine.DefaultRatePerClient,
		ClientPrefixV6:       engine.DefaultClientPrefixV6,
		Backoff:              DefaultBackoff,
		HandshakeTimeout:     e.HandshakeTimeout,
		DialTimeout:          e.DialTimeout,
		DrainTimeout:         engine.DefaultShutdownDrain,
		IdleTimeout:          DefaultIdleTimeout,
		LogLevel:             slog.LevelInfo,
		Control:              control.DefaultSocket,
		TFOWindowClamp:       tfowindow.ModeAuto,
		SynHoldMax:           synhold.DefaultMax,
		Mark:                 DefaultMark,
		RouteTable:           DefaultRouteTable,
		MaxTransparentPorts:  engine.DefaultMaxTransparentPorts,
		NAT:                  NATOwn,
		PortBlock:            nat.DefaultBlockSize,
		MaxBlocksPerClient:   nat.DefaultMaxBlocksPerClient,
		PortHold:             nat.DefaultHold,
	}
}

// Given reports whether a flag was given (on the command line or in the
// config file), for the "has no effect" checks of Validate.
type Given func(flag string) bool

// Validate lists every problem of c that can be found without looking at
// the host. given tells which flags were set; nil takes those whose value
// differs from Defaults.
func (c Config) Validate(given Given) []string {
	if given == nil {
		given = c.differsFrom(Defaults())
	}
	var problems []string
	add := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }
	for _, l := range c.Listen {
		host, port, err := net.SplitHostPort(l)
		if err != nil {
			add("--listen %q: %v", l, err)
			continue
		}
		if _, err := netip.ParseAddr(strings.Trim(host, "[]")); err != nil && host != "" {
			add("--listen %q: address: %v", l, err)
		}
		if _, err := net.LookupPort("tcp", port); err != nil {
			add("--listen %q: port: %v", l, err)
		}
	}
	for _, l := range []struct{ flag, addr string }{{"metrics-listen", c.MetricsListen}, {"web", c.Web}} {
		if l.addr == "" {
			continue
		}
		if host, port, err := net.SplitHostPort(l.addr); err != nil {
			add("--%s %q: %v", l.flag, l.addr, err)
		} else if _, err := netip.ParseAddr(strings.Trim(host, "[]")); err != nil && host != "" {
			add("--%s %q: address: %v", l.flag, l.addr, err)
		} else if _, err := net.LookupPort("tcp", port); err != nil {
			add("--%s %q: port: %v", l.flag, l.addr, err)
		}
	}
	if _, err := tfowindow.ParseMode(string(c.TFOWindowClamp)); err != nil {
		add("--tfo-window-clamp: %v", err)
	}
	if c.Backoff > 255 {
		add("--backoff %d: at most 255 seconds", c.Backoff)
	}
	if c.CookieSecret != "" && c.CookieLifetime < cookie.MinLifetime {
		add("--cookie-lifetime %v: at least %v", c.CookieLifetime, cookie.MinLifetime)
	}
	problems = append(problems, c.modeProblems(given)...)
	if _, err := engine.New(c.engineConfig(nil)); err != nil {
		add("%v", err)
	}
	return slices.Compact(problems)
}

// Check is Validate and what can be checked on the host without changing
// it: the files named, the interfaces, the kernel. --check and reload run
// it.
func (c Config) Check(given Given) []string {
	problems := c.Validate(given)
	add := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }
	if c.CookieSecret != "" {
		if _, err := cookie.Load(c.CookieSecret); err != nil {
			add("--cookie-secret: %v", err)
		}
	}
	if c.NATLog != "" {
		if st, err := os.Stat(filepath.Dir(c.NATLog)); err != nil || !st.IsDir() {
			add("--nat-log %s: directory %s does not exist", c.NATLog, filepath.Dir(c.NATLog))
		}
	}
	for _, ifs := range []struct {
		flag  string
		names []string
	}{{"client-iface", c.ClientIfaces}, {"server-iface", c.ServerIfaces}} {
		for _, ifc := range ifs.names {
			if _, err := net.InterfaceByName(ifc); err != nil {
				add("--%s %s: %v", ifs.flag, ifc, err)
			}
		}
	}
	if err := engine.CheckKernel(); err != nil {
		add("kernel: %v", err)
	}
	return slices.Compact(problems)
}

// modeProblems lists flags that have no effect in the chosen mode, and
// what a mode lacks.
func (c Config) modeProblems(given Given) []string {
	var problems []string
	add := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }
	if !c.NAT.valid() {
		add("--nat %q: want own, preserve, share or mixed", c.NAT)
	}
	for _, name := range []string{"pool", "port-block", "max-blocks-per-client", "port-hold", "hairpin", "nat-log"} {
		if given(name) && !c.NAT.shares() {
			add("--%s has no effect with --nat %s (only with share or mixed)", name, c.NAT)
		}
	}
	if c.NAT.shares() && len(c.Pool) == 0 {
		add("--nat %s needs --pool", c.NAT)
	}
	if c.NAT.preserves() && len(c.ServerIfaces) == 0 {
		add("--nat %s needs --server-iface", c.NAT)
	}
	if c.Transparent && len(c.ClientIfaces) == 0 {
		add("--transparent needs at least one --client-iface")
	}
	if c.SynHold && (c.SynHoldMax <= 0 || c.SynHoldMax > synhold.MaxMax) {
		add("--syn-hold-max %v: above 0 and at most %v (the client retransmits its SYN at 1 s, without its data)", c.SynHoldMax, synhold.MaxMax)
	}
	if given("syn-hold-max") && !c.SynHold {
		add("--syn-hold-max has no effect without --syn-hold")
	}
	if len(c.ClusterVIPs) > 0 || len(c.NodeAddresses) > 0 || c.TFOKey != "" {
		if err := c.clusterConfig().Validate(); err != nil {
			add("%v", err)
		}
		if c.Transparent {
			add("--cluster-vip and --transparent exclude each other: a transparent converter is on the path, not behind an address")
		}
	}
	if c.SynHold && c.VerifyClientFirst {
		add("--syn-hold and --verify-client-first exclude each other: one answers the client only after the server, the other asks the server only after the client")
	}
	// Preservation steers replies with the mark and the table too.
	for _, name := range []string{"max-transparent-ports", "mark", "route-table"} {
		if given(name) && !c.Transparent && !(name != "max-transparent-ports" && c.NAT.preserves()) {
			add("--%s has no effect without --transparent", name)
		}
	}
	if given("cookie-lifetime") && c.CookieSecret == "" {
		add("--cookie-lifetime has no effect without --cookie-secret")
	}
	return problems
}

// engineConfig is the engine's part of c, before the data plane and the
// addressing add theirs.
func (c Config) engineConfig(log *slog.Logger) engine.Config {
	e := engine.Config{
		Listen:               c.listenAddrs(),
		FreeBind:             len(c.ClusterVIPs) > 0,
		HandshakeTimeout:     c.HandshakeTimeout,
		DialTimeout:          c.DialTimeout,
		IdleTimeout:          c.IdleTimeout,
		ShutdownDrain:        c.DrainTimeout,
		AllowClients:         c.AllowClients,
		Deny:                 c.Deny,
		AllowDestinations:    c.AllowDestinations,
		MaxSessions:          c.MaxSessions,
		MaxPendingPerClient:  c.MaxPendingPerClient,
		MaxSessionsPerClient: c.MaxSessionsPerClient,
		MaxHandshakes:        c.MaxHandshakes,
		RatePerClient:        c.RatePerClient,
		ClientPrefixV6:       c.ClientPrefixV6,
		Backoff:              uint8(min(c.Backoff, 255)),
		MaxTransparentPorts:  c.MaxTransparentPorts,
		VerifyClientFirst:    c.VerifyClientFirst,
		Logger:               log,
	}
	// 0 means the default to the engine; here it means none.
	if e.ShutdownDrain == 0 {
		e.ShutdownDrain = -1
	}
	if e.RatePerClient == 0 {
		e.RatePerClient = -1
	}
	return e
}

// flagField is a field of Config and its flag.
type flagField struct {
	index      int
	flag       string
	reloadable bool
}

// flagFields reads the tags of Config.
func flagFields() []flagField {
	t := reflect.TypeFor[Config]()
	out := make([]flagField, 0, t.NumField())
	for i := range t.NumField() {
		name, opt, _ := strings.Cut(t.Field(i).Tag.Get("flag"), ",")
		out = append(out, flagField{index: i, flag: name, reloadable: opt == "reload"})
	}
	return out
}

// Flags names the flag of every field of Config.
func Flags() []string {
	var out []string
	for _, f := range flagFields() {
		out = append(out, f.flag)
	}
	return out
}

// differsFrom reports whether the field of a flag is not at its value in
// d: at its default, a flag may as well not have been given.
func (c Config) differsFrom(d Config) Given {
	return func(flag string) bool {
		for _, f := range flagFields() {
			if f.flag == flag {
				return !reflect.DeepEqual(reflect.ValueOf(c).Field(f.index).Interface(), reflect.ValueOf(d).Field(f.index).Interface())
			}
		}
		return false
	}
}

// needsRestart lists, as --flags, the fields that differ between running
// and next and that a reload does not put in force.
func needsRestart(running, next Config) []string {
	r, n := reflect.ValueOf(running), reflect.ValueOf(next)
	var out []string
	for _, f := range flagFields() {
		if f.reloadable {
			continue
		}
		a, b := r.Field(f.index).Interface(), n.Field(f.index).Interface()
		if !reflect.DeepEqual(a, b) && !(emptySlice(a) && emptySlice(b)) {
			out = append(out, "--"+f.flag)
		}
	}
	slices.Sort(out)
	return out
}

// emptySlice: nil and empty lists are the same configuration.
func emptySlice(v any) bool {
	rv := reflect.ValueOf(v)
	return rv.Kind() == reflect.Slice && rv.Len() == 0
}

// ParsePrefixes parses CIDRs; a bare address is a single-address prefix.
// IPv4-mapped forms are unmapped (::ffff:10.0.0.0/104 is 10.0.0.0/8), as
// addresses are before they are matched.
func ParsePrefixes(ss []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range ss {
		if !strings.Contains(s, "/") {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, err
			}
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, err
		}
		out = append(out, addrpolicy.UnmapPrefix(p))
	}
	return out, nil
}

// ParseAnnounce accepts ADDR or ADDR:PORT ([v6]:PORT). Without a port the
// address is announced alone and joins use the connection's own port.
func ParseAnnounce(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, errors.New("want ADDR or ADDR:PORT")
	}
	return netip.AddrPortFrom(a, 0), nil
}

// clusterConfig is the scale-out part of c.
func (c Config) clusterConfig() cluster.Config {
	return cluster.Config{VIPs: c.ClusterVIPs, Nodes: c.NodeAddresses, TFOKey: c.TFOKey}
}

// listenAddrs are the addresses to listen on: --listen's, or for a
// cluster node the VIPs and the node's own addresses on each port of
// --listen (joins come to the node's address, new connections to a VIP).
func (c Config) listenAddrs() []string {
	if len(c.ClusterVIPs) == 0 {
		return c.Listen
	}
	var out []string
	for _, p := range listenPorts(c.Listen) {
		for _, a := range slices.Concat(c.ClusterVIPs, c.NodeAddresses) {
			out = append(out, netip.AddrPortFrom(a.Unmap(), p).String())
		}
	}
	return out
}

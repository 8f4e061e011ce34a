package daemon

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestFlagTags(t *testing.T) {
	seen := map[string]bool{}
	ty := reflect.TypeFor[Config]()
	for i := range ty.NumField() {
		tag := ty.Field(i).Tag.Get("flag")
		name, opt, _ := strings.Cut(tag, ",")
		if name == "" || (opt != "" && opt != "reload") {
			t.Errorf("field %s: flag tag %q", ty.Field(i).Name, tag)
		}
		if seen[name] {
			t.Errorf("flag %s on two fields", name)
		}
		seen[name] = true
	}
}

func TestDefaultsValid(t *testing.T) {
	if p := Defaults().Validate(nil); len(p) > 0 {
		t.Errorf("the defaults have problems: %v", p)
	}
}

func TestValidate(t *testing.T) {
	none := func(string) bool { return false }
	for _, tc := range []struct {
		name  string
		edit  func(*Config)
		given Given
		want  string // "" for no problem
	}{
		{"listen", func(c *Config) { c.Listen = []string{"nonsense"} }, nil, `--listen "nonsense"`},
		{"listen host", func(c *Config) { c.Listen = []string{"example.com:5124"} }, nil, "address"},
		{"backoff", func(c *Config) { c.Backoff = 256 }, nil, "--backoff 256: at most 255 seconds"},
		{"cookie lifetime", func(c *Config) { c.CookieSecret, c.CookieLifetime = "/s", time.Second }, nil, "--cookie-lifetime 1s: at least"},
		{"cookie lifetime alone", func(c *Config) { c.CookieLifetime = time.Hour }, nil, "--cookie-lifetime has no effect without --cookie-secret"},
		{"tfo mode", func(c *Config) { c.TFOWindowClamp = "sometimes" }, nil, "--tfo-window-clamp"},
		{"nat mode", func(c *Config) { c.NAT = "cgn" }, nil, `--nat "cgn": want own`},
		{"share without pool", func(c *Config) { c.NAT = NATShare }, nil, "--nat share needs --pool"},
		{"preserve without iface", func(c *Config) { c.NAT = NATPreserve }, nil, "--nat preserve needs --server-iface"},
		{"transparent without iface", func(c *Config) { c.Transparent = true }, nil, "--transparent needs at least one --client-iface"},
		{"pool with own", func(c *Config) { c.Pool = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/28")} }, nil, "--pool has no effect with --nat own"},
		{"port-block given at its default", func(*Config) {}, func(f string) bool { return f == "port-block" }, "--port-block has no effect"},
		{"port-block not given", func(*Config) {}, none, ""},
		{"mark with preserve", func(c *Config) { c.NAT, c.ServerIfaces, c.Mark = NATPreserve, []string{"sv"}, 7 }, nil, ""},
		{"max-transparent-ports with preserve", func(c *Config) {
			c.NAT, c.ServerIfaces, c.MaxTransparentPorts = NATPreserve, []string{"sv"}, 7
		}, nil, "--max-transparent-ports has no effect without --transparent"},
		{"engine", func(c *Config) { c.MaxSessions = -1 }, nil, "session limits must not be negative"},
		{"metrics listen", func(c *Config) { c.MetricsListen = "9464" }, nil, `--metrics-listen "9464"`},
		{"web", func(c *Config) { c.Web = "localhost:web" }, nil, `--web "localhost:web": address`},
		{"web ok", func(c *Config) { c.Web = "127.0.0.1:8080" }, nil, ""},
		{"syn hold", func(c *Config) { c.SynHold = true }, nil, ""},
		{"syn hold past the client's RTO", func(c *Config) { c.SynHold, c.SynHoldMax = true, time.Second }, nil, "--syn-hold-max 1s: above 0 and at most 900ms"},
		{"syn hold of nothing", func(c *Config) { c.SynHold, c.SynHoldMax = true, 0 }, nil, "--syn-hold-max 0s"},
		{"syn-hold-max alone", func(*Config) {}, func(f string) bool { return f == "syn-hold-max" }, "--syn-hold-max has no effect without --syn-hold"},
		{"syn hold and verify-client-first", func(c *Config) { c.SynHold, c.VerifyClientFirst = true, true }, nil, "--syn-hold and --verify-client-first exclude each other"},
		{"share", func(c *Config) {
			c.NAT, c.Pool, c.PortBlock = NATShare, []netip.Prefix{netip.MustParsePrefix("192.0.2.0/28")}, 16
		}, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Defaults()
			tc.edit(&c)
			got := c.Validate(tc.given)
			switch {
			case tc.want == "" && len(got) > 0:
				t.Errorf("problems %v, want none", got)
			case tc.want != "" && !slices.ContainsFunc(got, func(p string) bool { return strings.Contains(p, tc.want) }):
				t.Errorf("problems %v, want one with %q", got, tc.want)
			}
		})
	}
}

func TestNeedsRestart(t *testing.T) {
	running := Defaults()
	next := running
	// Everything a reload puts in force.
	next.Deny = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	next.AllowClients = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	next.AllowDestinations = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	next.MaxSessions, next.MaxPendingPerClient, next.MaxSessionsPerClient = 1, 2, 3
	next.MaxHandshakes, next.RatePerClient, next.Backoff = 4, 5, 6
	next.LogLevel, next.CookieSecret, next.CookieLifetime = 4, "/other", time.Hour
	if got := needsRestart(running, next); len(got) > 0 {
		t.Errorf("reloadable changes need a restart: %v", got)
	}
	next.Listen = []string{"[::]:5125"}
	next.NAT, next.Pool = NATShare, []netip.Prefix{netip.MustParsePrefix("192.0.2.0/28")}
	next.IdleTimeout = time.Minute
	want := []string{"--idle-timeout", "--listen", "--nat", "--pool"}
	if got := needsRestart(running, next); !slices.Equal(got, want) {
		t.Errorf("needs restart %v, want %v", got, want)
	}
	// An empty list is no list.
	a, b := Defaults(), Defaults()
	a.ClientIfaces, b.ClientIfaces = nil, []string{}
	if got := needsRestart(a, b); len(got) > 0 {
		t.Errorf("nil and empty differ: %v", got)
	}
}

// Run refuses a configuration before setting anything up, once it has
// logged its version.
func TestRunRefusesConfig(t *testing.T) {
	c := Defaults()
	c.Transparent = true
	var log bytes.Buffer
	err := Run(context.Background(), c, Options{Stderr: &log, Version: "v-test"})
	var ce *ConfigError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "--transparent needs") {
		t.Errorf("Run: %v, want a ConfigError", err)
	}
	first, _, _ := strings.Cut(log.String(), "\n")
	if !strings.Contains(first, `"msg":"converter"`) || !strings.Contains(first, `"version":"v-test"`) {
		t.Errorf("first record %q, want the version", first)
	}
}

func TestParse(t *testing.T) {
	p, err := ParsePrefixes([]string{"10.1.2.3", "::ffff:10.0.0.0/104", "fd00::/8"})
	want := []netip.Prefix{netip.MustParsePrefix("10.1.2.3/32"), netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
	if err != nil || !slices.Equal(p, want) {
		t.Errorf("ParsePrefixes: %v, %v", p, err)
	}
	if _, err := ParsePrefixes([]string{"10.0.0.0/33"}); err == nil {
		t.Error("ParsePrefixes took /33")
	}
	for in, want := range map[string]string{"192.0.2.1": "192.0.2.1:0", "192.0.2.1:80": "192.0.2.1:80", "[fd00::1]:80": "[fd00::1]:80"} {
		if ap, err := ParseAnnounce(in); err != nil || ap.String() != want {
			t.Errorf("ParseAnnounce(%q) = %v, %v; want %s", in, ap, err, want)
		}
	}
	if _, err := ParseAnnounce("host:80"); err == nil {
		t.Error("ParseAnnounce took a name")
	}
}

package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/urfave/cli/v2"

	"github.com/convert-tc/converter/cookie"
	"github.com/convert-tc/converter/engine"
	"github.com/convert-tc/converter/internal/tfowindow"
)

// configFlags are --config and --check of converter run.
func configFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "config", Usage: "TOML `FILE` whose keys are the long flag names of converter run (lists for repeatable flags, strings for durations); flags on the command line win"},
		&cli.BoolFlag{Name: "check", Usage: "validate the configuration (flags and --config) without side effects, list every problem, and exit 0 or 1"},
	}
}

// applyConfigFile sets every flag named in the TOML file that the command
// line did not set. Unknown keys and values of the wrong kind are errors.
func applyConfigFile(c *cli.Context, path string) error {
	var doc map[string]any
	if _, err := toml.DecodeFile(path, &doc); err != nil {
		return fmt.Errorf("--config %s: %w", path, err)
	}
	known := map[string]bool{}
	for _, f := range c.Command.Flags {
		for _, n := range f.Names() {
			known[n] = true
		}
	}
	keys := make([]string, 0, len(doc))
	for k := range doc {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var errs []error
	for _, key := range keys {
		switch {
		case !known[key]:
			errs = append(errs, fmt.Errorf("--config %s: unknown key %q (keys are the long flag names of converter run)", path, key))
			continue
		case key == "config" || key == "check":
			errs = append(errs, fmt.Errorf("--config %s: key %q belongs on the command line", path, key))
			continue
		case c.IsSet(key):
			continue // the command line wins
		}
		for _, v := range configValues(doc[key]) {
			if err := c.Set(key, v); err != nil {
				errs = append(errs, fmt.Errorf("--config %s: key %q = %v: %w", path, key, doc[key], err))
				break
			}
		}
	}
	return errors.Join(errs...)
}

// configValues turns a TOML value into the strings a flag parses: one per
// element for arrays.
func configValues(v any) []string {
	if list, ok := v.([]any); ok {
		out := make([]string, 0, len(list))
		for _, e := range list {
			out = append(out, fmt.Sprint(e))
		}
		return out
	}
	return []string{fmt.Sprint(v)}
}

// checkConfig validates what can be checked without side effects and
// returns every problem found.
func checkConfig(c *cli.Context, io stdio) []string {
	var problems []string
	add := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }

	for _, l := range c.StringSlice("listen") {
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
	for _, name := range []string{"deny", "allow-clients", "allow-destinations", "pool"} {
		for _, p := range c.StringSlice(name) {
			if _, err := prefixes([]string{p}); err != nil {
				add("--%s %q: %v", name, p, err)
			}
		}
	}
	if path := c.String("cookie-secret"); path != "" {
		if _, err := cookie.Load(path); err != nil {
			add("--cookie-secret: %v", err)
		}
	}
	if path := c.String("nat-log"); path != "" {
		if st, err := os.Stat(filepath.Dir(path)); err != nil || !st.IsDir() {
			add("--nat-log %s: directory %s does not exist", path, filepath.Dir(path))
		}
	}
	if _, err := tfowindow.ParseMode(c.String("tfo-window-clamp")); err != nil {
		add("--tfo-window-clamp: %v", err)
	}
	for _, name := range []string{"client-iface", "server-iface"} {
		for _, ifc := range c.StringSlice(name) {
			if _, err := net.InterfaceByName(ifc); err != nil {
				add("--%s %s: %v", name, ifc, err)
			}
		}
	}
	problems = append(problems, modeProblems(c)...)
	if cfg, err := runConfig(c, io); err != nil {
		add("%v", err)
	} else if _, err := engine.New(cfg); err != nil {
		add("%v", err)
	}
	if err := engine.CheckKernel(); err != nil {
		add("kernel: %v", err)
	}
	return slices.Compact(problems)
}

// modeProblems lists flags that have no effect in the chosen mode.
func modeProblems(c *cli.Context) []string {
	var problems []string
	nat := c.String("nat")
	share := nat == "share" || nat == "mixed"
	switch nat {
	case "own", "preserve", "share", "mixed":
	default:
		problems = append(problems, fmt.Sprintf("--nat %q: want own, preserve, share or mixed", nat))
	}
	for _, name := range []string{"pool", "port-block", "max-blocks-per-client", "port-hold", "hairpin", "nat-log"} {
		if c.IsSet(name) && !share {
			problems = append(problems, fmt.Sprintf("--%s has no effect with --nat %s (only with share or mixed)", name, nat))
		}
	}
	if share && len(c.StringSlice("pool")) == 0 {
		problems = append(problems, fmt.Sprintf("--nat %s needs --pool", nat))
	}
	if (nat == "preserve" || nat == "mixed") && len(c.StringSlice("server-iface")) == 0 {
		problems = append(problems, fmt.Sprintf("--nat %s needs --server-iface", nat))
	}
	transparent := c.Bool("transparent")
	if transparent && len(c.StringSlice("client-iface")) == 0 {
		problems = append(problems, "--transparent needs at least one --client-iface")
	}
	for _, name := range []string{"max-transparent-ports", "mark", "route-table"} {
		if c.IsSet(name) && !transparent && !(name != "max-transparent-ports" && (nat == "preserve" || nat == "mixed")) {
			problems = append(problems, fmt.Sprintf("--%s has no effect without --transparent", name))
		}
	}
	if c.IsSet("cookie-lifetime") && c.String("cookie-secret") == "" {
		problems = append(problems, "--cookie-lifetime has no effect without --cookie-secret")
	}
	return problems
}

package main

import (
	"errors"
	"fmt"
	"sort"

	"github.com/BurntSushi/toml"
	"github.com/urfave/cli/v2"
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

package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
)

// exampleConfig renders a TOML file for --config with every key of
// converter run commented out at its default, each with its usage: what
// dist/converter.toml holds (a test keeps the two the same).
func exampleConfig(run *cli.Command) string {
	var b strings.Builder
	b.WriteString("# converter run --config FILE: every key is a long flag of `converter run`;\n")
	b.WriteString("# flags given on the command line win. Uncomment what you change.\n")
	for _, f := range run.Flags {
		name := f.Names()[0]
		if name == "config" || name == "check" || name == "help" {
			continue
		}
		usage := ""
		if d, ok := f.(cli.DocGenerationFlag); ok {
			usage = d.GetUsage()
		}
		fmt.Fprintf(&b, "\n# %s\n", strings.ReplaceAll(usage, "`", ""))
		fmt.Fprintf(&b, "# %s = %s\n", name, tomlDefault(f))
	}
	return b.String()
}

// tomlDefault writes a flag's default as a TOML value.
func tomlDefault(f cli.Flag) string {
	switch v := f.(type) {
	case *cli.StringSliceFlag:
		if v.Value == nil || len(v.Value.Value()) == 0 {
			return "[]"
		}
		q := make([]string, 0, len(v.Value.Value()))
		for _, s := range v.Value.Value() {
			q = append(q, fmt.Sprintf("%q", s))
		}
		return "[" + strings.Join(q, ", ") + "]"
	case *cli.StringFlag:
		return fmt.Sprintf("%q", v.Value)
	case *cli.DurationFlag:
		return fmt.Sprintf("%q", v.Value.String())
	case *cli.BoolFlag:
		return fmt.Sprint(v.Value)
	case *cli.IntFlag:
		return fmt.Sprint(v.Value)
	case *cli.UintFlag:
		return fmt.Sprint(v.Value)
	}
	return `""`
}

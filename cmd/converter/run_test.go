package main

import (
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/convert-tc/converter/internal/daemon"
)

// mapFlags runs `converter run` with args through daemonConfig only.
func mapFlags(t *testing.T, args ...string) (daemon.Config, []string) {
	t.Helper()
	var cfg daemon.Config
	var problems []string
	app := newApp(stdio{in: strings.NewReader(""), out: io.Discard, err: io.Discard})
	app.Command("run").Action = func(c *cli.Context) error {
		cfg, problems = daemonConfig(c)
		return nil
	}
	if err := app.Run(append([]string{"converter", "run"}, args...)); err != nil {
		t.Fatalf("run %v: %v", args, err)
	}
	return cfg, problems
}

// Every field of daemon.Config has its flag, and every flag of run but
// --config and --check its field.
func TestRunFlagsAreConfigFields(t *testing.T) {
	var flags []string
	for _, f := range newApp(stdio{}).Command("run").Flags {
		if n := f.Names()[0]; n != "config" && n != "check" && n != "help" {
			flags = append(flags, n)
		}
	}
	fields := daemon.Flags()
	slices.Sort(flags)
	slices.Sort(fields)
	if !slices.Equal(flags, fields) {
		t.Errorf("flags of run %v\nfields of daemon.Config %v", flags, fields)
	}
}

// Without flags, run's Config is daemon.Defaults: no default is written
// twice.
func TestFlagDefaultsAreDaemonDefaults(t *testing.T) {
	cfg, problems := mapFlags(t)
	if len(problems) > 0 {
		t.Fatalf("problems without flags: %v", problems)
	}
	if want := daemon.Defaults(); !reflect.DeepEqual(cfg, want) {
		t.Errorf("run without flags:\n%+v\nwant daemon.Defaults():\n%+v", cfg, want)
	}
}

// Each flag sets its field and no other.
func TestFlagsMapToTheirField(t *testing.T) {
	values := map[string]string{
		"listen": "127.0.0.1:1", "deny": "10.0.0.0/8", "allow-destinations": "10.0.0.0/8", "allow-clients": "10.0.0.0/8",
		"pool": "192.0.2.0/28", "client-iface": "eth9", "server-iface": "eth9", "announce": "192.0.2.1",
		"log-level": "debug", "nat": "share", "tfo-window-clamp": "off", "cookie-secret": "/s", "control": "/c",
		"user": "nobody", "nat-log": "/l", "metrics-listen": "127.0.0.1:9124",
		"web": "127.0.0.1:8080", "cluster-vip": "192.0.2.100", "node-address": "192.0.2.101", "tfo-key": "/k",
	}
	ty := reflect.TypeFor[daemon.Config]()
	fieldOf := map[string]string{}
	for i := range ty.NumField() {
		name, _, _ := strings.Cut(ty.Field(i).Tag.Get("flag"), ",")
		fieldOf[name] = ty.Field(i).Name
	}
	def := reflect.ValueOf(daemon.Defaults())
	for _, f := range newApp(stdio{}).Command("run").Flags {
		name := f.Names()[0]
		if fieldOf[name] == "" {
			continue
		}
		var arg []string
		switch v := f.(type) {
		case *cli.BoolFlag:
			arg = []string{"--" + name + "=" + map[bool]string{true: "false", false: "true"}[v.Value]}
		case *cli.IntFlag:
			arg = []string{"--" + name, "7"}
		case *cli.UintFlag:
			arg = []string{"--" + name, "7"}
		case *cli.DurationFlag:
			arg = []string{"--" + name, "7m"}
		default:
			arg = []string{"--" + name, values[name]}
		}
		cfg, problems := mapFlags(t, arg...)
		if len(problems) > 0 {
			t.Errorf("%v: %v", arg, problems)
			continue
		}
		got := reflect.ValueOf(cfg)
		for i := range ty.NumField() {
			changed := !reflect.DeepEqual(got.Field(i).Interface(), def.Field(i).Interface())
			if mine := ty.Field(i).Name == fieldOf[name]; changed != mine {
				t.Errorf("%v: field %s changed %v", arg, ty.Field(i).Name, changed)
			}
		}
	}
}

func TestFlagParseProblems(t *testing.T) {
	_, problems := mapFlags(t, "--deny", "10.0.0.0/33", "--log-level", "loud", "--announce", "host:1", "--mark", "4294967296")
	for _, want := range []string{`--deny "10.0.0.0/33"`, "--log-level", `--announce "host:1"`, "--mark 4294967296"} {
		if !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, want) }) {
			t.Errorf("no problem with %q in %v", want, problems)
		}
	}
}

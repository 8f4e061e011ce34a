package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/convert-tc/converter/control"
	"github.com/convert-tc/converter/engine"
)

// reloadable are the flags a reload puts in force; a change to any other
// needs a restart (and is reported as such).
var reloadable = []string{
	"allow-clients", "deny", "allow-destinations", "max-sessions", "max-pending-per-client",
	"max-sessions-per-client", "max-handshakes", "rate-per-client", "backoff", "log-level",
	"cookie-secret", "cookie-lifetime", "config", "check",
}

// ReloadOutcome is what a reload did, as the log, GET /stats ("reload")
// and `converter reload` report it.
type ReloadOutcome struct {
	Time          time.Time `json:"time"`
	OK            bool      `json:"ok"`
	Problems      []string  `json:"problems,omitempty"`
	NeedsRestart  []string  `json:"needs_restart,omitempty"`
	CookiesReload string    `json:"cookies,omitempty"`
}

// reloader evaluates the daemon's command line and config file again and
// puts the reloadable part in force; a configuration with any problem
// leaves the running one in force.
type reloader struct {
	args    []string // the command line the daemon was started with
	running *cli.Context
	srv     *engine.Server
	level   *slog.LevelVar
	log     *slog.Logger
	cookies func() error // nil without cookie mode

	mu   sync.Mutex // one reload at a time
	last ReloadOutcome
}

func (r *reloader) reload(ctx context.Context) ReloadOutcome {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := ReloadOutcome{Time: time.Now().UTC()}
	next, level, problems := evaluate(ctx, r.args)
	out.Problems = problems
	if len(problems) == 0 {
		out.NeedsRestart = changedFlags(r.running, next)
		if err := r.srv.SetPolicy(next.policy); err != nil {
			out.Problems = append(out.Problems, err.Error())
		}
	}
	if len(out.Problems) == 0 {
		r.level.Set(level)
		if r.cookies != nil {
			if err := r.cookies(); err != nil {
				out.CookiesReload = "kept the keys in use: " + err.Error()
			} else {
				out.CookiesReload = "reloaded"
			}
		}
	}
	out.OK = len(out.Problems) == 0
	if out.OK {
		r.log.Info("reloaded", "needs_restart", out.NeedsRestart, "cookies", out.CookiesReload)
	} else {
		r.log.Error("reload refused: the running configuration stays in force", "problems", out.Problems)
	}
	r.last = out
	return out
}

// lastOutcome is the last reload's outcome, for GET /stats.
func (r *reloader) lastOutcome() any {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last.Time.IsZero() {
		return nil
	}
	return r.last
}

// evaluated is a configuration as a fresh start would compute it.
type evaluated struct {
	policy engine.Policy
	values map[string]string // every flag of converter run, as text
}

// evaluate runs the CLI's run command on args again, without starting
// anything: the config file is read afresh, everything --check checks is
// checked, and the engine's policy is computed.
func evaluate(ctx context.Context, args []string) (evaluated, slog.Level, []string) {
	var ev evaluated
	var level slog.Level
	var problems []string
	quiet := stdio{in: strings.NewReader(""), out: io.Discard, err: io.Discard}
	app := newApp(quiet)
	cmd := app.Command("run")
	if cmd == nil {
		return ev, level, []string{"no run command"}
	}
	cmd.Action = func(c *cli.Context) error {
		if path := c.String("config"); path != "" {
			if err := applyConfigFile(c, path); err != nil {
				problems = append(problems, err.Error())
				return nil
			}
		}
		problems = append(problems, checkConfig(c, quiet)...)
		if len(problems) > 0 {
			return nil
		}
		cfg, err := runConfig(c, quiet)
		if err != nil {
			problems = append(problems, err.Error())
			return nil
		}
		ev.policy = cfg.Policy()
		level.UnmarshalText([]byte(c.String("log-level")))
		ev.values = flagValues(c)
		return nil
	}
	if err := app.RunContext(context.WithoutCancel(ctx), args); err != nil {
		var ec cli.ExitCoder
		if !errors.As(err, &ec) || ec.ExitCode() != 0 {
			problems = append(problems, err.Error())
		}
	}
	return ev, level, problems
}

// flagValues renders every flag of the command as text.
func flagValues(c *cli.Context) map[string]string {
	out := map[string]string{}
	for _, f := range c.Command.Flags {
		name := f.Names()[0]
		if v := c.Value(name); v != nil {
			out[name] = fmt.Sprint(v)
		}
	}
	return out
}

// changedFlags lists the flags whose value differs between the running
// daemon and the new evaluation and that a reload cannot change.
func changedFlags(running *cli.Context, next evaluated) []string {
	now := flagValues(running)
	var out []string
	for name, v := range next.values {
		if !slices.Contains(reloadable, name) && now[name] != v {
			out = append(out, "--"+name)
		}
	}
	slices.Sort(out)
	return out
}

// reloadArgs is the command line the CLI was run with.
func reloadArgs(ctx context.Context) []string {
	args, _ := ctx.Value(argsKey{}).([]string)
	return args
}

// versionedOutcome is o as `converter reload --json` prints it.
func versionedOutcome(o ReloadOutcome) json.RawMessage {
	b, err := versionedJSON(o, "")
	if err != nil {
		return nil
	}
	return json.RawMessage(b)
}

// reloadCommand asks the running daemon to reload, as SIGHUP does, and
// reports the outcome: exit 0 when the new configuration is in force, 1
// when it was refused (the running one stays).
func reloadCommand(io stdio) *cli.Command {
	return &cli.Command{
		Name:  "reload",
		Usage: "reload the running converter's configuration (as SIGHUP) and report the outcome",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "control", Value: control.DefaultSocket, Usage: "control socket of the daemon"},
			&cli.BoolFlag{Name: "json", Usage: `print {"version":...,"ok":true,"problems":[...],"needs_restart":[...]}`},
		},
		Before: noArguments,
		Action: func(c *cli.Context) error {
			ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
			defer cancel()
			var o struct {
				ReloadOutcome
				Version string `json:"version"`
			}
			err := control.Reload(ctx, c.String("control"), &o)
			if err != nil && o.Time.IsZero() {
				return cli.Exit(fmt.Sprintf("converter: %s: %v", c.String("control"), err), 1)
			}
			if c.Bool("json") {
				b, _ := versionedJSON(o.ReloadOutcome, "")
				fmt.Fprint(io.out, string(b))
			} else if o.OK {
				fmt.Fprintln(io.out, "reloaded")
				for _, f := range o.NeedsRestart {
					fmt.Fprintf(io.out, "changed but needs a restart: %s\n", f)
				}
				if o.CookiesReload != "" {
					fmt.Fprintf(io.out, "cookie secret: %s\n", o.CookiesReload)
				}
			} else {
				fmt.Fprintln(io.out, "refused; the running configuration stays in force:")
				for _, p := range o.Problems {
					fmt.Fprintln(io.out, "  "+p)
				}
			}
			if !o.OK {
				return cli.Exit("", 1)
			}
			return nil
		},
	}
}

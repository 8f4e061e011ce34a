package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/urfave/cli/v2"
)

// The hidden `converter docs` prints what packaging needs from the command
// tree: the man pages, a Markdown reference and static bash and zsh
// completions. Everything is made from the commands and flags themselves,
// so it cannot drift from the CLI; hidden commands and flags are left out.

// docsCommand is `converter docs --man | --man-dir DIR | --markdown | --bash | --zsh`.
func docsCommand() *cli.Command {
	return &cli.Command{
		Name:   "docs",
		Usage:  "print the documentation made from the commands (for packaging)",
		Hidden: true,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "man", Usage: "print the converter(1) man page (roff)"},
			&cli.StringFlag{Name: "man-dir", Usage: "write converter.1 and a converter-COMMAND.1 for each command into `DIR`"},
			&cli.BoolFlag{Name: "markdown", Usage: "print the reference as Markdown"},
			&cli.BoolFlag{Name: "bash", Usage: "print a bash completion script"},
			&cli.BoolFlag{Name: "zsh", Usage: "print a zsh completion script"},
		},
		Before: noArguments,
		Action: func(c *cli.Context) error {
			var chosen []string
			for _, name := range []string{"man", "man-dir", "markdown", "bash", "zsh"} {
				if c.IsSet(name) {
					chosen = append(chosen, "--"+name)
				}
			}
			if len(chosen) != 1 {
				return usageError("docs: give one of --man, --man-dir, --markdown, --bash or --zsh")
			}
			app := docsApp(c.App)
			var out string
			var err error
			switch chosen[0] {
			case "--man":
				out, err = manPage(app)
			case "--man-dir":
				return writeManPages(app, c.String("man-dir"))
			case "--markdown":
				out, err = app.ToMarkdown()
			case "--bash":
				out = bashCompletion(app)
			case "--zsh":
				out = zshCompletion(app)
			}
			if err != nil {
				return cli.Exit(fmt.Sprintf("converter: docs: %v", err), exitUsage)
			}
			_, err = fmt.Fprint(c.App.Writer, out)
			return err
		},
	}
}

// docsApp is a copy of app with what a reader sees: its visible commands
// and flags, without the help command or the hidden ones.
func docsApp(app *cli.App) *cli.App {
	return &cli.App{
		Name:        app.Name,
		Usage:       app.Usage,
		UsageText:   app.UsageText,
		Description: app.Description,
		Version:     app.Version,
		Flags:       app.VisibleFlags(),
		Commands:    visibleCommands(app.Commands),
	}
}

func visibleCommands(cmds []*cli.Command) []*cli.Command {
	var out []*cli.Command
	for _, c := range cmds {
		if c.Hidden || c.Name == "help" {
			continue
		}
		cc := *c
		cc.Subcommands = visibleCommands(c.Subcommands)
		cc.Flags = c.VisibleFlags()
		out = append(out, &cc)
	}
	return out
}

// manPage is the converter(1) page: every command with its flags, and a
// SEE ALSO naming the per-command pages.
func manPage(app *cli.App) (string, error) {
	page, err := app.ToManWithSection(1)
	if err != nil {
		return "", err
	}
	var see []string
	for _, c := range app.Commands {
		see = append(see, fmt.Sprintf(`\fB%s-%s\fP(1)`, app.Name, c.Name))
	}
	if len(see) > 0 {
		page += ".SH SEE ALSO\n.PP\n" + strings.Join(see, ",\n") + "\n"
	}
	return page, nil
}

// commandManPage is the converter-NAME(1) page of the top-level command c.
func commandManPage(app *cli.App, c *cli.Command) (string, error) {
	usage := c.UsageText
	if usage == "" {
		usage = fmt.Sprintf("%s %s [command options]", app.Name, c.Name)
		if len(c.Subcommands) > 0 {
			usage = fmt.Sprintf("%s %s command [command options]", app.Name, c.Name)
		}
		if c.ArgsUsage != "" {
			usage += " " + c.ArgsUsage
		}
	}
	sub := &cli.App{
		Name:        app.Name + "-" + c.Name,
		Usage:       c.Usage,
		UsageText:   usage,
		Description: c.Description,
		Flags:       c.Flags,
		Commands:    c.Subcommands,
	}
	page, err := sub.ToManWithSection(1)
	if err != nil {
		return "", err
	}
	// The template names the program by the page's name and calls a
	// command's flags GLOBAL OPTIONS.
	page = strings.Replace(page, ".SH SYNOPSIS\n"+sub.Name+"\n", ".SH SYNOPSIS\n"+app.Name+" "+c.Name+"\n", 1)
	page = strings.Replace(page, ".SH GLOBAL OPTIONS\n", ".SH OPTIONS\n", 1)
	return page + fmt.Sprintf(".SH SEE ALSO\n.PP\n\\fB%s\\fP(1)\n", app.Name), nil
}

// writeManPages writes NAME.1 and NAME-COMMAND.1 for each command into dir.
func writeManPages(app *cli.App, dir string) error {
	pages := map[string]string{}
	page, err := manPage(app)
	if err != nil {
		return err
	}
	pages[app.Name+".1"] = page
	for _, c := range app.Commands {
		if pages[app.Name+"-"+c.Name+".1"], err = commandManPage(app, c); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return cli.Exit(fmt.Sprintf("converter: docs: %v", err), exitRefused)
	}
	for name, page := range pages {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(page), 0o644); err != nil {
			return cli.Exit(fmt.Sprintf("converter: docs: %v", err), exitRefused)
		}
	}
	return nil
}

// docNode is one command of the tree the completions walk: its path
// ("" for the app, "bpf status"), subcommands and flags.
type docNode struct {
	path     string
	commands []*cli.Command
	flags    []cli.Flag
	args     bool // takes arguments
}

func docTree(app *cli.App) []docNode {
	nodes := []docNode{{commands: app.Commands, flags: app.Flags}}
	var walk func(prefix string, cmds []*cli.Command)
	walk = func(prefix string, cmds []*cli.Command) {
		for _, c := range cmds {
			path := strings.TrimSpace(prefix + " " + c.Name)
			nodes = append(nodes, docNode{path: path, commands: c.Subcommands, flags: c.Flags, args: len(c.Subcommands) == 0 && c.ArgsUsage != ""})
			walk(path, c.Subcommands)
		}
	}
	walk("", app.Commands)
	return nodes
}

// flagNames are a flag's names as typed: --long or -s.
func flagNames(f cli.Flag) []string {
	var out []string
	for _, n := range f.Names() {
		n = strings.TrimSpace(n)
		if len(n) == 1 {
			out = append(out, "-"+n)
		} else {
			out = append(out, "--"+n)
		}
	}
	return out
}

func takesValueFlag(f cli.Flag) bool {
	d, ok := f.(cli.DocGenerationFlag)
	return ok && d.TakesValue()
}

func flagUsage(f cli.Flag) string {
	if d, ok := f.(cli.DocGenerationFlag); ok {
		// urfave/cli marks a value's placeholder with backquotes.
		return strings.ReplaceAll(oneLine(d.GetUsage()), "`", "")
	}
	return ""
}

// bashCompletion is a static bash completion script: commands after the
// commands that have subcommands, flags after a "-", the file names of
// bash's default completion for flag values and arguments.
func bashCompletion(app *cli.App) string {
	var cmds, flags, valued []string
	for _, n := range docTree(app) {
		var names, fl, vf []string
		for _, c := range n.commands {
			names = append(names, c.Names()...)
		}
		for _, f := range n.flags {
			fl = append(fl, flagNames(f)...)
			if takesValueFlag(f) {
				vf = append(vf, flagNames(f)...)
			}
		}
		// bash refuses an empty key: the app's own is its name.
		key := strings.TrimSpace(app.Name + " " + n.path)
		if len(names) > 0 {
			cmds = append(cmds, fmt.Sprintf("        [%q]=%q", key, strings.Join(names, " ")))
		}
		flags = append(flags, fmt.Sprintf("        [%q]=%q", key, strings.Join(fl, " ")))
		if len(vf) > 0 {
			valued = append(valued, fmt.Sprintf("        [%q]=%q", key, " "+strings.Join(vf, " ")+" "))
		}
	}
	fn := "_" + shellName(app.Name)
	var b strings.Builder
	fmt.Fprintf(&b, "# bash completion for %s; made by `%s docs --bash`.\n\n", app.Name, app.Name)
	fmt.Fprintf(&b, "%s() {\n", fn)
	b.WriteString(`    local cur prev words cword
    if declare -F _init_completion >/dev/null 2>&1; then
        _init_completion -n = || return
    else
        COMPREPLY=()
        words=("${COMP_WORDS[@]}")
        cword=$COMP_CWORD
        cur=${COMP_WORDS[COMP_CWORD]}
        prev=${COMP_WORDS[COMP_CWORD-1]}
    fi
`)
	fmt.Fprintf(&b, "    local -A cmds=(\n%s\n    )\n", strings.Join(cmds, "\n"))
	fmt.Fprintf(&b, "    local -A flags=(\n%s\n    )\n", strings.Join(flags, "\n"))
	fmt.Fprintf(&b, "    local -A valued=(\n%s\n    )\n", strings.Join(valued, "\n"))
	fmt.Fprintf(&b, "    local path=%s i w\n", app.Name)
	b.WriteString(`
    for ((i = 1; i < cword; i++)); do
        w=${words[i]}
        case $w in
        --) break ;;
        -*)
            if [[ $w != *=* && ${valued[$path]} == *" $w "* ]]; then
                ((i++))
            fi
            ;;
        *)
            if [[ " ${cmds[$path]} " == *" $w "* ]]; then
                path="$path $w"
            fi
            ;;
        esac
    done
    if [[ $cur != *=* && ${valued[$path]} == *" $prev "* ]]; then
        compopt -o default 2>/dev/null
        COMPREPLY=()
        return
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "${flags[$path]}" -- "$cur"))
        return
    fi
    if [[ -n ${cmds[$path]} ]]; then
        COMPREPLY=($(compgen -W "${cmds[$path]}" -- "$cur"))
        return
    fi
    compopt -o default 2>/dev/null
    COMPREPLY=()
}
`)
	fmt.Fprintf(&b, "complete -F %s %s\n", fn, app.Name)
	return b.String()
}

// zshCompletion is a static zsh completion function (_converter) in the
// _arguments style, with the usage of every command and flag.
func zshCompletion(app *cli.App) string {
	var b strings.Builder
	fmt.Fprintf(&b, "#compdef %s\n\n# zsh completion for %s; made by `%s docs --zsh`.\n", app.Name, app.Name, app.Name)
	for _, n := range docTree(app) {
		fn := "_" + shellName(app.Name)
		if n.path != "" {
			fn += "_" + shellName(strings.ReplaceAll(n.path, " ", "_"))
		}
		fmt.Fprintf(&b, "\n%s() {\n", fn)
		var specs []string
		for _, f := range n.flags {
			specs = append(specs, zshFlagSpec(f))
		}
		sort.Strings(specs)
		if len(n.commands) > 0 {
			b.WriteString("    local curcontext=$curcontext state line\n    typeset -A opt_args\n")
			specs = append(specs, "'1: :->command'", "'*:: :->args'")
			fmt.Fprintf(&b, "    _arguments -C -s \\\n        %s && return\n", strings.Join(specs, " \\\n        "))
			b.WriteString("    case $state in\n    command)\n        local -a commands=(\n")
			for _, c := range n.commands {
				for _, name := range c.Names() {
					fmt.Fprintf(&b, "            %s\n", zshQuote(strings.ReplaceAll(name, ":", `\:`)+":"+oneLine(c.Usage)))
				}
			}
			fmt.Fprintf(&b, "        )\n        _describe -t commands %s commands\n        ;;\n    args)\n        case $line[1] in\n", zshQuote(strings.TrimSpace(app.Name+" "+n.path)+" command"))
			for _, c := range n.commands {
				fmt.Fprintf(&b, "        %s) %s_%s ;;\n", strings.Join(c.Names(), "|"), fn, shellName(c.Name))
			}
			b.WriteString("        esac\n        ;;\n    esac\n}\n")
			continue
		}
		if n.args {
			specs = append(specs, "'*:argument:_default'")
		}
		if len(specs) == 0 {
			b.WriteString("    _message 'no more arguments'\n}\n")
			continue
		}
		fmt.Fprintf(&b, "    _arguments -s \\\n        %s\n}\n", strings.Join(specs, " \\\n        "))
	}
	fmt.Fprintf(&b, "\nif [[ $zsh_eval_context[-1] == loadautofunc ]]; then\n    _%s \"$@\"\nelse\n    compdef _%s %s\nfi\n", shellName(app.Name), shellName(app.Name), app.Name)
	return b.String()
}

// zshFlagSpec is the _arguments spec of f: exclusive with its other names,
// repeatable when it is a slice flag, with a value when it takes one.
func zshFlagSpec(f cli.Flag) string {
	names := flagNames(f)
	desc := "[" + zshBracket(flagUsage(f)) + "]"
	value := ""
	if takesValueFlag(f) {
		value = ":value:_default"
	}
	repeat := false
	if s, ok := f.(cli.DocGenerationSliceFlag); ok && s.IsSliceFlag() {
		repeat = true
	}
	var specs []string
	for _, n := range names {
		eq := ""
		if takesValueFlag(f) && strings.HasPrefix(n, "--") {
			eq = "="
		}
		prefix := ""
		switch {
		case repeat:
			prefix = "*"
		case len(names) > 1:
			prefix = "(" + strings.Join(names, " ") + ")"
		}
		specs = append(specs, zshQuote(prefix+n+eq+desc+value))
	}
	return strings.Join(specs, " ")
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// zshBracket escapes text for the [description] of an _arguments spec.
func zshBracket(s string) string {
	return strings.NewReplacer(`\`, `\\`, `]`, `\]`, `[`, `\[`, `:`, `\:`).Replace(s)
}

// zshQuote quotes s for zsh in single quotes.
func zshQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// shellName is name usable in a shell function name.
func shellName(name string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' {
			return r
		}
		return '_'
	}, name)
}

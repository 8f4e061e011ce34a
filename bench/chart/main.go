// Command chart turns the records of bench/run.sh into
// bench/results/latest.json, draws its chart and prints its tables:
//
//	chart summarize [-meta META.json] [-idle IDLE.json] [-synhold COUNTERS.json] RECORDS.jsonl > latest.json
//	chart draw latest.json latest.svg
//	chart table [-markdown] latest.json
//
// RECORDS.jsonl holds one `converter bench --json` result a line, tagged
// with "round" and "case" (the path), or {"round", "case", "mode",
// "direction", "failed": true} for a run that failed; the connect runs of
// the converter's MPTCP cases also carry "syn_to_reply", its SYN-to-reply
// histogram over the run. COUNTERS.json is the SYN hold converter's
// counters, kept as "syn_hold"."counters". It is a module of
// its own so that the plotting library (gonum.org/v1/plot) stays out of
// the converter's module; run it from the repository root with
// `go -C bench/chart run . ...` and absolute paths, or build it with
// `go -C bench/chart build -o /tmp/chart .`.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "chart:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage: chart summarize [-meta FILE] [-idle FILE] [-synhold FILE] RECORDS.jsonl | chart draw SUMMARY.json OUT.svg | chart table [-markdown] SUMMARY.json")

// run is the command with its arguments and output, for the tests.
func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errUsage
	}
	fs := flag.NewFlagSet("chart "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	switch args[0] {
	case "summarize":
		meta := fs.String("meta", "", "a JSON file with what the run was (date, kernel, options), kept as \"meta\"")
		idle := fs.String("idle", "", "a JSON file with the idle-session measurement, kept as \"idle\"")
		synhold := fs.String("synhold", "", "a JSON object with the SYN hold converter's counters, kept as \"syn_hold\".\"counters\"")
		if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 1 {
			return errUsage
		}
		return summarize(fs.Arg(0), *meta, *idle, *synhold, stdout)
	case "draw":
		if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 2 {
			return errUsage
		}
		s, err := readSummary(fs.Arg(0))
		if err != nil {
			return err
		}
		var buf bytes.Buffer
		if err := Draw(&buf, s); err != nil {
			return fmt.Errorf("draw: %w", err)
		}
		return os.WriteFile(fs.Arg(1), buf.Bytes(), 0o644)
	case "table":
		markdown := fs.Bool("markdown", false, "print Markdown tables, as the README quotes them")
		if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 1 {
			return errUsage
		}
		s, err := readSummary(fs.Arg(0))
		if err != nil {
			return err
		}
		return WriteTables(stdout, s, *markdown)
	}
	return errUsage
}

func summarize(records, metaFile, idleFile, synholdFile string, out io.Writer) error {
	f, err := os.Open(records)
	if err != nil {
		return err
	}
	defer f.Close()
	recs, raw, err := ReadRecords(f)
	if err != nil {
		return fmt.Errorf("%s: %w", records, err)
	}
	if len(recs) == 0 {
		return fmt.Errorf("%s: no records", records)
	}
	s := Summarize(recs)
	s.Records = raw
	if metaFile != "" {
		b, err := os.ReadFile(metaFile)
		if err != nil {
			return err
		}
		s.Meta = new(Meta)
		if err := json.Unmarshal(b, s.Meta); err != nil {
			return fmt.Errorf("%s: %w", metaFile, err)
		}
	}
	if idleFile != "" {
		b, err := os.ReadFile(idleFile)
		if err != nil {
			return err
		}
		if !json.Valid(b) {
			return fmt.Errorf("%s: not JSON", idleFile)
		}
		s.Idle = json.RawMessage(bytes.TrimSpace(b))
	}
	if synholdFile != "" {
		b, err := os.ReadFile(synholdFile)
		if err != nil {
			return err
		}
		b = bytes.TrimSpace(b)
		if !json.Valid(b) || len(b) == 0 || b[0] != '{' {
			return fmt.Errorf("%s: not a JSON object", synholdFile)
		}
		if s.SynHold == nil { // no connect run of the hold's case: the counters alone
			s.SynHold = &SynHold{Path: holdPath, Baseline: holdBaseline, ConnPerSecondRatioRounds: []float64{}}
		}
		s.SynHold.Counters = json.RawMessage(b)
	}
	b, err := marshalSummary(s)
	if err != nil {
		return err
	}
	_, err = out.Write(b)
	return err
}

// marshalSummary indents s, but keeps each record on one line, as it was
// measured.
func marshalSummary(s Summary) ([]byte, error) {
	recs := s.Records
	s.Records = nil
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return nil, err
	}
	const tail = "\"records\": null\n}"
	if !bytes.HasSuffix(b, []byte(tail)) {
		return nil, errors.New("marshal: records are not the last field")
	}
	b = append(b[:len(b)-len(tail)], "\"records\": ["...)
	for i, r := range recs {
		var line bytes.Buffer
		if err := json.Compact(&line, r); err != nil {
			return nil, err
		}
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, "\n    "...)
		b = append(b, line.Bytes()...)
	}
	if len(recs) > 0 {
		b = append(b, "\n  "...)
	}
	return append(b, "]\n}\n"...), nil
}

func readSummary(name string) (Summary, error) {
	var s Summary
	b, err := os.ReadFile(name)
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("%s: %w", name, err)
	}
	if s.Schema != SchemaVersion {
		return s, fmt.Errorf("%s: schema %d, this chart reads %d", name, s.Schema, SchemaVersion)
	}
	return s, nil
}

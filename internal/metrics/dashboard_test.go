package metrics

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

// dashboard is the shipped Grafana dashboard.
const dashboard = "../../dist/grafana/converter.json"

// exprs returns every "expr" string in a Grafana dashboard, wherever it
// is (panels, rows' panels, targets).
func exprs(v any) []string {
	var out []string
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if s, ok := x.(string); ok && k == "expr" {
				out = append(out, s)
				continue
			}
			out = append(out, exprs(x)...)
		}
	case []any:
		for _, x := range v {
			out = append(out, exprs(x)...)
		}
	}
	return out
}

var (
	promqlStrings  = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	promqlMatchers = regexp.MustCompile(`\{[^{}]*\}`)
	promqlRanges   = regexp.MustCompile(`\[[^\[\]]*\]`)
	promqlGrouping = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	promqlVars     = regexp.MustCompile(`\$\{?\w+\}?`)
	// An identifier not inside a number (1e3) or a duration (5m).
	promqlIdent    = regexp.MustCompile(`(?:^|[^A-Za-z0-9_:.])([A-Za-z_:][A-Za-z0-9_:]*)`)
	promqlKeywords = []string{"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}
)

// metricNames returns the metric names an expression selects: what is
// left once strings, label matchers, ranges, grouping clauses and
// Grafana variables are removed, minus function calls and keywords.
func metricNames(expr string) []string {
	e := promqlStrings.ReplaceAllString(expr, `""`)
	e = promqlVars.ReplaceAllString(e, " ")
	e = promqlMatchers.ReplaceAllString(e, " ")
	e = promqlRanges.ReplaceAllString(e, " ")
	e = promqlGrouping.ReplaceAllString(e, " ")
	var names []string
	for _, m := range promqlIdent.FindAllStringSubmatchIndex(e, -1) {
		name := e[m[2]:m[3]]
		rest := strings.TrimLeft(e[m[3]:], " \t\n")
		if strings.HasPrefix(rest, "(") || slices.Contains(promqlKeywords, strings.ToLower(name)) {
			continue // a function or an aggregation, or a keyword
		}
		names = append(names, name)
	}
	return names
}

func TestMetricNamesOfExpressions(t *testing.T) {
	for expr, want := range map[string][]string{
		`sum by (le) (rate(converter_x_bucket{instance=~"$instance",a="b{c}"}[$__rate_interval]))`:               {"converter_x_bucket"},
		`histogram_quantile(0.99, sum by (le) (rate(a_bucket[5m]))) / on (job) group_left (x) b offset 1h > 1e3`: {"a_bucket", "b"},
		`sum(rate(a{x="y"}[1m])) / sum(rate(b[1m])) * 8 and c`:                                                   {"a", "b", "c"},
		`sum(converter_sessions{instance=~"$instance"}) by (state)`:                                              {"converter_sessions"},
		`rate(x[5m:30s])`: {"x"},
	} {
		if got := metricNames(expr); !slices.Equal(got, want) {
			t.Errorf("%s: %v, want %v", expr, got, want)
		}
	}
}

// exportedNames gathers every name a scrape can hold: families, and the
// series of histograms and summaries.
func exportedNames(t *testing.T) map[string]bool {
	t.Helper()
	lp := newLoop(t)
	mfs, err := allSources(t, lp.srv).Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		n := mf.GetName()
		names[n] = true
		switch mf.GetType() {
		case dto.MetricType_HISTOGRAM:
			names[n+"_bucket"], names[n+"_sum"], names[n+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			names[n+"_sum"], names[n+"_count"] = true, true
		}
	}
	return names
}

// Every PromQL expression of the dashboard names only metrics the
// converter exports, and the dashboard uses every converter_ family.
func TestDashboardNamesExportedMetrics(t *testing.T) {
	b, err := os.ReadFile(dashboard)
	if err != nil {
		t.Fatal(err)
	}
	var d map[string]any
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboard, err)
	}
	names := exportedNames(t)
	list := exprs(d)
	if len(list) < 20 {
		t.Fatalf("%s: only %d expressions", dashboard, len(list))
	}
	used := map[string]bool{}
	for _, e := range list {
		ns := metricNames(e)
		if len(ns) == 0 {
			t.Errorf("expression selects no metric: %s", e)
		}
		if strings.Count(e, "(") != strings.Count(e, ")") || strings.Count(e, "{") != strings.Count(e, "}") {
			t.Errorf("unbalanced expression: %s", e)
		}
		for _, n := range ns {
			if !names[n] {
				t.Errorf("%s: %s is not exported", e, n)
			}
			used[strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")] = true
		}
	}
	for n := range names {
		if strings.HasPrefix(n, "converter_") && !strings.HasSuffix(n, "_bucket") && !strings.HasSuffix(n, "_sum") && !strings.HasSuffix(n, "_count") &&
			!used[n] && n != "converter_build_info" {
			t.Errorf("the dashboard does not show %s", n)
		}
	}
}

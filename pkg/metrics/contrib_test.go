package metrics_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forkd/forkd/pkg/metrics"
)

// What contrib/ and docs/observability.md say about the metrics is checked against what this
// package exports, and with Prometheus's own promtool.

const (
	alertRules  = "../../contrib/prometheus/forkd-alerts.yml"
	alertTests  = "../../contrib/prometheus/forkd-alerts.test.yml"
	dashboard   = "../../contrib/grafana/forkd-dashboard.json"
	observeDocs = "../../docs/observability.md"
)

func promtool(t *testing.T, args ...string) {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (Debian: apt-get install prometheus)")
	}
	out, err := exec.Command(bin, args...).CombinedOutput()
	require.NoError(t, err, "promtool %s:\n%s", strings.Join(args, " "), out)
}

// The alert rules are valid, and their unit tests pass: each alert fires on the history it is
// meant for and not on a close one.
func TestAlertRules(t *testing.T) {
	promtool(t, "check", "rules", alertRules)
	promtool(t, "test", "rules", alertTests)
}

// exported returns every series name the package exports (a histogram's _bucket, _sum and
// _count), by family type, from a scrape in which every family has a series.
func exported(t *testing.T) map[string]dto.MetricType {
	t.Helper()
	m := metrics.New(metrics.SourceFunc(clusterSnapshot))
	recordSome(m)
	families, err := m.Gatherer().Gather()
	require.NoError(t, err)
	names := make(map[string]dto.MetricType)
	for _, f := range families {
		names[f.GetName()] = f.GetType()
		if f.GetType() == dto.MetricType_HISTOGRAM {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				names[f.GetName()+suffix] = f.GetType()
			}
		}
	}
	return names
}

// metricNames finds the names of forkd's, the process's and the Go runtime's series in text.
var metricNames = regexp.MustCompile(`\b(?:forkd|process|go)_[a-z0-9_]+\b`)

func requireExported(t *testing.T, where, text string, names map[string]dto.MetricType) {
	t.Helper()
	found := 0
	for _, name := range metricNames.FindAllString(text, -1) {
		found++
		if _, ok := names[name]; !ok {
			t.Errorf("%s names %s, which pkg/metrics does not export", where, name)
		}
	}
	require.NotZero(t, found, "%s names no metric", where)
}

func TestAlertRulesNameExportedMetrics(t *testing.T) {
	b, err := os.ReadFile(alertRules)
	require.NoError(t, err)
	requireExported(t, alertRules, string(b), exported(t))
}

// docs/observability.md's reference table lists every forkd_ family, and nothing else.
func TestDocsListEveryFamily(t *testing.T) {
	b, err := os.ReadFile(observeDocs)
	require.NoError(t, err)
	var documented []string
	for line := range strings.Lines(string(b)) {
		if name, ok := strings.CutPrefix(line, "| `forkd_"); ok {
			documented = append(documented, "forkd_"+name[:strings.IndexByte(name, '`')])
		}
	}
	var families []string
	for name, typ := range exported(t) {
		if strings.HasPrefix(name, "forkd_") && !(typ == dto.MetricType_HISTOGRAM && regexp.MustCompile(`_(bucket|sum|count)$`).MatchString(name)) {
			families = append(families, name)
		}
	}
	slices.Sort(documented)
	slices.Sort(families)
	assert.Equal(t, families, documented, "docs/observability.md's table and the exported families differ")
	requireExported(t, observeDocs, string(b), exported(t))
}

type grafanaDashboard struct {
	UID           string          `json:"uid"`
	Title         string          `json:"title"`
	SchemaVersion int             `json:"schemaVersion"`
	Panels        []grafanaPanel  `json:"panels"`
	Templating    json.RawMessage `json:"templating"`
}

type grafanaPanel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

// grafanaVariables are the dashboard's variables, replaced by what Grafana would put there.
var grafanaVariables = strings.NewReplacer("$__rate_interval", "1m", "$__range", "6h", "$instance", ".*")

// The dashboard is provisioning-ready JSON (a uid, no data source of this machine's: its
// "datasource" variable), and every panel's expressions parse as PromQL (promtool checks them as
// recording rules) and name only exported metrics.
func TestDashboard(t *testing.T) {
	b, err := os.ReadFile(dashboard)
	require.NoError(t, err)
	var d grafanaDashboard
	dec := json.NewDecoder(strings.NewReader(string(b)))
	require.NoError(t, dec.Decode(&d))
	assert.Equal(t, "forkd-cluster", d.UID)
	assert.NotEmpty(t, d.Title)
	assert.GreaterOrEqual(t, d.SchemaVersion, 36, "a data source by uid needs schema 36 or later")
	assert.Contains(t, string(d.Templating), `"type": "datasource"`)
	assert.NotContains(t, string(b), "__inputs", "an export for import, not for provisioning")

	names := exported(t)
	ids := make(map[int]bool)
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	exprs := 0
	for _, p := range d.Panels {
		assert.False(t, ids[p.ID], "panel id %d twice", p.ID)
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		require.NotNil(t, p.Datasource, "panel %q has no data source", p.Title)
		assert.Equal(t, "${datasource}", p.Datasource.UID, "panel %q", p.Title)
		require.NotEmpty(t, p.Targets, "panel %q has no query", p.Title)
		for _, tg := range p.Targets {
			where := fmt.Sprintf("%s: panel %q, query %s", dashboard, p.Title, tg.RefID)
			requireExported(t, where, tg.Expr, names)
			quoted, err := json.Marshal(grafanaVariables.Replace(tg.Expr)) // a JSON string is a YAML one
			require.NoError(t, err)
			fmt.Fprintf(&rules, "      - record: dashboard:panel_%d_%s\n        expr: %s\n", p.ID, tg.RefID, quoted)
			exprs++
		}
	}
	require.Greater(t, exprs, 10)
	file := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	require.NoError(t, os.WriteFile(file, []byte(rules.String()), 0o644))
	promtool(t, "check", "rules", file)
}

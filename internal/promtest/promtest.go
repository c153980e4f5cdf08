// Package promtest runs a real Prometheus server for tests: the prometheus binary (Debian's
// prometheus package) with a temporary configuration and data directory, on 127.0.0.1,
// scraping the targets a test names every 500 ms, and queried through its HTTP API with
// client_golang's API client. A behaviour of forkd's metrics counts as shown when Prometheus
// itself scraped it and answers a query with it.
//
//	prom := promtest.Start(t, promtest.Target{Job: "forkd", Address: "127.0.0.1:9101"})
//	v := prom.WaitFor(t, `forkd_workers{state="ready"}`, promtest.Equals(4))
package promtest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forkd/forkd/internal/proctest"
	"github.com/prometheus/client_golang/api"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
)

// ScrapeInterval is how often the server scrapes each target.
const ScrapeInterval = 500 * time.Millisecond

// Deadline bounds every wait: generous, for a busy machine.
const Deadline = 60 * time.Second

// Target is an HTTP endpoint for Prometheus to scrape.
type Target struct {
	// Job names the scrape job: the job label of every series scraped from it.
	Job string
	// Address is host:port.
	Address string
	// MetricsPath is the URL path; "" means /metrics.
	MetricsPath string
}

// Server is a running Prometheus.
type Server struct {
	// URL is the server's base URL, http://127.0.0.1:PORT.
	URL string
	api v1.API

	cmd    *exec.Cmd
	exited chan struct{}
	logs   *proctest.Output
}

// Start starts Prometheus scraping targets, waits until it is ready, and stops it when the test
// ends (its log is printed if the test failed). It skips the test when no prometheus binary is
// installed, saying so.
func Start(t testing.TB, targets ...Target) *Server {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("prometheus not installed (Debian: apt-get install prometheus)")
	}
	dir := t.TempDir()
	config := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(config, []byte(configFor(targets)), 0o644); err != nil {
		t.Fatal(err)
	}
	// A free port, taken back at once: another process may take it meanwhile, so a start
	// that cannot listen is tried again on another one.
	for attempt := 1; ; attempt++ {
		s, err := start(bin, config, filepath.Join(dir, "data"))
		if err == nil {
			t.Cleanup(func() {
				s.stop()
				if t.Failed() {
					t.Logf("prometheus log:\n%s", s.logs.String())
				}
			})
			return s
		}
		if attempt == 3 {
			t.Fatalf("prometheus: %v", err)
		}
		t.Logf("prometheus did not start, again: %v", err)
	}
}

func configFor(targets []Target) string {
	var b strings.Builder
	fmt.Fprintf(&b, "global:\n  scrape_interval: %s\n  scrape_timeout: %s\n  evaluation_interval: %s\nscrape_configs:\n",
		model.Duration(ScrapeInterval), model.Duration(ScrapeInterval), model.Duration(ScrapeInterval))
	for _, tg := range targets {
		path := tg.MetricsPath
		if path == "" {
			path = "/metrics"
		}
		fmt.Fprintf(&b, "  - job_name: %q\n    metrics_path: %q\n    static_configs:\n      - targets: [%q]\n", tg.Job, path, tg.Address)
	}
	return b.String()
}

func start(bin, config, data string) (*Server, error) {
	addr, err := freeAddress()
	if err != nil {
		return nil, err
	}
	s := &Server{URL: "http://" + addr, exited: make(chan struct{}), logs: &proctest.Output{}}
	s.cmd = exec.Command(bin,
		"--config.file="+config,
		"--storage.tsdb.path="+data,
		"--web.listen-address="+addr,
		"--log.level=warn",
	)
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	// No Pdeathsig: it fires when the thread that started the server exits, and a goroutine
	// does not keep its thread. The test's cleanup stops the server.
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = s.cmd.Wait(); close(s.exited) }()
	client, err := api.NewClient(api.Config{Address: s.URL})
	if err != nil {
		s.stop()
		return nil, err
	}
	s.api = v1.NewAPI(client)

	deadline := time.Now().Add(Deadline)
	for {
		select {
		case <-s.exited:
			return nil, fmt.Errorf("exited at start (%v):\n%s", s.cmd.ProcessState, s.logs.String())
		default:
		}
		resp, err := http.Get(s.URL + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, nil
			}
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("not ready after %v:\n%s", Deadline, s.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freeAddress() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

func (s *Server) stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// Query evaluates a PromQL instant query now. A result that is not a vector is an error.
func (s *Server) Query(ctx context.Context, expr string) (model.Vector, error) {
	v, _, err := s.api.Query(ctx, expr, time.Now())
	if err != nil {
		return nil, err
	}
	vec, ok := v.(model.Vector)
	if !ok {
		return nil, fmt.Errorf("promtest: %s is a %s, not a vector", expr, v.Type())
	}
	return vec, nil
}

// WaitFor queries expr until cond accepts the result, and returns it; the test fails after
// Deadline, with the last result.
func (s *Server) WaitFor(t testing.TB, expr string, cond func(model.Vector) bool) model.Vector {
	t.Helper()
	deadline := time.Now().Add(Deadline)
	var last model.Vector
	var lastErr error
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		v, err := s.Query(ctx, expr)
		cancel()
		if err == nil && cond(v) {
			return v
		}
		last, lastErr = v, err
		if time.Now().After(deadline) {
			t.Fatalf("promtest: %s: after %v, still %v (error: %v)", expr, Deadline, last, lastErr)
		}
		time.Sleep(ScrapeInterval / 2)
	}
}

// WaitUp waits until Prometheus has scraped job successfully (up == 1).
func (s *Server) WaitUp(t testing.TB, job string) {
	t.Helper()
	s.WaitFor(t, fmt.Sprintf("up{job=%q}", job), Equals(1))
}

// Equals accepts a vector of exactly one sample whose value is want.
func Equals(want float64) func(model.Vector) bool {
	return func(v model.Vector) bool { return len(v) == 1 && float64(v[0].Value) == want }
}

// Present accepts a vector of at least one sample.
func Present(v model.Vector) bool { return len(v) > 0 }

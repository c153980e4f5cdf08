package test

import (
	"os/exec"
	"regexp"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forkd/forkd/pkg/control"
)

// A slow request in flight (curl's) is a busy thread of the worker that serves it, in the status,
// in forkctl status and in /metrics, as each runner counts them: forkd-rack from Puma's thread
// pool, forkd.gunicorn from the threaded worker's requests in flight and from the sync worker's
// one request. Once answered, the worker says it is idle again.
func TestBusyThreadsOfARequestInFlight(t *testing.T) {
	t.Parallel()
	requireTool(t, exec.Command("curl", "--version"), "curl")
	for _, tc := range []struct {
		name   string
		config func(t *testing.T) string
		start  func(t *testing.T, o options) *forkd
	}{
		{"forkd-rack", func(t *testing.T) string { requireRuby(t); return rackExample(t, 1, nil, "") }, startRuby},
		{"gunicorn-gthread", func(t *testing.T) string { return pythonApp(t, 1, nil, "") }, startPython},
		{"gunicorn-sync", func(t *testing.T) string {
			return gunicornConfig(t, 1, nil, "", "-k", "sync", "app:app")
		}, startPython},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := tc.start(t, options{config: tc.config(t)})
			f.waitReady(1)
			busy := func(st control.Status) (int, bool) {
				if len(st.WorkerList) != 1 || st.WorkerList[0].BusyThreads == nil {
					return 0, false
				}
				return *st.WorkerList[0].BusyThreads, true
			}
			f.waitFor("the worker idle, and saying so", func(st control.Status) bool { n, ok := busy(st); return ok && n == 0 })

			url := "http://" + f.addr() + "/slow?ms=8000"
			answered := make(chan string, 1)
			go func() {
				out, err := exec.Command("curl", "-sS", "--max-time", "120", "-o", "/dev/null", "-w", "%{http_code}",
					url).Output()
				if err != nil {
					out = append(out, []byte(err.Error())...)
				}
				answered <- string(out)
			}()
			st := f.waitFor("the slow request's thread busy", func(st control.Status) bool { n, ok := busy(st); return ok && n >= 1 })
			w := st.WorkerList[0]
			metric := regexp.MustCompile(`forkd_worker_busy_threads\{generation="` + strconv.Itoa(w.Generation) +
				`",index="0",role="[a-z]+"\} ([0-9]+)\n`)
			m := metric.FindStringSubmatch(f.scrapeControlSocket())
			require.NotNil(t, m, "forkd_worker_busy_threads of worker 0")
			n, _ := strconv.Atoi(m[1])
			assert.GreaterOrEqual(t, n, 1, "busy threads in /metrics while the request is in flight")
			text, code := f.forkctl("status")
			require.Equal(t, 0, code, text)
			assert.Regexp(t, `(?m)^INDEX +PID +GEN +ROLE +STATE +UPTIME +RESTARTS +REQUESTS +BUSY `, text)
			assert.Regexp(t, `(?m)^0 +`+strconv.Itoa(w.PID)+` +\d+ +\S+ +ready +\S+ +\d+ +\d+ +[1-9]\d* `, text, "worker 0's BUSY")

			assert.Equal(t, "200", <-answered, "the slow request's answer")
			f.waitFor("the worker idle again", func(st control.Status) bool { n, ok := busy(st); return ok && n == 0 })
		})
	}
}

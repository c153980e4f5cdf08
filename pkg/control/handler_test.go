package control

import (
	"io"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// A handler's path answers in the handler's own format, to GET only, and to a worker only as far
// as control.worker_access lets it read.
func TestWithHandler(t *testing.T) {
	metrics := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		io.WriteString(w, "forkd_up 1\n")
	})

	s := startServer(t, &fakeBackend{}, WithHandler("/metrics", metrics))
	reply := s.do(t, http.MethodGet, "/metrics", "")
	require.Equal(t, http.StatusOK, reply.code, reply.body)
	require.Equal(t, "forkd_up 1\n", reply.body)
	require.Equal(t, "text/plain; version=0.0.4", reply.header.Get("Content-Type"))

	reply = s.do(t, http.MethodPost, "/metrics", "")
	require.Equal(t, http.StatusMethodNotAllowed, reply.code, reply.body)
	require.Equal(t, "GET, HEAD", reply.header.Get("Allow"))
	require.Contains(t, reply.errorMessage(t), "/metrics does not accept POST")

	refusing := startServer(t, &fakeBackend{}, WithHandler("/metrics", metrics),
		WithWorkers(&fakeWorkers{worker: true}, WorkerAccessNone))
	reply = refusing.do(t, http.MethodGet, "/metrics", "")
	require.Equal(t, http.StatusForbidden, reply.code, reply.body)
	require.Contains(t, reply.errorMessage(t), "refuses its own workers")

	reading := startServer(t, &fakeBackend{}, WithHandler("/metrics", metrics),
		WithWorkers(&fakeWorkers{worker: true}, WorkerAccessStatus))
	reply = reading.do(t, http.MethodGet, "/metrics", "")
	require.Equal(t, http.StatusOK, reply.code, reply.body)
}

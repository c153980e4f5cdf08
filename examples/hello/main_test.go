package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"testing"

	"github.com/forkd/forkd/sdk/go/worker"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestHandlers(t *testing.T) {
	for _, name := range []string{"LISTEN_PID", "LISTEN_FDS", "NOTIFY_SOCKET", "WATCHDOG_USEC", worker.EnvWorker, worker.EnvGeneration} {
		t.Setenv(name, "")
	}
	w, err := worker.New()
	require.NoError(t, err)
	server := httptest.NewServer(countRequests(w, newMux(w)))
	defer server.Close()
	pid := strconv.Itoa(os.Getpid())

	tests := []struct {
		path       string
		wantStatus int
		wantBody   string
	}{
		{"/", http.StatusOK, "hello from worker -1 (pid " + pid + ", generation 0)\n"},
		{"/healthz", http.StatusOK, "ok\n"},
		{"/slow?ms=1", http.StatusOK, "slept 1 ms in worker -1 (pid " + pid + ", generation 0)\n"},
		{"/slow?ms=-1", http.StatusBadRequest, "ms must be a number of milliseconds, like /slow?ms=5000\n"},
		{"/slow", http.StatusBadRequest, "ms must be a number of milliseconds, like /slow?ms=5000\n"},
		{"/nothing-here", http.StatusNotFound, "404 page not found\n"},
	}
	for _, tt := range tests {
		resp, err := http.Get(server.URL + tt.path)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		assert.Equal(t, tt.wantStatus, resp.StatusCode, tt.path)
		assert.Equal(t, tt.wantBody, string(body), tt.path)
	}
	assert.Equal(t, uint64(len(tests)), w.Requests(), "every request is counted")
}

func TestDurationFromEnv(t *testing.T) {
	t.Setenv("HELLO_BOOT_DELAY", "")
	d, err := durationFromEnv("HELLO_BOOT_DELAY")
	assert.NoError(t, err)
	assert.Zero(t, d)
	t.Setenv("HELLO_BOOT_DELAY", "1.5s")
	d, err = durationFromEnv("HELLO_BOOT_DELAY")
	assert.NoError(t, err)
	assert.Equal(t, "1.5s", d.String())
	for _, bad := range []string{"soon", "-1s", "3"} {
		t.Setenv("HELLO_BOOT_DELAY", bad)
		_, err = durationFromEnv("HELLO_BOOT_DELAY")
		assert.EqualError(t, err, `HELLO_BOOT_DELAY="`+bad+`": want a duration like 3s or 500ms`)
	}
}

package control

import (
	"context"
	"errors"
	"net/http"
	"os"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

// fakeWorkers takes every peer for a worker, or for none, and counts the questions.
type fakeWorkers struct {
	worker bool
	err    error
	asked  atomic.Int32
	pids   chan int
}

func (w *fakeWorkers) IsWorker(_ context.Context, pid int) (bool, string, error) {
	w.asked.Add(1)
	if w.pids != nil {
		w.pids <- pid
	}
	if w.worker {
		return true, "pid 4250 is a descendant of worker 2 (pid 4242)", w.err
	}
	return false, "", w.err
}

func TestWorkersRefusedByDefault(t *testing.T) {
	scaled := make(chan ScaleRequest, 1)
	workers := &fakeWorkers{worker: true, pids: make(chan int, 4)}
	s := startServer(t, &fakeBackend{scale: func(_ context.Context, req ScaleRequest) (ScaleResponse, error) {
		scaled <- req
		return ScaleResponse{}, nil
	}}, WithWorkers(workers, WorkerAccessNone))

	reply := s.do(t, http.MethodPost, "/v1/scale", `{"workers": 1}`)
	require.Equal(t, http.StatusForbidden, reply.code, reply.body)
	msg := reply.errorMessage(t)
	require.Contains(t, msg, "refuses its own workers and their descendants, and pid 4250 is a descendant of worker 2 (pid 4242)")
	require.Contains(t, msg, `control.worker_access = "status" in forkd's config`)
	require.True(t, reply.close, "a refused peer's connection is closed")
	require.Equal(t, os.Getpid(), <-workers.pids, "the server asks about the process that connected")
	select {
	case req := <-scaled:
		t.Fatalf("a worker's scale reached the backend: %+v", req)
	default:
	}

	reply = s.do(t, http.MethodGet, "/v1/status", "")
	require.Equal(t, http.StatusForbidden, reply.code, reply.body)
}

func TestWorkersMayReadTheStatus(t *testing.T) {
	s := startServer(t, &fakeBackend{}, WithWorkers(&fakeWorkers{worker: true}, WorkerAccessStatus))

	_, err := s.client.Status(context.Background())
	require.NoError(t, err)

	_, err = s.client.Scale(context.Background(), ScaleRequest{Workers: 1})
	var e *Error
	require.ErrorAs(t, err, &e)
	require.Equal(t, http.StatusForbidden, e.Code)
	require.Contains(t, e.Message, `forkd's workers may only read its status (control.worker_access = "status")`)
	require.Contains(t, e.Message, `set control.worker_access = "full"`)
}

func TestWorkersWithFullAccess(t *testing.T) {
	workers := &fakeWorkers{worker: true}
	s := startServer(t, &fakeBackend{}, WithWorkers(workers, WorkerAccessFull))

	_, err := s.client.Scale(context.Background(), ScaleRequest{Workers: 1})
	require.NoError(t, err)
	require.Zero(t, workers.asked.Load(), "with full access there is nothing to ask")
}

func TestOperatorIsNotAWorker(t *testing.T) {
	workers := &fakeWorkers{}
	s := startServer(t, &fakeBackend{}, WithWorkers(workers, WorkerAccessNone))

	// Three requests on one connection: the question is asked once per connection.
	for range 3 {
		_, err := s.client.Scale(context.Background(), ScaleRequest{Workers: 1})
		require.NoError(t, err)
	}
	require.Equal(t, int32(1), workers.asked.Load())
}

func TestWorkerQuestionFailsClosed(t *testing.T) {
	s := startServer(t, &fakeBackend{}, WithWorkers(&fakeWorkers{err: errors.New("the master's loop is gone")}, WorkerAccessNone))

	_, err := s.client.Status(context.Background())
	var e *Error
	require.ErrorAs(t, err, &e)
	require.Equal(t, http.StatusForbidden, e.Code)
	require.Contains(t, e.Message, "cannot tell whether pid")
	require.Contains(t, e.Message, "the master's loop is gone")
}

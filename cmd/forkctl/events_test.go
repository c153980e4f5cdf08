package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/forkd/forkd/pkg/control"
	"github.com/stretchr/testify/require"
)

// follower is a forkctl that runs until it is interrupted, such as forkctl events, read line by
// line as it prints.
type follower struct {
	t     *testing.T
	cmd   *exec.Cmd
	lines chan string
	mu    sync.Mutex
	err   bytes.Buffer
}

func follow(t *testing.T, args ...string) *follower {
	t.Helper()
	f := &follower{t: t, cmd: exec.Command(forkctlBinary, args...), lines: make(chan string, 1000)}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, socketEnv+"=") {
			f.cmd.Env = append(f.cmd.Env, kv)
		}
	}
	out, err := f.cmd.StdoutPipe()
	require.NoError(t, err)
	f.cmd.Stderr = writerFunc(func(p []byte) (int, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.err.Write(p)
	})
	require.NoError(t, f.cmd.Start())
	go func() {
		scanner := bufio.NewScanner(out)
		for scanner.Scan() {
			f.lines <- scanner.Text()
		}
		close(f.lines)
	}()
	t.Cleanup(func() { f.cmd.Process.Kill(); f.cmd.Wait() })
	return f
}

type writerFunc func([]byte) (int, error)

func (w writerFunc) Write(p []byte) (int, error) { return w(p) }

func (f *follower) stderr() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err.String()
}

// next returns the next line it prints.
func (f *follower) next() string {
	f.t.Helper()
	select {
	case line, ok := <-f.lines:
		require.True(f.t, ok, "forkctl ended; stderr: %s", f.stderr())
		return line
	case <-time.After(time.Minute):
		f.t.Fatalf("forkctl printed nothing more; stderr: %s", f.stderr())
		panic("unreachable")
	}
}

// nextEvent returns the next line, decoded as an event.
func (f *follower) nextEvent() control.Event {
	f.t.Helper()
	line := f.next()
	var ev control.Event
	require.NoError(f.t, json.Unmarshal([]byte(line), &ev), line)
	return ev
}

// interrupt sends SIGINT, as Ctrl-C does, and returns the exit code.
func (f *follower) interrupt() int {
	f.t.Helper()
	require.NoError(f.t, f.cmd.Process.Signal(syscall.SIGINT))
	for range f.lines {
	}
	err := f.cmd.Wait()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		f.t.Fatal(err)
	}
	return f.cmd.ProcessState.ExitCode()
}

// publishUntilPrinted publishes ev into hub until f prints a line, and returns that line: the way
// to know that a stream without replay has begun.
func (f *follower) publishUntilPrinted(hub *control.EventHub, ev control.Event) string {
	f.t.Helper()
	end := time.Now().Add(time.Minute)
	for time.Now().Before(end) {
		hub.Publish(ev)
		select {
		case line, ok := <-f.lines:
			require.True(f.t, ok, "forkctl ended; stderr: %s", f.stderr())
			return line
		case <-time.After(50 * time.Millisecond):
		}
	}
	f.t.Fatalf("forkctl printed nothing; stderr: %s", f.stderr())
	panic("unreachable")
}

func crashEvent() control.Event {
	return control.Event{Type: control.EventWorkerExited, Message: "worker exited: exit status 1",
		Worker: &control.EventWorker{Index: 1, PID: 4301, Generation: 2}, Reason: control.ExitCrash, Status: "exit status 1"}
}

func TestEventsText(t *testing.T) {
	b := newFakeBackend()
	b.events.Publish(crashEvent())
	b.events.Publish(control.Event{Type: control.EventRolloutEnded, Kind: control.RolloutRefork, Generation: 3,
		Result: control.ResultFailed, DurationSeconds: 61.25, Error: "worker 2 did not become ready"})
	socket := serve(t, b)

	f := follow(t, "--socket", socket, "events", "--recent")
	stamp := `\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}`
	require.Regexp(t, regexp.MustCompile(`^`+stamp+`  worker-exited     worker 1 \(pid 4301, generation 2\) exited: crash \(exit status 1\)$`), f.next())
	require.Regexp(t, regexp.MustCompile(`^`+stamp+`  rollout-ended     refork failed, generation 3, after 1m1.3s: worker 2 did not become ready$`), f.next())

	// Then what happens from now on; a worker's text cannot write escapes to the terminal.
	b.events.Publish(control.Event{Type: control.EventSpawnFailed, Worker: &control.EventWorker{Index: 0, Generation: 3},
		Error: "exec: \x1b[2Jno such file"})
	require.Regexp(t, regexp.MustCompile(`spawn-failed      worker 0 \(generation 3\) could not be spawned: exec: \?\[2Jno such file$`), f.next())
	require.Equal(t, 0, f.interrupt(), "Ctrl-C is how one stops following")
}

func TestEventsJSON(t *testing.T) {
	b := newFakeBackend()
	socket := serve(t, b)
	f := follow(t, "--socket", socket, "events", "-o", "json")
	// Without --recent, only what comes after.
	var ev control.Event
	require.NoError(t, json.Unmarshal([]byte(f.publishUntilPrinted(b.events,
		control.Event{Type: control.EventScale, Workers: 4, Previous: 2})), &ev))
	require.Equal(t, control.EventScale, ev.Type)
	require.Equal(t, 4, ev.Workers)
	sent := b.events.Publish(crashEvent())
	for ev = f.nextEvent(); ev.Seq != sent.Seq; ev = f.nextEvent() {
	}
	require.True(t, sent.Time.Equal(ev.Time))
	ev.Time = sent.Time
	require.Equal(t, sent, ev, "the API's events, as they are")
	require.Equal(t, 0, f.interrupt())
}

// forkctl events follows forkd through a hot restart: the exec cuts the stream, and the new image,
// which took the events over, replays what forkctl missed meanwhile.
func TestEventsFollowHotRestart(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "control.sock")
	old := newFakeBackend()
	cut := serveCuttable(t, old, socket)
	f := follow(t, "--socket", socket, "events", "-o", "json", "--recent")
	old.events.Publish(control.Event{Type: control.EventRolloutStarted, Kind: control.RolloutRestart})
	require.Equal(t, control.EventRolloutStarted, f.nextEvent().Type)

	old.events.Publish(control.Event{Type: control.EventMasterRestart, Stage: control.MasterRestartExec})
	cut()
	renewed := newFakeBackend()
	renewed.events.Restore(old.events.Recent())
	renewed.events.Publish(control.Event{Type: control.EventMasterRestart, Stage: control.MasterRestartAdopted})
	serveAt(t, renewed, socket)
	renewed.events.Publish(control.Event{Type: control.EventRolloutEnded, Kind: control.RolloutRestart, Result: control.ResultSucceeded})

	var got []string
	for len(got) < 3 {
		ev := f.nextEvent()
		got = append(got, ev.Type+" "+ev.Stage+ev.Result)
	}
	require.Equal(t, []string{"master-restart exec", "master-restart adopted", "rollout-ended succeeded"}, got,
		"every event once, in order")
	require.Empty(t, f.stderr())
	require.Equal(t, 0, f.interrupt())
}

// After forkd says it stopped and its stream ends, forkctl events ends too.
func TestEventsEndWhenForkdStops(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "control.sock")
	b := newFakeBackend()
	cut := serveCuttable(t, b, socket)
	f := follow(t, "--socket", socket, "events")
	require.Contains(t, f.publishUntilPrinted(b.events, control.Event{Type: control.EventClusterStopped}), "every worker has exited")
	cut()
	for range f.lines {
	}
	require.NoError(t, f.cmd.Wait(), f.stderr())
}

func TestEventsErrors(t *testing.T) {
	r := forkctl(t, nil, "--socket", filepath.Join(t.TempDir(), "none.sock"), "events")
	require.Equal(t, exitNotRunning, r.code, r.stderr)
	r = forkctl(t, nil, "--socket", "x", "events", "-o", "yaml")
	require.Equal(t, exitUsage, r.code)
	require.Contains(t, r.stderr, `unknown output format "yaml": want text or json`)
}

package logging

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
	"github.com/forkd/forkd/internal/proctest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestJournalFieldName(t *testing.T) {
	tests := []struct {
		groups []string
		key    string
		want   string
	}{
		{nil, KeyWorker, "FORKD_WORKER"},
		{nil, KeyPID, "FORKD_PID"},
		{nil, KeyEvent, "FORKD_EVENT"},
		{nil, KeyGeneration, "FORKD_GENERATION"},
		{nil, "signal", "FORKD_SIGNAL"},
		{nil, "remote-addr", "FORKD_REMOTE_ADDR"},
		{nil, "Exit.Code", "FORKD_EXIT_CODE"},
		{nil, "already_UPPER_9", "FORKD_ALREADY_UPPER_9"},
		{nil, "9lives", "FORKD_9LIVES"},
		{nil, "_private", "FORKD__PRIVATE"},
		{nil, "", "FORKD_"},
		{nil, "ünïcode", "FORKD__N_CODE"},
		// Well-known keys are only well known at the top level.
		{[]string{"old"}, KeyPID, "FORKD_OLD_PID"},
		{[]string{"listen", "http"}, "addr", "FORKD_LISTEN_HTTP_ADDR"},
		{[]string{"a b"}, "c", "FORKD_A_B_C"},
		{nil, strings.Repeat("x", 100), "FORKD_" + strings.Repeat("X", 64-len("FORKD_"))},
	}
	for _, tt := range tests {
		t.Run(strings.Join(append(tt.groups, tt.key), "."), func(t *testing.T) {
			got := journalFieldName(tt.groups, tt.key)
			assert.Equal(t, tt.want, got)
			assert.LessOrEqual(t, len(got), 64)
			assert.Regexp(t, `^[A-Z][A-Z0-9_]*$`, got, "journald accepts the name")
		})
	}
}

func TestJournalPriority(t *testing.T) {
	tests := []struct {
		level slog.Level
		want  journal.Priority
	}{
		{slog.LevelDebug - 4, journal.PriDebug},
		{slog.LevelDebug, journal.PriDebug},
		{slog.LevelInfo - 1, journal.PriDebug},
		{slog.LevelInfo, journal.PriInfo},
		{slog.LevelInfo + 2, journal.PriInfo},
		{slog.LevelWarn, journal.PriWarning},
		{slog.LevelError, journal.PriErr},
		{slog.LevelError + 4, journal.PriErr},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, journalPriority(tt.level), tt.level.String())
	}
	// The numbers the brief promises, not just the constants' names.
	assert.Equal(t, journal.Priority(7), journalPriority(slog.LevelDebug))
	assert.Equal(t, journal.Priority(6), journalPriority(slog.LevelInfo))
	assert.Equal(t, journal.Priority(4), journalPriority(slog.LevelWarn))
	assert.Equal(t, journal.Priority(3), journalPriority(slog.LevelError))
}

// entry is one call to a fakeJournal.
type entry struct {
	message  string
	priority journal.Priority
	fields   map[string]string
}

// fakeJournal records what the handler would have sent to journald, and fails while err is set.
type fakeJournal struct {
	mu      sync.Mutex
	entries []entry
	err     error
}

func (j *fakeJournal) send(message string, priority journal.Priority, fields map[string]string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.err != nil {
		return j.err
	}
	j.entries = append(j.entries, entry{message, priority, fields})
	return nil
}

func (j *fakeJournal) only(t *testing.T) entry {
	t.Helper()
	j.mu.Lock()
	defer j.mu.Unlock()
	require.Len(t, j.entries, 1)
	return j.entries[0]
}

type lazyValue string

func (v lazyValue) LogValue() slog.Value { return slog.StringValue("resolved " + string(v)) }

func TestJournalHandlerFields(t *testing.T) {
	j := &fakeJournal{}
	var stderr bytes.Buffer
	logger := slog.New(newJournalHandler(j.send, "forkd@demo", slog.LevelInfo, &stderr))

	logger.With(KeyGeneration, 3).Warn("worker exited",
		KeyWorker, 2,
		KeyPID, 4242,
		KeyEvent, "worker-exited",
		"status", "signal: killed",
		"uptime", 1500*time.Millisecond,
		"err", errors.New("boom"),
		"lazy", lazyValue("x"),
		slog.Group("rusage", "maxrss-kb", 1024),
		slog.Group("", "inlined", true),
		slog.Group("empty"),
		slog.Attr{},
	)

	e := j.only(t)
	assert.Equal(t, "worker exited", e.message)
	assert.Equal(t, journal.PriWarning, e.priority)
	assert.Equal(t, "forkd@demo", e.fields["SYSLOG_IDENTIFIER"])
	assert.Equal(t, "logging_test.go", filepath.Base(e.fields["CODE_FILE"]))
	assert.NotEmpty(t, e.fields["CODE_LINE"])
	assert.Contains(t, e.fields["CODE_FUNC"], "TestJournalHandlerFields")
	delete(e.fields, "CODE_FILE")
	delete(e.fields, "CODE_LINE")
	delete(e.fields, "CODE_FUNC")
	assert.Equal(t, map[string]string{
		"SYSLOG_IDENTIFIER":      "forkd@demo",
		"FORKD_GENERATION":       "3",
		"FORKD_WORKER":           "2",
		"FORKD_PID":              "4242",
		"FORKD_EVENT":            "worker-exited",
		"FORKD_STATUS":           "signal: killed",
		"FORKD_UPTIME":           "1.5s",
		"FORKD_ERR":              "boom",
		"FORKD_LAZY":             "resolved x",
		"FORKD_RUSAGE_MAXRSS_KB": "1024",
		"FORKD_INLINED":          "true",
	}, e.fields)
	assert.Empty(t, stderr.String(), "nothing goes to stderr while journald takes the records")
}

func TestJournalHandlerGroups(t *testing.T) {
	j := &fakeJournal{}
	base := newJournalHandler(j.send, "forkd", slog.LevelInfo, &bytes.Buffer{})
	logger := slog.New(base).With("a", 1).WithGroup("g").With("b", 2).WithGroup("h")
	logger.Info("grouped", "c", 3, KeyWorker, 0)

	e := j.only(t)
	assert.Equal(t, "1", e.fields["FORKD_A"])
	assert.Equal(t, "2", e.fields["FORKD_G_B"])
	assert.Equal(t, "3", e.fields["FORKD_G_H_C"])
	assert.Equal(t, "0", e.fields["FORKD_G_H_WORKER"], "a key inside a group is not the well-known one")
	assert.NotContains(t, e.fields, "FORKD_WORKER")

	// Deriving from a handler leaves it unchanged.
	j.entries = nil
	slog.New(base).Info("plain", "c", 3)
	e = j.only(t)
	assert.Equal(t, "3", e.fields["FORKD_C"])
	assert.NotContains(t, e.fields, "FORKD_A")

	// WithGroup("") is a no-op, and a group that never gets an attribute leaves no trace.
	j.entries = nil
	slog.New(base).WithGroup("").WithGroup("unused").Info("bare")
	e = j.only(t)
	for name := range e.fields {
		assert.False(t, strings.HasPrefix(name, "FORKD_"), "unexpected field %s", name)
	}
}

func TestJournalHandlerLevel(t *testing.T) {
	j := &fakeJournal{}
	logger := slog.New(newJournalHandler(j.send, "forkd", slog.LevelWarn, &bytes.Buffer{}))
	assert.False(t, logger.Enabled(context.Background(), slog.LevelInfo))
	assert.True(t, logger.Enabled(context.Background(), slog.LevelWarn))
	logger.Info("dropped")
	logger.Debug("dropped")
	logger.Error("kept")
	e := j.only(t)
	assert.Equal(t, "kept", e.message)
	assert.Equal(t, journal.PriErr, e.priority)
}

func TestJournalHandlerFallsBackToStderr(t *testing.T) {
	j := &fakeJournal{err: errors.New("connection refused")}
	var stderr bytes.Buffer
	logger := slog.New(newJournalHandler(j.send, "forkd", slog.LevelInfo, &stderr)).With(KeyWorker, 1)

	logger.Info("first", KeyEvent, "worker-ready")
	logger.WithGroup("g").Error("second", "k", "v")

	lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n")
	require.Len(t, lines, 3, "one note about journald, then both records:\n%s", stderr.String())
	assert.Equal(t, "logging: cannot send to journald, writing records to stderr instead: connection refused", lines[0])
	assert.Contains(t, lines[1], "level=INFO msg=first worker=1 event=worker-ready")
	assert.Contains(t, lines[2], "level=ERROR msg=second worker=1 g.k=v")

	// Once journald is back, records go there again.
	j.err = nil
	logger.Info("third")
	assert.Equal(t, "third", j.only(t).message)
	assert.Len(t, strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n"), 3)
}

// TestJournalHandlerConcurrent is for the race detector: derived handlers share the fallback note.
func TestJournalHandlerConcurrent(t *testing.T) {
	j := &fakeJournal{err: errors.New("down")}
	var stderr proctest.Output
	logger := slog.New(newJournalHandler(j.send, "forkd", slog.LevelInfo, &stderr))
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			l := logger.With(KeyWorker, i)
			for range 50 {
				l.Info("tick")
			}
		})
	}
	wg.Wait()
	out := stderr.String()
	assert.Equal(t, 1, strings.Count(out, "cannot send to journald"))
	assert.Equal(t, 8*50, strings.Count(out, "msg=tick"))
}

// journalStreamOf returns the JOURNAL_STREAM value systemd would set if f were the journal stream.
func journalStreamOf(t *testing.T, f *os.File) string {
	t.Helper()
	info, err := f.Stat()
	require.NoError(t, err)
	st := info.Sys().(*syscall.Stat_t)
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

func TestNewAutoDetectsJournalStream(t *testing.T) {
	stream, err := os.Create(filepath.Join(t.TempDir(), "stream"))
	require.NoError(t, err)
	defer stream.Close()
	other, err := os.Create(filepath.Join(t.TempDir(), "other"))
	require.NoError(t, err)
	defer other.Close()

	tests := []struct {
		name          string
		journalStream string
		stderr        io.Writer
		format        string
		wantJournal   bool
	}{
		{"stderr is the stream", journalStreamOf(t, stream), stream, "", true},
		{"explicit auto", journalStreamOf(t, stream), stream, FormatAuto, true},
		{"another file", journalStreamOf(t, stream), other, "", false},
		{"no JOURNAL_STREAM", "", stream, "", false},
		{"malformed JOURNAL_STREAM", "not:numbers", stream, "", false},
		{"trailing junk", journalStreamOf(t, stream) + "x", stream, "", false},
		{"not a file", journalStreamOf(t, stream), &bytes.Buffer{}, "", false},
		{"text wins over the stream", journalStreamOf(t, stream), stream, FormatText, false},
		{"journal without the stream", "", other, FormatJournal, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("JOURNAL_STREAM", tt.journalStream)
			logger, err := New(Options{Format: tt.format}, tt.stderr)
			require.NoError(t, err)
			_, isJournal := logger.Handler().(*journalHandler)
			assert.Equal(t, tt.wantJournal, isJournal)
		})
	}
}

func TestNewFormats(t *testing.T) {
	t.Setenv("JOURNAL_STREAM", "")

	var text bytes.Buffer
	logger, err := New(Options{Level: "debug", Format: FormatText}, &text)
	require.NoError(t, err)
	logger.Debug("hello", KeyWorker, 1)
	assert.Contains(t, text.String(), "level=DEBUG msg=hello worker=1")

	var structured bytes.Buffer
	logger, err = New(Options{Level: "warn", Format: FormatJSON}, &structured)
	require.NoError(t, err)
	logger.Info("dropped")
	logger.Warn("kept", KeyPID, 7)
	var record map[string]any
	require.NoError(t, json.Unmarshal(structured.Bytes(), &record), structured.String())
	assert.Equal(t, "kept", record["msg"])
	assert.Equal(t, float64(7), record[KeyPID])

	var auto bytes.Buffer
	logger, err = New(Options{}, &auto)
	require.NoError(t, err)
	logger.Debug("dropped at the default level")
	logger.Info("plain text")
	assert.NotContains(t, auto.String(), "dropped")
	assert.Contains(t, auto.String(), "msg=\"plain text\"")
}

func TestNewRejectsUnknownOptions(t *testing.T) {
	_, err := New(Options{Level: "verbose"}, &bytes.Buffer{})
	assert.EqualError(t, err, `logging: unknown level "verbose" (want debug, info, warn or error)`)
	_, err = New(Options{Format: "xml"}, &bytes.Buffer{})
	assert.EqualError(t, err, `logging: unknown format "xml" (want auto, text, json or journal)`)
	_, err = New(Options{Level: "INFO"}, &bytes.Buffer{})
	assert.Error(t, err, "levels are lower case, as in the config")
}

// TestJournalFormatWithoutJournald uses the real journal.Send: on a machine without journald, every
// record must still reach stderr.
func TestJournalFormatWithoutJournald(t *testing.T) {
	if _, err := os.Stat("/run/systemd/journal/socket"); err == nil {
		t.Skip("journald is running here; records would really be sent")
	}
	var stderr bytes.Buffer
	logger, err := New(Options{Format: FormatJournal}, &stderr)
	require.NoError(t, err)
	logger.Info("not lost", KeyWorker, 3)
	assert.Contains(t, stderr.String(), "logging: cannot send to journald")
	assert.Contains(t, stderr.String(), "msg=\"not lost\" worker=3")
}

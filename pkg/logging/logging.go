// Package logging owns forkd's own log records: the log/slog handler the master and forkctl log
// through, chosen from the "log" block of the config (forkd.hcl(5)).
//
// With Format "auto" (the default), records go natively to journald when stderr is the journal
// stream, that is when systemd started forkd with StandardError=journal and JOURNAL_STREAM names
// stderr's device and inode (systemd.exec(5), "Automatic protocol upgrading" in
// https://systemd.io/JOURNAL_NATIVE_PROTOCOL/). Otherwise they are written to stderr as slog text.
//
// Natively, each record becomes one journal entry (sd_journal_send(3)): MESSAGE, PRIORITY from the
// level, SYSLOG_IDENTIFIER, CODE_FILE/CODE_LINE/CODE_FUNC, and one FORKD_* field per attribute, so
// that
//
//	journalctl -u forkd FORKD_WORKER=2
//	journalctl -u forkd FORKD_EVENT=worker-exited -o verbose
//
// select records without parsing text. The rest of forkd logs its well-known attributes under the
// Key constants below, which is what makes those fields stable.
//
// A record is never lost and logging never fails the caller: when journald cannot be reached, the
// record is written to stderr in text form instead.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"syscall"
)

// Attribute keys the rest of forkd logs with. In journald they become the fields named beside
// them; every other key k becomes FORKD_<K> (see the package doc).
const (
	// KeyWorker is a worker's index (slot), 0..workers-1. Journal field FORKD_WORKER.
	KeyWorker = "worker"
	// KeyPID is the process the record is about, such as a worker. Not forkd's own PID: journald
	// records that itself as _PID. Journal field FORKD_PID.
	KeyPID = "pid"
	// KeyEvent names what happened, in kebab-case ("worker-ready", "worker-exited"). Journal field
	// FORKD_EVENT.
	KeyEvent = "event"
	// KeyGeneration is the code generation a worker runs, incremented by each phased or hot
	// restart. Journal field FORKD_GENERATION.
	KeyGeneration = "generation"
)

// Formats accepted in Options.Format.
const (
	// FormatAuto selects FormatJournal when stderr is the journal stream, FormatText otherwise.
	FormatAuto = "auto"
	// FormatText writes slog's key=value text to stderr.
	FormatText = "text"
	// FormatJSON writes one slog JSON object per line to stderr.
	FormatJSON = "json"
	// FormatJournal sends records natively to journald, falling back to text on stderr for any
	// record journald does not take.
	FormatJournal = "journal"
)

// DefaultIdentifier is the SYSLOG_IDENTIFIER used when Options.Identifier is empty.
const DefaultIdentifier = "forkd"

// Options selects the handler New builds. The zero value is valid: info level, auto format,
// identifier "forkd".
type Options struct {
	// Level is the minimum level logged: "debug", "info", "warn" or "error". Empty means "info".
	Level string
	// Format is "auto", "text", "json" or "journal" (the Format constants). Empty means "auto".
	Format string
	// Identifier is the SYSLOG_IDENTIFIER of native journal entries, such as "forkd" or
	// "forkd@demo", so `journalctl -t forkd@demo` finds one instance's records. Empty means
	// DefaultIdentifier. The text and JSON formats do not use it.
	Identifier string
}

// New returns the logger o describes, writing to stderr whenever it does not write to journald.
//
// Outcomes:
//   - (logger, nil): o is valid. With FormatAuto, the logger writes to journald when stderr is an
//     *os.File that JOURNAL_STREAM names, and text otherwise; a missing or malformed
//     JOURNAL_STREAM just means stderr is not the journal stream.
//   - (nil, err): o.Level or o.Format is not one of the documented values.
func New(o Options, stderr io.Writer) (*slog.Logger, error) {
	level, err := ParseLevel(o.Level)
	if err != nil {
		return nil, err
	}
	format := o.Format
	if format == "" || format == FormatAuto {
		format = FormatText
		if isJournalStream(stderr, os.Getenv("JOURNAL_STREAM")) {
			format = FormatJournal
		}
	}
	identifier := o.Identifier
	if identifier == "" {
		identifier = DefaultIdentifier
	}
	handlerOptions := &slog.HandlerOptions{Level: level}
	switch format {
	case FormatText:
		return slog.New(slog.NewTextHandler(stderr, handlerOptions)), nil
	case FormatJSON:
		return slog.New(slog.NewJSONHandler(stderr, handlerOptions)), nil
	case FormatJournal:
		return slog.New(newJournalHandler(sendToJournal, identifier, level, stderr)), nil
	default:
		return nil, fmt.Errorf("logging: unknown format %q (want auto, text, json or journal)", o.Format)
	}
}

// ToJournal reports whether a logger made by New(o, stderr) writes to journald.
func ToJournal(o Options, stderr io.Writer) bool {
	switch o.Format {
	case FormatJournal:
		return true
	case "", FormatAuto:
		return isJournalStream(stderr, os.Getenv("JOURNAL_STREAM"))
	}
	return false
}

// ParseLevel returns the slog level named by s: "debug", "info", "warn" or "error", or "" for
// info. It returns an error for anything else, so config validation can report the same sentence.
func ParseLevel(s string) (slog.Level, error) {
	switch s {
	case "debug":
		return slog.LevelDebug, nil
	case "", "info":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	default:
		return 0, fmt.Errorf("logging: unknown level %q (want debug, info, warn or error)", s)
	}
}

// isJournalStream reports whether stderr is the stream JOURNAL_STREAM ("<dev>:<ino>") names.
//
// go-systemd's journal.StderrIsJournalStream answers the same question for file descriptor 2,
// but New writes to the stderr it is given, so this checks that writer instead: the answer then
// matches where text would go, and tests can pass a file of their own. Anything that is not an
// *os.File, or a JOURNAL_STREAM that does not parse, is not the journal stream.
func isJournalStream(stderr io.Writer, journalStream string) bool {
	file, ok := stderr.(*os.File)
	if !ok || file == nil || journalStream == "" {
		return false
	}
	var wantDev, wantIno uint64
	if _, err := fmt.Sscanf(journalStream, "%d:%d", &wantDev, &wantIno); err != nil {
		return false
	}
	// Sscanf accepts a prefix; "1:2junk" is as malformed as "junk".
	if fmt.Sprintf("%d:%d", wantDev, wantIno) != strings.TrimSpace(journalStream) {
		return false
	}
	info, err := file.Stat()
	if err != nil {
		return false
	}
	stat, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	return uint64(stat.Dev) == wantDev && stat.Ino == wantIno
}

package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
)

// journalFieldPrefix starts every field made from an attribute, so attributes never collide with
// journald's own fields (MESSAGE, PRIORITY, _PID, ...) and a field name never starts with '_' or
// a digit.
const journalFieldPrefix = "FORKD_"

// maxJournalFieldName is journald's limit on a field name's length: it drops fields with longer
// names (journal_field_valid() in systemd).
const maxJournalFieldName = 64

// wellKnownFields maps the Key constants, logged outside any group, to their journal fields.
var wellKnownFields = map[string]string{
	KeyWorker:     "FORKD_WORKER",
	KeyPID:        "FORKD_PID",
	KeyEvent:      "FORKD_EVENT",
	KeyGeneration: "FORKD_GENERATION",
}

// sendFunc delivers one entry to journald. It has journal.Send's signature, so the handler uses
// journal.Send in production, and tests, which cannot redirect journal.Send away from
// /run/systemd/journal/socket, pass a fake.
type sendFunc func(message string, priority journal.Priority, fields map[string]string) error

// sendToJournal is the production sendFunc.
var sendToJournal sendFunc = journal.Send

// journalHandler is an slog.Handler that sends each record to journald as one native entry. It is
// safe for concurrent use: its fields are read-only after construction, and WithAttrs/WithGroup
// return new handlers.
type journalHandler struct {
	send       sendFunc
	identifier string
	level      slog.Leveler
	// groups is the group path opened by WithGroup, outermost first.
	groups []string
	// fields holds the attributes added by WithAttrs, already named and formatted.
	fields map[string]string
	// fallback writes records journald refused, as text on stderr. It has seen the same
	// WithAttrs/WithGroup calls as this handler, so its records carry the same attributes.
	fallback slog.Handler
	// warned is shared by every handler derived from one newJournalHandler, so the note that
	// journald is unreachable is written once per logger, not once per record.
	warned *atomic.Bool
	stderr io.Writer
}

func newJournalHandler(send sendFunc, identifier string, level slog.Leveler, stderr io.Writer) *journalHandler {
	return &journalHandler{
		send:       send,
		identifier: identifier,
		level:      level,
		fields:     map[string]string{},
		fallback:   slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}),
		warned:     new(atomic.Bool),
		stderr:     stderr,
	}
}

// Enabled reports whether records at level are logged at all.
func (h *journalHandler) Enabled(_ context.Context, level slog.Level) bool {
	return level >= h.level.Level()
}

// Handle sends r to journald. If that fails, r is written to stderr as text instead, preceded (once
// per logger) by a line saying why, and Handle returns the text handler's error, if any: a record
// is only lost when stderr fails too.
func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	fields := make(map[string]string, len(h.fields)+r.NumAttrs()+4)
	for name, value := range h.fields {
		fields[name] = value
	}
	r.Attrs(func(a slog.Attr) bool {
		addAttr(fields, h.groups, a)
		return true
	})
	fields["SYSLOG_IDENTIFIER"] = h.identifier
	if r.PC != 0 {
		frame, _ := runtime.CallersFrames([]uintptr{r.PC}).Next()
		if frame.File != "" {
			fields["CODE_FILE"] = frame.File
			fields["CODE_LINE"] = strconv.Itoa(frame.Line)
		}
		if frame.Function != "" {
			fields["CODE_FUNC"] = frame.Function
		}
	}
	err := h.send(r.Message, journalPriority(r.Level), fields)
	if err == nil {
		return nil
	}
	if h.warned.CompareAndSwap(false, true) {
		// Written directly rather than as a record: this is about the logger, not about forkd.
		fmt.Fprintf(h.stderr, "logging: cannot send to journald, writing records to stderr instead: %v\n", err)
	}
	return h.fallback.Handle(ctx, r)
}

// WithAttrs returns a handler whose records carry attrs, named under the current group path.
func (h *journalHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	h2 := *h
	h2.fields = make(map[string]string, len(h.fields)+len(attrs))
	for name, value := range h.fields {
		h2.fields[name] = value
	}
	for _, a := range attrs {
		addAttr(h2.fields, h.groups, a)
	}
	h2.fallback = h.fallback.WithAttrs(attrs)
	return &h2
}

// WithGroup returns a handler that names later attributes under group name: attribute k becomes
// FORKD_<NAME>_<K>. An empty name changes nothing, as slog.Handler requires.
func (h *journalHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	h2 := *h
	h2.groups = append(h.groups[:len(h.groups):len(h.groups)], name)
	h2.fallback = h.fallback.WithGroup(name)
	return &h2
}

// addAttr adds a, found under the group path groups, to fields, following slog.Handler's rules:
// values are resolved, an attribute with an empty key and a zero value is dropped, a group with no
// attributes is dropped, and a group with an empty key is inlined.
func addAttr(fields map[string]string, groups []string, a slog.Attr) {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return
	}
	if a.Value.Kind() == slog.KindGroup {
		members := a.Value.Group()
		if len(members) == 0 {
			return
		}
		if a.Key != "" {
			groups = append(groups[:len(groups):len(groups)], a.Key)
		}
		for _, member := range members {
			addAttr(fields, groups, member)
		}
		return
	}
	fields[journalFieldName(groups, a.Key)] = journalValue(a.Value)
}

// journalFieldName names the journal field for attribute key under the group path groups.
//
// The Key constants, outside any group, map to FORKD_WORKER, FORKD_PID, FORKD_EVENT and
// FORKD_GENERATION. Any other attribute becomes FORKD_ followed by the groups and the key joined
// with '_', upper-cased, with every character journald does not allow in a field name (anything
// but A-Z, 0-9 and '_') replaced by '_', and cut to journald's 64 characters: "http" inside group
// "listen" is FORKD_LISTEN_HTTP, "remote-addr" is FORKD_REMOTE_ADDR.
func journalFieldName(groups []string, key string) string {
	if len(groups) == 0 {
		if name, ok := wellKnownFields[key]; ok {
			return name
		}
	}
	var b strings.Builder
	b.WriteString(journalFieldPrefix)
	for _, part := range append(groups[:len(groups):len(groups)], key) {
		if b.Len() > len(journalFieldPrefix) {
			b.WriteByte('_')
		}
		for _, c := range part {
			switch {
			case 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_':
				b.WriteRune(c)
			case 'a' <= c && c <= 'z':
				b.WriteRune(c - 'a' + 'A')
			default:
				b.WriteByte('_')
			}
		}
	}
	name := b.String()
	if len(name) > maxJournalFieldName {
		name = name[:maxJournalFieldName]
	}
	return name
}

// journalValue formats v the way slog's text handler would, minus the quoting: journal fields
// carry arbitrary bytes, so a value needs no escaping.
func journalValue(v slog.Value) string {
	switch v.Kind() {
	case slog.KindString:
		return v.String()
	case slog.KindTime:
		return v.Time().Format(time.RFC3339Nano)
	case slog.KindAny:
		if err, ok := v.Any().(error); ok && err != nil {
			return err.Error()
		}
		if b, ok := v.Any().([]byte); ok {
			return string(b)
		}
		return fmt.Sprint(v.Any())
	default:
		// Int64, Uint64, Float64, Bool, Duration: Value.String formats them as TextHandler does.
		return v.String()
	}
}

// journalPriority maps a level to a syslog priority (debug 7, info 6, warn 4, error 3). Levels
// between the named ones take the priority of the named level just below them, as slog prints
// them ("INFO+2" is info).
func journalPriority(level slog.Level) journal.Priority {
	switch {
	case level >= slog.LevelError:
		return journal.PriErr
	case level >= slog.LevelWarn:
		return journal.PriWarning
	case level >= slog.LevelInfo:
		return journal.PriInfo
	default:
		return journal.PriDebug
	}
}

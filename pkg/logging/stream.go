package logging

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// JournalStreamSocket is journald's socket for stdout streams (sd_journal_stream_fd(3)); a
// variable so tests can point it elsewhere.
var JournalStreamSocket = "/run/systemd/journal/stdout"

// JournalStream opens a stream to journald, as sd_journal_stream_fd(3) does: every line written to
// it becomes a journal record with SYSLOG_IDENTIFIER=identifier and the given syslog priority (a
// line may start with "<N>" to choose its own). forkd gives each worker its own, as its stdout and
// stderr, so that `journalctl -t IDENTIFIER` shows one worker's output.
//
// It returns the stream, blocking and close-on-exec, or an error when journald cannot be reached.
func JournalStream(identifier string, priority int) (*os.File, error) {
	identifier = strings.Map(func(r rune) rune {
		if r == '\n' {
			return ' '
		}
		return r
	}, identifier)
	c, err := net.Dial("unix", JournalStreamSocket)
	if err != nil {
		return nil, fmt.Errorf("logging: journal stream: %w", err)
	}
	defer c.Close()
	uc := c.(*net.UnixConn)
	// identifier, unit (none: journald finds it), priority, level prefix, forward to syslog, to
	// kmsg, to the console.
	header := identifier + "\n\n" + strconv.Itoa(priority) + "\n1\n0\n0\n0\n"
	if _, err := uc.Write([]byte(header)); err != nil {
		return nil, fmt.Errorf("logging: journal stream: %w", err)
	}
	uc.CloseRead()
	f, err := uc.File() // a dup, in blocking mode, as a child's stdout should be
	if err != nil {
		return nil, fmt.Errorf("logging: journal stream: %w", err)
	}
	return f, nil
}

// StreamID returns "DEV:INO" of f, the form of JOURNAL_STREAM, which tells a program whose stderr
// is that stream that it may log to journald natively.
func StreamID(f *os.File) (string, error) {
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "", fmt.Errorf("logging: no stat of %s", f.Name())
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino), nil
}

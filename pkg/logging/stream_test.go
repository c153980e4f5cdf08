package logging

import (
	"bufio"
	"net"
	"path/filepath"
	"strings"
	"testing"
)

// TestJournalStreamSpeaksTheProtocol plays journald: the stream starts with the header of
// sd_journal_stream_fd(3), then carries the lines written to it.
func TestJournalStreamSpeaksTheProtocol(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "stdout")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	old := JournalStreamSocket
	JournalStreamSocket = sock
	defer func() { JournalStreamSocket = old }()

	lines := make(chan []string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var got []string
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			got = append(got, sc.Text())
		}
		lines <- got
	}()
	f, err := JournalStream("demo-worker-2\nsneaky", 6)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("hello from worker 2\n"); err != nil {
		t.Fatal(err)
	}
	id, err := StreamID(f)
	if err != nil || !strings.Contains(id, ":") {
		t.Fatalf("StreamID = %q, %v", id, err)
	}
	f.Close()
	got := <-lines
	want := []string{"demo-worker-2 sneaky", "", "6", "1", "0", "0", "0", "hello from worker 2"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("journald got %q, want %q", got, want)
	}
}

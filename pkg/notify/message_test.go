package notify_test

import (
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forkd/forkd/pkg/notify"
)

// fields builds the Fields of a message from KEY=VALUE strings.
func fields(assignments ...string) []notify.Field {
	var fs []notify.Field
	for _, a := range assignments {
		k, v, _ := strings.Cut(a, "=")
		fs = append(fs, notify.Field{Key: k, Value: v})
	}
	return fs
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want notify.Message
	}{
		{"empty", "", notify.Message{}},
		{"only newlines", "\n\n", notify.Message{}},
		{"ready", notify.Ready, notify.Message{Ready: true, Fields: fields("READY=1")}},
		{"ready with status and trailing newline", "READY=1\nSTATUS=Serving on :8080\n", notify.Message{
			Ready: true, Status: "Serving on :8080", HasStatus: true,
			Fields: fields("READY=1", "STATUS=Serving on :8080"),
		}},
		{"empty lines skipped", "\nREADY=1\n\n\nSTOPPING=1\n", notify.Message{
			Ready: true, Stopping: true, Fields: fields("READY=1", "STOPPING=1"),
		}},
		{"empty status clears", "STATUS=", notify.Message{HasStatus: true, Fields: fields("STATUS=")}},
		{"status keeps '=' and UTF-8", "STATUS=load=0.5 ✓ démarré", notify.Message{
			Status: "load=0.5 ✓ démarré", HasStatus: true, Fields: fields("STATUS=load=0.5 ✓ démarré"),
		}},
		{"first status wins", "STATUS=one\nSTATUS=two", notify.Message{
			Status: "one", HasStatus: true, Fields: fields("STATUS=one", "STATUS=two"),
		}},
		{"watchdog", notify.Watchdog, notify.Message{Watchdog: true, Fields: fields("WATCHDOG=1")}},
		{"watchdog trigger", notify.WatchdogTrigger, notify.Message{WatchdogTrigger: true, Fields: fields("WATCHDOG=trigger")}},
		{"both watchdogs", "WATCHDOG=1\nWATCHDOG=trigger", notify.Message{
			Watchdog: true, WatchdogTrigger: true, Fields: fields("WATCHDOG=1", "WATCHDOG=trigger"),
		}},
		{"reload as systemd 253 wants it", "RELOADING=1\nMONOTONIC_USEC=123456789", notify.Message{
			Reloading: true, MonotonicUSec: 123456789, Fields: fields("RELOADING=1", "MONOTONIC_USEC=123456789"),
		}},
		{"watchdog timeout", "WATCHDOG_USEC=30000000", notify.Message{
			WatchdogTimeout: 30 * time.Second, Fields: fields("WATCHDOG_USEC=30000000"),
		}},
		{"first watchdog timeout wins", "WATCHDOG_USEC=1\nWATCHDOG_USEC=2", notify.Message{
			WatchdogTimeout: time.Microsecond, Fields: fields("WATCHDOG_USEC=1", "WATCHDOG_USEC=2"),
		}},
		{"extend timeout", "EXTEND_TIMEOUT_USEC=5000000", notify.Message{
			ExtendTimeout: 5 * time.Second, Fields: fields("EXTEND_TIMEOUT_USEC=5000000"),
		}},
		{"infinity is the longest duration", "EXTEND_TIMEOUT_USEC=18446744073709551615", notify.Message{
			ExtendTimeout: math.MaxInt64, Fields: fields("EXTEND_TIMEOUT_USEC=18446744073709551615"),
		}},
		{"errno", "ERRNO=2", notify.Message{Errno: 2, HasErrno: true, Fields: fields("ERRNO=2")}},
		{"errno zero", "ERRNO=0", notify.Message{HasErrno: true, Fields: fields("ERRNO=0")}},
		{"request count", "X_FORKD_REQUESTS=1234", notify.Message{
			Requests: 1234, HasRequests: true, Fields: fields("X_FORKD_REQUESTS=1234"),
		}},
		{"request count at the bound", "X_FORKD_REQUESTS=9007199254740991", notify.Message{
			Requests: notify.MaxRequests, HasRequests: true, Fields: fields("X_FORKD_REQUESTS=9007199254740991"),
		}},
		{"busy threads", "X_FORKD_REQUESTS=7\nX_FORKD_BUSY=3", notify.Message{
			Requests: 7, HasRequests: true, Busy: 3, HasBusy: true, Fields: fields("X_FORKD_REQUESTS=7", "X_FORKD_BUSY=3"),
		}},
		{"busy threads at the bound", "X_FORKD_BUSY=1000000", notify.Message{
			Busy: notify.MaxBusy, HasBusy: true, Fields: fields("X_FORKD_BUSY=1000000"),
		}},
		{"no busy thread", "X_FORKD_BUSY=0", notify.Message{
			HasBusy: true, Fields: fields("X_FORKD_BUSY=0"),
		}},
		{"busy threads: the first wins", "X_FORKD_BUSY=2\nX_FORKD_BUSY=5", notify.Message{
			Busy: 2, HasBusy: true, Fields: fields("X_FORKD_BUSY=2", "X_FORKD_BUSY=5"),
		}},
		{"heap size, kept as sent for the master to check, the first wins", "READY=1\nX_FORKD_HEAP_SIZE=RUBY_GC_HEAP_INIT_SLOTS=1300000\nX_FORKD_HEAP_SIZE=x", notify.Message{
			Ready: true, HeapSize: "RUBY_GC_HEAP_INIT_SLOTS=1300000", HasHeapSize: true,
			Fields: fields("READY=1", "X_FORKD_HEAP_SIZE=RUBY_GC_HEAP_INIT_SLOTS=1300000", "X_FORKD_HEAP_SIZE=x"),
		}},
		{"a bad heap size fails nothing else", "X_FORKD_HEAP_SIZE=PATH=/tmp\nREADY=1", notify.Message{
			Ready: true, HeapSize: "PATH=/tmp", HasHeapSize: true, Fields: fields("X_FORKD_HEAP_SIZE=PATH=/tmp", "READY=1"),
		}},
		{"request count zero", "X_FORKD_REQUESTS=0", notify.Message{
			HasRequests: true, Fields: fields("X_FORKD_REQUESTS=0"),
		}},
		{"unknown keys kept in order", "MAINPID=42\nFDSTORE=1\nX_FORKD_GENERATION=3\nREADY=1\nBUSERROR=org.example.Failed", notify.Message{
			Ready:  true,
			Fields: fields("MAINPID=42", "FDSTORE=1", "X_FORKD_GENERATION=3", "READY=1", "BUSERROR=org.example.Failed"),
		}},
		{"unknown key with empty value", "FDNAME=", notify.Message{Fields: fields("FDNAME=")}},
		{"digits and underscores in keys", "_1=x\n9_LIVES=y", notify.Message{Fields: fields("_1=x", "9_LIVES=y")}},
		{"carriage return is part of an unknown value", "CUSTOM=a\r", notify.Message{Fields: fields("CUSTOM=a\r")}},
		{"largest message", "STATUS=" + strings.Repeat("s", notify.MaxMessageSize-len("STATUS=")), notify.Message{
			Status:    strings.Repeat("s", notify.MaxMessageSize-len("STATUS=")),
			HasStatus: true,
			Fields:    fields("STATUS=" + strings.Repeat("s", notify.MaxMessageSize-len("STATUS="))),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := notify.Parse([]byte(tc.in))
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"no '='", "READY", `line 1: "READY" is not a KEY=VALUE assignment`},
		{"empty key", "=1", `line 1: invalid key ""`},
		{"lower-case key", "ready=1", `line 1: invalid key "ready"`},
		{"space in key", "READY =1", `line 1: invalid key "READY "`},
		{"dash in key", "X-FORKD=1", `line 1: invalid key "X-FORKD"`},
		{"READY=0", "READY=0", `line 1: READY: "0": the only valid value is 1`},
		{"READY=true", "READY=true", `line 1: READY: "true"`},
		{"RELOADING=yes", "RELOADING=yes", "line 1: RELOADING:"},
		{"STOPPING empty", "STOPPING=", "line 1: STOPPING:"},
		{"WATCHDOG=2", "WATCHDOG=2", `line 1: WATCHDOG: "2": the valid values are "1" and "trigger"`},
		{"status not UTF-8", "STATUS=\xff\xfe", "line 1: STATUS: not valid UTF-8"},
		{"WATCHDOG_USEC not a number", "WATCHDOG_USEC=30s", `line 1: WATCHDOG_USEC: "30s": must be a non-negative decimal integer`},
		{"WATCHDOG_USEC zero", "WATCHDOG_USEC=0", `line 1: WATCHDOG_USEC: "0": must be a positive number of microseconds`},
		{"WATCHDOG_USEC negative", "WATCHDOG_USEC=-1", "line 1: WATCHDOG_USEC:"},
		{"WATCHDOG_USEC with a space", "WATCHDOG_USEC= 5", "line 1: WATCHDOG_USEC:"},
		{"WATCHDOG_USEC with a sign", "WATCHDOG_USEC=+5", "line 1: WATCHDOG_USEC:"},
		{"EXTEND_TIMEOUT_USEC beyond uint64", "EXTEND_TIMEOUT_USEC=18446744073709551616", "line 1: EXTEND_TIMEOUT_USEC:"},
		{"EXTEND_TIMEOUT_USEC empty", "EXTEND_TIMEOUT_USEC=", "line 1: EXTEND_TIMEOUT_USEC:"},
		{"MONOTONIC_USEC hex", "MONOTONIC_USEC=0x10", "line 1: MONOTONIC_USEC:"},
		{"ERRNO negative", "ERRNO=-1", `line 1: ERRNO: "-1": not an errno`},
		{"ERRNO too large", "ERRNO=4294967296", "line 1: ERRNO:"},
		{"X_FORKD_REQUESTS negative", "X_FORKD_REQUESTS=-1", "line 1: X_FORKD_REQUESTS:"},
		{"X_FORKD_REQUESTS not a number", "X_FORKD_REQUESTS=many", "line 1: X_FORKD_REQUESTS:"},
		{"X_FORKD_BUSY negative", "X_FORKD_BUSY=-1", "line 1: X_FORKD_BUSY:"},
		{"X_FORKD_BUSY not a number", "X_FORKD_BUSY=some", "line 1: X_FORKD_BUSY:"},
		{"X_FORKD_BUSY over the bound", "X_FORKD_BUSY=1000001", "more requests at once than a worker can serve (at most 1000000)"},
		{"X_FORKD_BUSY 2^64", "X_FORKD_BUSY=18446744073709551616", "line 1: X_FORKD_BUSY:"},
		{"X_FORKD_REQUESTS 2^64-1", "X_FORKD_REQUESTS=18446744073709551615", "more requests than a worker can have served (at most 9007199254740991)"},
		{"X_FORKD_REQUESTS 2^53", "X_FORKD_REQUESTS=9007199254740992", "line 1: X_FORKD_REQUESTS:"},
		{"second of several lines", "READY=1\nSTATUS=ok\nbogus\n", `line 3: "bogus" is not`},
		{"later duplicate still checked", "READY=1\nREADY=2", "line 2: READY:"},
		{"NUL", "READY=1\x00", "NUL byte at offset 7"},
		{"too large", "STATUS=" + strings.Repeat("s", notify.MaxMessageSize-len("STATUS=")+1), "message of 65537 bytes exceeds the limit of 65536"},
		{"long value shortened", "READY=" + strings.Repeat("1", 1000), `"` + strings.Repeat("1", 64) + `"...`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := notify.Parse([]byte(tc.in))
			require.Error(t, err)
			assert.Equal(t, notify.Message{}, got, "nothing of an invalid message may be applied")
			assert.True(t, strings.HasPrefix(err.Error(), "notify: "), err.Error())
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"", "\n", notify.Ready, notify.Reloading, notify.Stopping, notify.Watchdog, notify.WatchdogTrigger,
		"READY=1\nSTATUS=Serving\n", "RELOADING=1\nMONOTONIC_USEC=123", "WATCHDOG_USEC=30000000",
		"EXTEND_TIMEOUT_USEC=18446744073709551615", "ERRNO=2", "X_FORKD_REQUESTS=99", "MAINPID=1\nFDSTORE=1",
		"STATUS=\xff", "READY=0", "=", "A=\r", "READY=1\x00", "STATUS=one\nSTATUS=two\nSTATUS=\xff",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		msg, err := notify.Parse(b)
		if err != nil {
			if !reflect.DeepEqual(msg, notify.Message{}) {
				t.Fatalf("Parse(%q) returned %+v with error %v", b, msg, err)
			}
			return
		}
		// Every field is a well-formed assignment, and the assignments alone say everything:
		// re-parsing them gives the same Message.
		lines := make([]string, len(msg.Fields))
		for i, f := range msg.Fields {
			if f.Key == "" || strings.ContainsAny(f.Key, "=\n\x00") || strings.ContainsAny(f.Value, "\n\x00") {
				t.Fatalf("Parse(%q): malformed field %q", b, f)
			}
			lines[i] = f.Key + "=" + f.Value
		}
		again, err := notify.Parse([]byte(strings.Join(lines, "\n")))
		if err != nil {
			t.Fatalf("Parse(%q) succeeded, but re-parsing its fields failed: %v", b, err)
		}
		if !reflect.DeepEqual(msg, again) {
			t.Fatalf("Parse(%q) = %+v, but re-parsing its fields gives %+v", b, msg, again)
		}
	})
}

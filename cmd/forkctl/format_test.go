package main

import (
	"bytes"
	"testing"
	"time"

	"github.com/forkd/forkd/pkg/control"
	"github.com/stretchr/testify/require"
)

func TestWriteStatusTable(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	st := control.Status{
		Name:       "demo",
		Version:    "forkd 1.0.0",
		MasterPID:  10,
		Uptime:     control.Duration(3*24*time.Hour + 4*time.Hour + 59*time.Minute),
		Phase:      control.PhaseRolling,
		Generation: 2,
		Workers:    3,
		Ready:      2,
		Mode:       control.ModeFork,
		Listeners: []control.Listener{
			{Name: "http", Address: "tcp://[::]:80"},
			{Name: "admin", Address: "unix:///run/app.sock"},
		},
		WorkerList: []control.Worker{
			{Index: 0, PID: 11, Generation: 2, State: control.WorkerReady, Uptime: control.Duration(time.Minute),
				StatusLine: "template\x1b[2J", Requests: 9},
			{Index: 1, PID: 12, Generation: 1, State: control.WorkerStopping, Uptime: control.Duration(59 * time.Second),
				Restarts: 1, Requests: 18446744073709551615},
			{Index: 2, Generation: 2, State: control.WorkerBackoff, Restarts: 12,
				LastExit: "killed by SIGKILL (heartbeat timeout)", NextRestart: now.Add(-time.Second)},
		},
	}

	var out bytes.Buffer
	require.NoError(t, writeStatusTable(&out, st, now))
	require.Equal(t, `name:                  demo
version:               forkd 1.0.0
master pid:            10
uptime:                3d4h
phase:                 rolling (generation 2)
workers:               2/3 ready (fork mode)
listeners:             http tcp://[::]:80, admin unix:///run/app.sock (bound by forkd)
dropped notifications: 0

INDEX  PID  GEN  STATE     UPTIME  RESTARTS  REQUESTS              STATUS
0      11   2    ready     1m      0         9                     template?[2J
1      12   1    stopping  59s     1         18446744073709551615  -
2      -    2    backoff   -       12        0                     last exit: killed by SIGKILL (heartbeat timeout); restarting now
`, out.String())
}

func TestHumanDuration(t *testing.T) {
	tests := map[time.Duration]string{
		-time.Second:                          "0s",
		0:                                     "0s",
		999 * time.Millisecond:                "0s",
		time.Second:                           "1s",
		59*time.Second + 999*time.Millisecond: "59s",
		time.Minute:                           "1m",
		12*time.Minute + 3*time.Second:        "12m3s",
		time.Hour + 30*time.Second:            "1h",
		2*time.Hour + 5*time.Minute:           "2h5m",
		24 * time.Hour:                        "1d",
		400*24*time.Hour + 23*time.Hour:       "400d23h",
	}
	for d, want := range tests {
		require.Equal(t, want, humanDuration(d), "humanDuration(%s)", d)
	}
}

func TestParseScale(t *testing.T) {
	valid := map[string]control.ScaleRequest{
		"1":   {Workers: 1},
		"16":  {Workers: 16},
		"+1":  {Delta: 1},
		"-4":  {Delta: -4},
		"010": {Workers: 10},
	}
	for arg, want := range valid {
		got, err := parseScale(arg)
		require.NoError(t, err, arg)
		require.Equal(t, want, got, arg)
	}
	for _, arg := range []string{"", "0", "+0", "-0", "x", "1x", "1.0", "++1", " 2", "99999999999999999999"} {
		_, err := parseScale(arg)
		var usage *usageError
		require.ErrorAs(t, err, &usage, "parseScale(%q)", arg)
	}
}

func TestNegativeNumbersAsArgs(t *testing.T) {
	tests := []struct{ in, want []string }{
		{[]string{"scale", "8"}, []string{"scale", "8"}},
		{[]string{"scale", "-2"}, []string{"scale", "--", "-2"}},
		{[]string{"scale", "-2", "--socket", "/s"}, []string{"scale", "--socket", "/s", "--", "-2"}},
		{[]string{"--timeout", "5s", "scale", "-10"}, []string{"--timeout", "5s", "scale", "--", "-10"}},
		{[]string{"scale", "--", "-2"}, []string{"scale", "--", "-2"}},
		{[]string{"scale", "-2", "--", "x"}, []string{"scale", "--", "-2", "x"}},
		{[]string{"status", "-o", "json"}, []string{"status", "-o", "json"}},
		{[]string{"scale", "-x2"}, []string{"scale", "-x2"}},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, negativeNumbersAsArgs(tt.in), "%q", tt.in)
	}
}

func TestPrintable(t *testing.T) {
	require.Equal(t, "a b c ?[31mred", printable("a\tb\nc \x1b[31mred"))
	require.Equal(t, "héllo ✓", printable("héllo ✓"))
}

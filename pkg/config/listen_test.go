package config

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestParseListenURL(t *testing.T) {
	tests := []struct {
		url              string
		network, address string
		wantErr          string
	}{
		{"tcp://127.0.0.1:8080", "tcp", "127.0.0.1:8080", ""},
		{"tcp://:8080", "tcp", ":8080", ""},
		{"tcp://localhost:0", "tcp", "localhost:0", ""},
		{"tcp4://0.0.0.0:80", "tcp4", "0.0.0.0:80", ""},
		{"tcp4://[::ffff:10.0.0.1]:80", "tcp4", "[::ffff:10.0.0.1]:80", ""},
		{"tcp6://[::]:443", "tcp6", "[::]:443", ""},
		{"tcp6://[fe80::1%eth0]:443", "tcp6", "[fe80::1%eth0]:443", ""},
		{"unix:///run/app.sock", "unix", "/run/app.sock", ""},
		{"unix://app.sock", "unix", "app.sock", ""},
		{"unix://@app", "unix", "@app", ""},
		{"", "", "", `"" is not a listen URL`},
		{"://x", "", "", `"://x" is not a listen URL`},
		{"TCP://:80", "", "", `unknown scheme "TCP"`},
		{"tcp://:80/path", "", "", `port "80/path" is not a number`},
		{"tcp://::1:80", "", "", `the address must be host:port`},
		{"tcp://:-1", "", "", `port "-1" is not a number`},
		{"tcp://:+80", "", "", `port "+80" is not a number`},
		{"tcp://:99999999999999999999", "", "", `port 99999999999999999999 is out of range 0..65535`},
		{"unix://a\x00b", "", "", `contains a NUL byte`},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			network, address, err := parseListenURL(tt.url)
			if tt.wantErr != "" {
				assert.ErrorContains(t, err, tt.wantErr)
				return
			}
			assert.NoError(t, err)
			assert.Equal(t, tt.network, network)
			assert.Equal(t, tt.address, address)
		})
	}
}

func TestParseMode(t *testing.T) {
	for s, want := range map[string]uint32{"0660": 0o660, "660": 0o660, "0o600": 0o600, "0": 0, "0777": 0o777} {
		m, err := parseMode(s)
		assert.NoError(t, err, s)
		assert.Equal(t, want, uint32(m), s)
	}
	for _, s := range []string{"", "0o", "8", "-1", "+660", "0x1ff", "1000", "rw-rw----"} {
		_, err := parseMode(s)
		assert.Error(t, err, s)
	}
}

package config

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// parseListenURL splits a listen address as written in the file or --listen ("tcp://127.0.0.1:8080",
// "tcp://:8080", "tcp6://[::1]:8080", "unix:///run/app.sock", "unix://@app") into the network and
// address that net.Listen takes. It does not use net/url, which would read "unix://@app" as a user
// name and "unix://run/app.sock" as a host.
func parseListenURL(s string) (network, address string, err error) {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok || scheme == "" {
		return "", "", fmt.Errorf("%q is not a listen URL like \"tcp://127.0.0.1:8080\" or \"unix:///run/app.sock\"", s)
	}
	switch scheme {
	case "tcp", "tcp4", "tcp6":
		if err := checkHostPort(scheme, rest); err != nil {
			return "", "", fmt.Errorf("%q: %w", s, err)
		}
		return scheme, rest, nil
	case "unix":
		switch {
		case rest == "":
			return "", "", fmt.Errorf("%q has no socket path, like \"unix:///run/app.sock\" or \"unix://@app\"", s)
		case rest == "@":
			return "", "", fmt.Errorf("%q has no name for the abstract socket after \"@\"", s)
		case strings.Contains(rest, "\x00"):
			return "", "", fmt.Errorf("%q contains a NUL byte", s)
		}
		return "unix", rest, nil
	default:
		return "", "", fmt.Errorf("%q has the unknown scheme %q; use tcp, tcp4, tcp6 or unix", s, scheme)
	}
}

// checkHostPort checks a tcp address: host:port, where the host may be empty (all addresses) and the
// port is a number (0 picks a free port). Service names are not looked up, so that a config means
// the same on every machine.
func checkHostPort(network, hostport string) error {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return fmt.Errorf("the address must be host:port, like %s://127.0.0.1:8080 or %s://:8080", network, network)
	}
	if port == "" || strings.Trim(port, "0123456789") != "" {
		return fmt.Errorf("port %q is not a number", port)
	}
	if n, err := strconv.Atoi(port); err != nil || n > 65535 {
		return fmt.Errorf("port %s is out of range 0..65535", port)
	}
	ip, err := netip.ParseAddr(host)
	switch {
	case host == "":
	case err != nil && !isHostName(host):
		return fmt.Errorf("host %q is neither an IP address nor a host name", host)
	case err != nil:
	case network == "tcp4" && !ip.Unmap().Is4():
		return fmt.Errorf("%s is not an IPv4 address, as tcp4 requires", host)
	case network == "tcp6" && ip.Is4():
		return fmt.Errorf("%s is not an IPv6 address, as tcp6 requires", host)
	}
	return nil
}

// isHostName reports whether host looks like a DNS name (letters, digits, '-', '_' and dots). It is
// resolved when forkd binds, not here.
func isHostName(host string) bool {
	if len(host) > 253 {
		return false
	}
	for _, r := range host {
		if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

// parseMode parses a unix socket's permission as an octal string: "0660", "660" or "0o660".
func parseMode(s string) (os.FileMode, error) {
	digits := strings.TrimPrefix(s, "0o")
	v, err := strconv.ParseUint(digits, 8, 32)
	if err != nil || digits == "" {
		return 0, fmt.Errorf("%q is not an octal permission like \"0660\"", s)
	}
	if v > 0o777 {
		return 0, fmt.Errorf("%q is more than 0777; setuid, setgid and sticky bits do not apply to sockets", s)
	}
	return os.FileMode(v), nil
}

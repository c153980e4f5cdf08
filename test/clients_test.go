package test

import (
	"encoding/json"
	"io"
	"os/exec"
	"strconv"
	"testing"

	"github.com/forkd/forkd/internal/proctest"
	"github.com/stretchr/testify/require"
)

// Third-party HTTP clients that do not retry, for the tests that count failed requests: Node's
// http client (test/clients/keepalive.js) here; wrk in drain_test.go.

// nodeResult is what test/clients/keepalive.js prints.
type nodeResult struct {
	OK       int            `json:"ok"`
	Errors   int            `json:"errors"`
	Statuses map[string]int `json:"statuses"`
	Samples  []string       `json:"samples"`
}

// failed counts the requests that got no answer and those answered with another status than 200.
func (r nodeResult) failed() int {
	n := r.Errors
	for _, c := range r.Statuses {
		n += c
	}
	return n
}

// nodeClient is test/clients/keepalive.js running against a URL until stop.
type nodeClient struct {
	t     *testing.T
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *proctest.Output
}

func requireNode(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed: apt-get install -y nodejs")
	}
	return node
}

// nodeRequests sends requests in all over connections keep-alive connections with Node's http
// client, and returns what it counted.
func nodeRequests(t *testing.T, url string, connections, requests int) nodeResult {
	t.Helper()
	cmd := exec.Command(requireNode(t), "clients/keepalive.js", url, strconv.Itoa(connections), strconv.Itoa(requests))
	var stderr proctest.Output
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "%s%s", out, stderr.String())
	var r nodeResult
	require.NoError(t, json.Unmarshal(out, &r), "%s%s", out, stderr.String())
	return r
}

// startNode runs Node's keep-alive client against url with connections connections until stop.
func startNode(t *testing.T, url string, connections int) *nodeClient {
	t.Helper()
	c := &nodeClient{t: t, out: &proctest.Output{}}
	c.cmd = exec.Command(requireNode(t), "clients/keepalive.js", url, strconv.Itoa(connections))
	c.cmd.Stdout = c.out
	c.cmd.Stderr = c.out
	var err error
	c.stdin, err = c.cmd.StdinPipe()
	require.NoError(t, err)
	require.NoError(t, c.cmd.Start())
	t.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			c.cmd.Process.Kill()
			c.cmd.Wait()
		}
	})
	return c
}

// stop closes the client's stdin: it waits for the requests in flight and prints its counts.
func (c *nodeClient) stop() nodeResult {
	c.t.Helper()
	c.stdin.Close()
	require.NoError(c.t, c.cmd.Wait(), "%s", c.out.String())
	var r nodeResult
	require.NoError(c.t, json.Unmarshal([]byte(c.out.String()), &r), "%s", c.out.String())
	return r
}

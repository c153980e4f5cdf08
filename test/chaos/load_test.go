package chaos

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The load is a client that never retries. Go's http.Transport retries an idempotent request
// that fails on a reused keep-alive connection before any byte of the response arrives, which is
// exactly the failure a worker that drains badly causes; so each of the load's clients writes its
// requests itself on a net.Conn and reads the response with http.ReadResponse, and every error is
// a failed request, counted with what the suite needs to explain it.

const (
	keepAliveClients = 4 // each reuses its connection for as long as the server keeps it
	freshClients     = 2 // each opens a new connection per request (Connection: close)
	// requestTimeout bounds one request. It outlasts a master that a fault killed and the suite
	// starts again: requests queue in the listening socket's backlog meanwhile.
	requestTimeout = 45 * time.Second
)

// failure is one failed request.
type failure struct {
	at time.Time
	// reused: the request went on a keep-alive connection that had answered before; pid is the
	// process that answered the previous request on it (0 for a new connection).
	reused bool
	pid    int
	// stage is where it failed: "connect", "write", "no response" (the connection ended or
	// broke before the first byte of the response), "response" (during it), "status" (not 200).
	stage string
	err   string
}

func (f failure) String() string {
	conn := "new connection"
	if f.reused {
		conn = fmt.Sprintf("reused connection last answered by pid %d", f.pid)
	}
	return fmt.Sprintf("%s: %s on a %s: %s", f.at.Format("15:04:05.000"), f.stage, conn, f.err)
}

type load struct {
	addr, path string
	stopping   atomic.Bool
	wg         sync.WaitGroup
	ok         atomic.Int64
	mu         sync.Mutex
	failures   []failure
	conns      map[net.Conn]bool
}

func startLoad(addr, path string) *load {
	l := &load{addr: addr, path: path, conns: map[net.Conn]bool{}}
	for i := range keepAliveClients + freshClients {
		l.wg.Add(1)
		go l.client(i < keepAliveClients)
	}
	return l
}

// stop ends the load: connections are cut, and what fails from then on is not counted.
func (l *load) stop() {
	l.stopping.Store(true)
	l.mu.Lock()
	for conn := range l.conns {
		conn.SetDeadline(time.Now())
	}
	l.mu.Unlock()
	l.wg.Wait()
}

// served is the number of requests answered so far.
func (l *load) served() int64 { return l.ok.Load() }

// failuresBetween returns the failures that happened in [from, to).
func (l *load) failuresBetween(from, to time.Time) []failure {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []failure
	for _, f := range l.failures {
		if !f.at.Before(from) && f.at.Before(to) {
			out = append(out, f)
		}
	}
	return out
}

func (l *load) fail(f failure) {
	if l.stopping.Load() {
		return
	}
	f.at = time.Now()
	l.mu.Lock()
	l.failures = append(l.failures, f)
	l.mu.Unlock()
}

func (l *load) track(conn net.Conn, on bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if on {
		l.conns[conn] = true
		if l.stopping.Load() {
			conn.SetDeadline(time.Now())
		}
	} else {
		delete(l.conns, conn)
	}
}

// countingConn counts the bytes read, to tell "no response at all" from "a broken response".
type countingConn struct {
	net.Conn
	read int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read += int64(n)
	return n, err
}

var pidInBody = regexp.MustCompile(`pid[ =](\d+)`)

func (l *load) client(keepAlive bool) {
	defer l.wg.Done()
	request := "GET " + l.path + " HTTP/1.1\r\nHost: " + l.addr + "\r\n"
	if !keepAlive {
		request += "Connection: close\r\n"
	}
	request += "\r\n"
	var conn *countingConn
	var br *bufio.Reader
	lastPID, answered := 0, 0 // on this connection
	drop := func() {
		if conn != nil {
			l.track(conn.Conn, false)
			conn.Close()
		}
		conn, br, lastPID, answered = nil, nil, 0, 0
	}
	defer drop()
	for !l.stopping.Load() {
		if conn == nil {
			c, err := net.DialTimeout("tcp", l.addr, 10*time.Second)
			if err != nil {
				l.fail(failure{stage: "connect", err: err.Error()})
				time.Sleep(100 * time.Millisecond)
				continue
			}
			conn = &countingConn{Conn: c}
			br = bufio.NewReader(conn)
			l.track(c, true)
		}
		f := failure{reused: answered > 0, pid: lastPID}
		conn.SetDeadline(time.Now().Add(requestTimeout))
		if _, err := io.WriteString(conn, request); err != nil {
			f.stage, f.err = "write", err.Error()
			l.fail(f)
			drop()
			continue
		}
		before := conn.read
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			f.stage, f.err = "response", err.Error()
			if conn.read == before {
				f.stage = "no response"
			}
			l.fail(f)
			drop()
			continue
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			f.stage, f.err = "response", err.Error()
			l.fail(f)
			drop()
			continue
		}
		if resp.StatusCode != http.StatusOK {
			f.stage, f.err = "status", fmt.Sprintf("%s: %.200s", resp.Status, body)
			l.fail(f)
			drop()
			continue
		}
		l.ok.Add(1)
		answered++
		if m := pidInBody.FindSubmatch(body); m != nil {
			lastPID, _ = strconv.Atoi(string(m[1]))
		}
		if !keepAlive || resp.Close {
			drop()
		}
	}
}

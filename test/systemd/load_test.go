package systemd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Both demo apps answer GET / with "hello from worker I (pid P, generation G)".
var helloRE = regexp.MustCompile(`^hello from worker (\d+) \(pid (\d+), generation (\d+)\)`)

// reply is what one demo response says.
type reply struct {
	worker, pid, generation int
}

func parseReply(body string) (reply, bool) {
	m := helloRE.FindStringSubmatch(body)
	if m == nil {
		return reply{}, false
	}
	var r reply
	r.worker, _ = strconv.Atoi(m[1])
	r.pid, _ = strconv.Atoi(m[2])
	r.generation, _ = strconv.Atoi(m[3])
	return r, true
}

// get makes one request to the demo app on addr from the host, on a connection of its own.
func get(ctx context.Context, addr, path string, timeout time.Duration) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// load is a bounded stream of requests from the host: a few clients, each one request at a time
// with a short pause between, half of them on keep-alive connections (as a proxy would) and half
// on a new connection per request. Every request must answer 200 with a demo reply.
type load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	ok      int
	failed  int
	refused int      // failures that were ECONNREFUSED: nothing listened on the address
	errs    []string // the first few failures
	seen    map[reply]int
	last    map[int]reply // the latest reply of each worker index
}

const (
	loadClients = 4
	loadPause   = 5 * time.Millisecond
)

func startLoad(ctx context.Context, addr string) *load {
	ctx, cancel := context.WithCancel(ctx)
	l := &load{cancel: cancel, seen: map[reply]int{}, last: map[int]reply{}}
	for i := 0; i < loadClients; i++ {
		transport := &http.Transport{DisableKeepAlives: i%2 == 1, MaxIdleConnsPerHost: 1,
			DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext}
		client := &http.Client{Transport: transport, Timeout: 15 * time.Second}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer transport.CloseIdleConnections()
			for ctx.Err() == nil {
				l.one(client, addr)
				select {
				case <-ctx.Done():
				case <-time.After(loadPause):
				}
			}
		}()
	}
	return l
}

func (l *load) one(client *http.Client, addr string) {
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	resp, err := client.Do(req)
	if err == nil {
		var body []byte
		body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("status %d: %q", resp.StatusCode, body)
		}
		if err == nil {
			r, ok := parseReply(string(body))
			if !ok {
				err = fmt.Errorf("unexpected reply %q", body)
			} else {
				l.mu.Lock()
				l.ok++
				l.seen[r]++
				l.last[r.worker] = r
				l.mu.Unlock()
				return
			}
		}
	}
	// Requests are not cancelled by stop: one in flight then completes, and a failure counts.
	l.mu.Lock()
	l.failed++
	if errors.Is(err, syscall.ECONNREFUSED) {
		l.refused++
	}
	if len(l.errs) < 10 {
		l.errs = append(l.errs, time.Now().Format("15:04:05.000")+" "+err.Error())
	}
	l.mu.Unlock()
}

// stop ends the load and waits for the requests in flight.
func (l *load) stop() {
	l.cancel()
	l.wg.Wait()
}

func (l *load) counts() (ok, failed int, errs []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ok, l.failed, append([]string(nil), l.errs...)
}

// refusedCount is how many requests found no socket listening (connection refused).
func (l *load) refusedCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.refused
}

// waitServed waits until the load has made n more successful requests, whatever fails meanwhile.
func (l *load) waitServed(ctx context.Context, n int) error {
	start, _, _ := l.counts()
	for {
		ok, _, _ := l.counts()
		if ok >= start+n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the load made %d successful requests, not %d: %w", ok-start, n, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitRequests waits until the load has made n more successful requests, to be sure it runs.
func (l *load) waitRequests(ctx context.Context, n int) error {
	start, _, _ := l.counts()
	for {
		ok, failed, errs := l.counts()
		if ok >= start+n {
			return nil
		}
		if failed > 0 {
			return fmt.Errorf("%d failed requests already: %v", failed, errs)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the load made %d requests, not %d: %w", ok-start, n, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

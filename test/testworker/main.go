// Command testworker is the application the integration tests run under forkd. It speaks the
// worker side of the protocol with raw syscalls rather than an SDK, so the tests check exactly what
// forkd hands a worker. Its behaviour is chosen with flags:
//
//	testworker [-ready self|child|never] [-crash-after D] [-exit-code N] [-ignore-term]
//	           [-heartbeat=false] [-boot-delay D] [-crash-if-file PATH] [-spawn-orphan]
//
// It serves HTTP on every inherited listener:
//
//	GET /        "worker=<FORKD_WORKER> pid=<pid> generation=<FORKD_GENERATION>"
//	GET /slow?ms=N   the same after N milliseconds; with &announce=ID, it prints "slow request
//	                 ID received" on stdout first
//	GET /fds     the descriptors that were open when main started, e.g. "0 1 2 3"
//	GET /env?k=K the value of environment variable K
//	GET /version the contents of ./VERSION when the worker started, "none" without one
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/forkd/forkd/sdk/go/worker"
)

// openAtStart is filled before anything else runs, so this program's own descriptors do not pose
// as leaks. The Go runtime opens its cgroup CPU limit files before main (for GOMAXPROCS); those
// are its own and left out.
var openAtStart = openFDs()

func openFDs() string {
	var fds []string
	for fd := 0; fd < 1024; fd++ {
		if _, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_GETFD, 0); errno != 0 {
			continue
		}
		if target, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd)); strings.HasPrefix(target, "/sys/fs/cgroup/") {
			continue
		}
		fds = append(fds, strconv.Itoa(fd))
	}
	return strings.Join(fds, " ")
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "notify-helper" {
		// A descendant of the worker sends READY=1 on its behalf, as apps' helper processes do.
		notifyOrDie(os.Args[2])
		return
	}
	ready := flag.String("ready", "self", "who sends READY=1: self, child (a helper process), never")
	crashAfter := flag.Duration("crash-after", 0, "exit with -exit-code this long after becoming ready")
	exitCode := flag.Int("exit-code", 1, "exit code for -crash-after")
	ignoreTerm := flag.Bool("ignore-term", false, "ignore SIGTERM")
	heartbeat := flag.Bool("heartbeat", true, "send WATCHDOG=1 every WATCHDOG_USEC/2")
	bootDelay := flag.Duration("boot-delay", 0, "wait this long before READY=1")
	crashIfFile := flag.String("crash-if-file", "", "exit 1 at boot while this file exists")
	spawnOrphan := flag.Bool("spawn-orphan", false, "leave a grandchild behind that outlives its parent, as daemonizing helpers do")
	flag.Parse()

	if *crashIfFile != "" {
		if _, err := os.Stat(*crashIfFile); err == nil {
			fmt.Fprintln(os.Stderr, "testworker: crash file present, exiting")
			os.Exit(1)
		}
	}
	if pid := os.Getenv("LISTEN_PID"); pid != strconv.Itoa(os.Getpid()) {
		fmt.Fprintf(os.Stderr, "testworker: LISTEN_PID=%q, my pid is %d\n", pid, os.Getpid())
		os.Exit(3)
	}
	n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))

	srv := &http.Server{Handler: handler()}
	var listeners []net.Listener
	for i := 0; i < n; i++ {
		f := os.NewFile(uintptr(3+i), "listener")
		l, err := net.FileListener(f)
		if err != nil {
			fmt.Fprintln(os.Stderr, "testworker:", err)
			os.Exit(3)
		}
		f.Close()
		listeners = append(listeners, l)
	}

	sigs := make(chan os.Signal, 1)
	if *ignoreTerm {
		signal.Ignore(syscall.SIGTERM)
	} else {
		signal.Notify(sigs, syscall.SIGTERM)
	}

	// net/http's Shutdown drops a request read after it began; the SDK's drainer does not (the
	// worker protocol itself is spoken here without the SDK).
	drainer := worker.NewHTTPDrainer(srv, listeners)
	time.Sleep(*bootDelay)
	if *ready != "never" {
		// A worker that never gets ready is a hung boot: it serves nothing.
		for _, l := range listeners {
			go drainer.Serve(l)
		}
	}
	switch *ready {
	case "self":
		notify("READY=1\nSTATUS=serving")
	case "child":
		cmd := exec.Command("/proc/self/exe", "notify-helper", "READY=1\nSTATUS=ready via helper")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "testworker: helper:", err)
		}
	}
	if us, _ := strconv.Atoi(os.Getenv("WATCHDOG_USEC")); us > 0 && *heartbeat {
		go func() {
			for range time.Tick(time.Duration(us) * time.Microsecond / 2) {
				notify("WATCHDOG=1")
			}
		}()
	}
	if *spawnOrphan {
		// sh exits at once; its background sleep is re-parented to the nearest subreaper, the master.
		exec.Command("/bin/sh", "-c", "sleep 0.3 & exit 0").Run()
	}
	var crash <-chan time.Time
	if *crashAfter > 0 {
		crash = time.After(*crashAfter)
	}
	select {
	case <-sigs:
		// Drain: finish in-flight requests, then exit.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		drainer.Shutdown(ctx)
		os.Exit(0)
	case <-crash:
		os.Exit(*exitCode)
	}
}

func handler() http.Handler {
	mux := http.NewServeMux()
	hello := func(w http.ResponseWriter) {
		fmt.Fprintf(w, "worker=%s pid=%d generation=%s\n", os.Getenv("FORKD_WORKER"), os.Getpid(), os.Getenv("FORKD_GENERATION"))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { hello(w) })
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		if r.URL.Query().Has("announce") {
			fmt.Printf("slow request %s received\n", r.URL.Query().Get("announce"))
		}
		time.Sleep(time.Duration(ms) * time.Millisecond)
		hello(w)
	})
	mux.HandleFunc("/fds", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, openAtStart) })
	release := "none"
	if b, err := os.ReadFile("VERSION"); err == nil {
		release = strings.TrimSpace(string(b))
	}
	mux.HandleFunc("/version", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, release) })
	mux.HandleFunc("/env", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, os.Getenv(r.URL.Query().Get("k")))
	})
	return mux
}

func notify(state string) {
	if err := send(state); err != nil {
		fmt.Fprintln(os.Stderr, "testworker: notify:", err)
	}
}

func notifyOrDie(state string) {
	if err := send(state); err != nil {
		fmt.Fprintln(os.Stderr, "testworker: notify:", err)
		os.Exit(1)
	}
	if err := barrier(); err != nil {
		fmt.Fprintln(os.Stderr, "testworker: notify barrier:", err)
		os.Exit(1)
	}
}

// barrier is sd_notify_barrier(3): it sends BARRIER=1 with the write end of a pipe and waits until
// the receiver has closed it, so this short-lived helper is still alive, and traceable to its
// worker, when the master looks at who sent its READY=1.
func barrier() error {
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC); err != nil {
		return err
	}
	defer syscall.Close(p[0])
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr[0] == '@' {
		addr = "\x00" + addr[1:]
	}
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		syscall.Close(p[1])
		return err
	}
	defer syscall.Close(fd)
	err = syscall.Sendmsg(fd, []byte("BARRIER=1"), syscall.UnixRights(p[1]), &syscall.SockaddrUnix{Name: addr}, 0)
	syscall.Close(p[1])
	if err != nil {
		return err
	}
	// The read end sees EOF once every copy of the write end, the master's included, is closed.
	_, err = syscall.Read(p[0], make([]byte, 1))
	return err
}

func send(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return fmt.Errorf("NOTIFY_SOCKET is not set")
	}
	if addr[0] == '@' {
		addr = "\x00" + addr[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}

package notify_test

import (
	"fmt"
	"os"

	"github.com/forkd/forkd/pkg/notify"
)

// The master's side: a worker (here this very process) reports readiness, and the master learns
// who sent it and what it means.
func ExampleSocket_Receive() {
	sock, err := notify.Listen(notify.NewAbstractAddr())
	if err != nil {
		panic(err)
	}
	defer sock.Close()

	// What a worker's sd_notify(3) does with NOTIFY_SOCKET=sock.Addr().
	if err := notify.Send(sock.Addr(), "READY=1\nSTATUS=Serving\nX_FORKD_REQUESTS=0"); err != nil {
		panic(err)
	}

	d, err := sock.Receive()
	if err != nil {
		panic(err)
	}
	msg, err := notify.Parse(d.Data)
	if err != nil {
		panic(err)
	}
	fmt.Println("from this process:", d.PID == os.Getpid())
	fmt.Printf("ready=%v status=%q requests=%d\n", msg.Ready, msg.Status, msg.Requests)
	// Output:
	// from this process: true
	// ready=true status="Serving" requests=0
}

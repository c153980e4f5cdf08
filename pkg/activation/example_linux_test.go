package activation_test

import (
	"fmt"

	"github.com/forkd/forkd/pkg/activation"
)

// A worker gets the master's listeners as fds 3, 4, ... with these variables; the shim adds
// LISTEN_PID.
func ExampleWorkerEnv() {
	listeners, err := activation.Bind([]activation.Spec{
		{Name: "web", Network: "tcp4", Address: "127.0.0.1:0"},
		{Name: "admin", Network: "unix", Address: "@forkd-example-admin"},
	})
	if err != nil {
		panic(err)
	}
	defer activation.CloseAll(listeners)

	fmt.Println(activation.WorkerEnv(listeners))
	fmt.Println(len(activation.WorkerFiles(listeners)), "descriptors")
	// Output:
	// [LISTEN_FDS=2 LISTEN_FDNAMES=web:admin]
	// 2 descriptors
}

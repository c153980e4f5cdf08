package config_test

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/pflag"

	"github.com/forkd/forkd/pkg/config"
)

// A problem in a config file is reported where it is, with the line it is on.
func ExampleDiagnosticsError_WriteTo() {
	_, err := config.Parse([]byte(`command = ["/bin/sh", "app.sh"]
workers = 0
listen "http" {
  address = "tcp://127.0.0.1:80800"
}
`), "demo.hcl")

	var diagErr *config.DiagnosticsError
	if errors.As(err, &diagErr) {
		_, _ = diagErr.WriteTo(os.Stdout)
	}
	// Output:
	// Error: demo.hcl:2,11-12: workers: 0 is out of range 1..1024
	//
	//   on demo.hcl line 2:
	//    2: workers = 0
	//
	// Error: demo.hcl:4,13-36: listen "http" address: "tcp://127.0.0.1:80800": port 80800 is out of range 0..65535
	//
	//   on demo.hcl line 4, in listen "http":
	//    4:   address = "tcp://127.0.0.1:80800"
}

// Quick mode: forkd --workers 2 --listen tcp://127.0.0.1:8080 -- /bin/sh app.sh
func ExampleLoad() {
	var flags config.Flags
	fs := pflag.NewFlagSet("forkd", pflag.ContinueOnError)
	flags.Register(fs)
	if err := fs.Parse([]string{"--workers", "2", "--listen", "tcp://127.0.0.1:8080", "--", "/bin/sh", "app.sh"}); err != nil {
		fmt.Println(err)
		return
	}
	flags.Command = fs.Args()

	cfg, err := config.Load(flags)
	if err != nil {
		fmt.Println(err)
		os.Exit(config.ExitConfig)
	}
	fmt.Println(cfg.Name, cfg.Workers, cfg.Command)
	for _, l := range cfg.Listeners {
		fmt.Println(l.Name, l.URL(), l.Backlog)
	}
	// Output:
	// forkd 2 [/bin/sh app.sh]
	// listen0 tcp://127.0.0.1:8080 1024
}

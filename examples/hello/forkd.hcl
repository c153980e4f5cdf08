# forkd config for the hello demo (make run-go): four exec-mode workers of examples/hello on
# 127.0.0.1:8081, beside the Python demo of make run on 8080. Relative paths resolve against this
# file's directory, wherever forkd starts.
#
#   curl http://127.0.0.1:8081/             # which worker answered
#   curl 'http://127.0.0.1:8081/slow?ms=5000' & forkctl --config examples/hello/forkd.hcl reload
#
# forkd.hcl(5) and docs/configuration.md list every option.

name    = "hello"
command = ["../../bin/hello"]   # make build puts it in bin/ at the repository's root
workers = 4

# A worker counts as ready when it sends READY=1 (the SDK's Worker.Ready).
readiness = "notify"

# Uncomment to watch forkd wait for readiness during a reload.
# env = {
#   HELLO_BOOT_DELAY = "3s"
# }

listen "http" {
  address = "tcp://127.0.0.1:8081"
}

timeouts {
  # A ready worker that sends no heartbeat (WATCHDOG=1) for 10s is killed and replaced. The SDK
  # sends one every 5s, from Worker.Run.
  worker = "10s"
}

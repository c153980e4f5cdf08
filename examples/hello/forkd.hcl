# forkd config for the hello demo (make run): four exec-mode workers of examples/hello on
# 127.0.0.1:8080. Paths are relative to the directory forkd starts in, the repository root.
#
#   curl http://127.0.0.1:8080/             # which worker answered
#   curl 'http://127.0.0.1:8080/slow?ms=5000' & forkctl reload   # the slow request completes
#
# forkd.hcl(5) and docs/configuration.md list every option.

name    = "hello"
command = ["./bin/hello"]
workers = 4

# A worker counts as ready when it sends READY=1 (the SDK's Worker.Ready).
readiness = "notify"

# Uncomment to watch forkd wait for readiness during a reload.
# env = {
#   HELLO_BOOT_DELAY = "3s"
# }

listen "http" {
  address = "tcp://127.0.0.1:8080"
}

timeouts {
  # A ready worker that sends no heartbeat (WATCHDOG=1) for 10s is killed and replaced. The SDK
  # sends one every 5s, from Worker.Run.
  worker = "10s"
}

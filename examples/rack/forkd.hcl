# forkd config for the Rack demo: four workers of examples/rack/config.ru on 127.0.0.1:8080 in
# fork-worker mode, served by forkd-rack (Puma::Server). Worker 0 loads the app once; workers 1..3
# are forked from it and share its memory copy-on-write. Relative paths resolve against this
# file's directory.
#
#   forkd --config examples/rack/forkd.hcl
#   curl http://127.0.0.1:8080/                  # hello from worker I (pid P, generation G)
#   curl http://127.0.0.1:8080/info              # its connection's and ticker's owner: its own PID
#   curl 'http://127.0.0.1:8080/slow?ms=5000' & forkctl refork   # the slow request completes
#
# Needs ruby (3.1+), puma and rack: apt-get install ruby puma ruby-rack. With Bundler instead,
# command = ["bundle", "exec", "forkd-rack", "config.ru"] (the Gemfile is beside this file).
# forkd.hcl(5) and docs/configuration.md list every option.

name      = "rack-demo"
command   = ["ruby", "-I", "../../sdk/ruby/lib", "../../sdk/ruby/bin/forkd-rack", "--threads", "5", "config.ru"]
directory = "."            # relative to this file: examples/rack

# DEMO_ALLOC_MB sets how much memory the app fills at load (default 50); DEMO_HOOK_LOG, a file
# every process appends the fork hooks it runs to.
env       = { RACK_ENV = "production" }
workers   = 4

listen "http" { address = "tcp://127.0.0.1:8080" }

# A ready worker that sends no heartbeat for 10s is killed and replaced; the SDK sends one every 5s.
timeouts { worker = "10s" }

fork_worker {
  # Refork workers 1..3 from worker 0 once a worker has served 1000 requests, then once more when
  # one has served 5000 since, and no more (false ends the list; without it, the last repeats).
  refork_after = [1000, 5000, false]
  # How long one spawn may take before forkd execs that worker instead.
  timeout      = "10s"
}

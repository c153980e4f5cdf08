# forkd config for the Python demo: four workers of examples/python/app.py on 127.0.0.1:8080 in
# fork-worker mode, each running one of gunicorn's threaded workers (forkd.gunicorn, with
# gunicorn.conf.py beside this file). Worker 0 imports the app once; workers 1..3 are forked from
# it and share its memory copy-on-write. Relative paths resolve against this file's directory.
#
#   forkd --config examples/python/forkd.hcl
#   curl http://127.0.0.1:8080/                  # hello from worker I (pid P, generation G)
#   curl 'http://127.0.0.1:8080/slow?ms=5000' & forkctl refork   # the slow request completes
#
# forkd.hcl(5) and docs/configuration.md list every option.

name      = "python-demo"
# /usr/bin/python3: Debian's interpreter, which has gunicorn (apt-get install python3-gunicorn).
command   = ["/usr/bin/python3", "-m", "forkd.gunicorn", "-c", "gunicorn.conf.py", "app:app"]
directory = "."            # relative to this file: examples/python

# The SDK from this repository (relative to the workers' working directory, the one above).
# DEMO_ALLOC_MB sets how much memory the app fills at import (default 50).
env       = { PYTHONPATH = "../../sdk/python" }
workers   = 4

listen "http" { address = "tcp://127.0.0.1:8080" }

# A ready worker that sends no heartbeat for 10s is killed and replaced: forkd.gunicorn sends one
# from gunicorn's worker loop every second or so, so a worker stuck in its loop stops beating.
timeouts { worker = "10s" }

fork_worker {
  # Refork workers 1..3 from worker 0 once a worker has served 1000 requests, then once more when
  # one has served 5000 since, and no more (false ends the list; without it, the last repeats).
  refork_after = [1000, 5000, false]
  # How long one spawn may take before forkd execs that worker instead.
  timeout      = "10s"
}

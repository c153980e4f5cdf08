# gunicorn's config file for the Python demo, read by forkd.gunicorn as gunicorn reads it. What
# forkd owns (workers, bind, reload, daemon, pidfile) lives in forkd.hcl instead.
worker_class = "gthread"
threads = 4
keepalive = 5


def post_fork(server, worker):
    # Runs in each worker before it serves: after the fork in fork-worker mode (reopen here what
    # must not be shared: database connections, client sockets, threads).
    server.log.info("worker %s is ready to serve", worker.pid)

# frozen_string_literal: true

# forkd's SDK for Ruby workers: the worker side of docs/protocol.md (version 1). Pure Ruby,
# standard library only, Ruby 3.1+. sdk/ruby/README.md documents every method with its outcomes;
# this is the summary.
#
# forkd is a preforking process supervisor. Its master never loads the application; it runs N
# worker processes that accept directly on listening sockets the master shares with them. Under
# forkd a worker gets, as a systemd service does: its listeners at fds 3, 4, ... (LISTEN_FDS,
# LISTEN_FDNAMES, LISTEN_PID), NOTIFY_SOCKET for READY=1 and friends, WATCHDOG_USEC/WATCHDOG_PID
# when a worker timeout is set, FORKD_PROTOCOL, FORKD_WORKER, FORKD_GENERATION and, in fork-worker
# mode, FORKD_CONTROL_FD, its control channel to the master.
#
# Not running under forkd is an answer, not an error: with no supervisor there are no listeners,
# worker_index is -1 and every notification returns false, so the same program runs from a shell.
#
# Two ways to use it:
#
# 1. The runtime, which makes worker 0 able to be forkd's *template* in fork-worker mode (it loads
#    the app once; every other worker is forked from it and shares its memory copy-on-write):
#    `forkd-rack [--threads N] [config.ru]` serves a Rack app with Puma, and Forkd.serve(server)
#    runs any server that can start and stop gracefully.
# 2. The plain helpers (listeners, ready, status, stopping, add_requests, ...), for a program with
#    its own server loop. Such a worker runs in forkd's exec mode.
#
# Requiring forkd with FORKD_PROTOCOL set to anything but "1" prints
# "forkd-ruby speaks protocol 1, this forkd master speaks N: upgrade the SDK" and exits with 1.

require_relative "forkd/version"
require_relative "forkd/protocol"
require_relative "forkd/sd_notify"
require_relative "forkd/worker"
require_relative "forkd/hooks"
require_relative "forkd/runtime"

module Forkd
  Worker.check_protocol

  module_function

  # --- listeners --------------------------------------------------------------------------------

  # The passed listening sockets (TCPServer or UNIXServer), in fd order; [] when nothing was
  # passed to this process. Raises Forkd::Error when the environment is malformed.
  def listeners
    Worker.listeners
  end

  # listeners grouped by LISTEN_FDNAMES: { "http" => [TCPServer, ...] }; {} for none.
  def listeners_by_name
    Worker.listeners_by_name
  end

  # --- notifications ----------------------------------------------------------------------------

  # READY=1 (after the control channel's handshake in fork-worker mode). true when sent, false
  # when there is nobody to notify; raises SystemCallError when it could not be sent.
  def ready
    Worker.ready
  end

  # STATUS=text, shown by forkctl status.
  def status(text)
    Worker.status(text)
  end

  # STOPPING=1: the worker is stopping on its own.
  def stopping
    Worker.stopping
  end

  # Any KEY=VALUE lines, as one datagram.
  def notify(state)
    Worker.notify(state)
  end

  # sd_notify_barrier(3): true once forkd has processed every earlier notification of this
  # process; false with nobody to notify; raises Errno::ETIMEDOUT.
  def notify_barrier(timeout: 5.0)
    SdNotify.notify_barrier(timeout: timeout)
  end

  # --- heartbeats and request counts ------------------------------------------------------------

  # Adds n to the requests this worker has served; reported as X_FORKD_REQUESTS= at most once a
  # second (the busiest worker's count drives refork_after). Returns the new total.
  def add_requests(count = 1)
    Worker.add_requests(count)
  end

  # The total so far.
  def requests
    Worker.requests
  end

  # --- where the worker stands ------------------------------------------------------------------

  # Its index 0..n-1, or -1 when not under forkd.
  def worker_index
    Worker.worker_index
  end

  # The cluster generation it belongs to, or 0 when not under forkd.
  def generation
    Worker.generation
  end

  # True in worker 0 once the master has welcomed it as the template (a mold included).
  def template?
    Worker.template?
  end

  # True in a mold: a template forked from a serving worker, which never serves.
  def mold?
    Worker.mold?
  end

  # False in a template that does not serve (mold mode: a mold, or worker 0 welcomed with
  # "serve": false); true otherwise.
  def serving?
    Worker.serving?
  end

  # A Forkd::Event set once the master is gone (#set?, #wait(timeout)).
  def master_gone
    Worker.master_gone
  end

  def master_gone?
    Worker.master_gone.set?
  end

  # --- readying the template ----------------------------------------------------------------------

  # What the template runs before each batch of forks, so that its workers keep more of its heap
  # shared: a list of "gc" (a full collection), "promote" (every survivor old), "compact"
  # (GC.compact), "trim" (malloc_trim) and "warmup" (Process.warmup, Ruby 3.3+). Default: ["warmup"] where
  # Process.warmup exists, else ["compact", "promote"]; forkd-rack's --ready-template sets it.
  def ready_template
    Readying.steps
  end

  # Set the steps (a list), or turn readying off (false or nil). Raises ArgumentError for an
  # unknown step.
  def ready_template=(steps)
    Readying.steps = steps
  end

  # --- fork hooks (pthread_atfork semantics, on Process._fork) ---------------------------------

  # Run before every fork, in the forking process, last registered first. Returns the hook.
  def before_fork(callable = nil, &block)
    Hooks.register(Hooks.registry(:prepare), callable, block, "before_fork")
  end

  # Run in the parent after every fork, in registration order. Returns the hook.
  def after_fork_parent(callable = nil, &block)
    Hooks.register(Hooks.registry(:parent), callable, block, "after_fork_parent")
  end

  # Run in the child after every fork, in registration order. Returns the hook.
  def after_fork_child(callable = nil, &block)
    Hooks.register(Hooks.registry(:child), callable, block, "after_fork_child")
  end

  # Run in the template when a refork begins (no request in flight, before it forks).
  def before_refork(callable = nil, &block)
    Hooks.register(Hooks.registry(:before_refork), callable, block, "before_refork")
  end

  # Run in the template when a refork ends (before it serves again).
  def after_refork(callable = nil, &block)
    Hooks.register(Hooks.registry(:after_refork), callable, block, "after_refork")
  end

  # Run in each worker once it is one (worker 0 at boot, a forked worker after its fork), before
  # READY=1.
  def after_worker_boot(callable = nil, &block)
    Hooks.register(Hooks.registry(:after_boot), callable, block, "after_worker_boot")
  end

  # Run in each template that does not serve, once it is one (a mold after its fork, its child
  # hooks and the master's welcome; mold mode's worker 0 after the welcome), before it readies its
  # heap and says READY=1. A hook that raises makes the process exit with status 1.
  def after_mold(callable = nil, &block)
    Hooks.register(Hooks.registry(:after_mold), callable, block, "after_mold")
  end

  # --- the runtime ------------------------------------------------------------------------------

  # Serve with server (#start(listeners), #stop) until the worker stops; see the README.
  def serve(server, listeners: nil)
    Runtime.serve(server, listeners: listeners)
  end

  # True while the runtime has stopped (or is stopping) its server: paused, forking or stopping.
  def draining?
    Runtime.draining?
  end
end

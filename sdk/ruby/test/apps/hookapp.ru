# frozen_string_literal: true

# The tests' Rack app: records every forkd hook it sees into $HOOK_LOG, one line per event:
# "PID EVENT JSON".

require "json"
require "forkd"

LOG = ENV.fetch("HOOK_LOG", File::NULL)
# REQUEST_LOG: "PID PATH" of each request as it begins, for tests that wait for one in flight.
REQUESTS = ENV.fetch("REQUEST_LOG", File::NULL)

# HOOKAPP_OBJECTS: objects the app keeps from its boot on, for tests of the heap's size.
RETAINED = Array.new(Integer(ENV.fetch("HOOKAPP_OBJECTS", "0"), 10)) { |i| "o#{i}" }.freeze

# HOOKAPP_ENV_FILE: the environment the app runs with (what its child processes would inherit),
# one NAME=VALUE a line, written when it loads.
File.write(ENV["HOOKAPP_ENV_FILE"], ENV.map { |k, v| "#{k}=#{v}\n" }.join) if ENV["HOOKAPP_ENV_FILE"]

def record(event, **data)
  File.open(LOG, "a") { |f| f.syswrite("#{Process.pid} #{event} #{JSON.generate(data)}\n") }
end

def began(path)
  File.open(REQUESTS, "a") { |f| f.syswrite("#{Process.pid} #{path}\n") }
end

# prepare1 runs last before a fork, parent1 first after it: between them, the SDK's own work
# around its forks (readying the template's heap: its collections show in the counts).
def gc_counts
  { gc: GC.count, major: GC.stat(:major_gc_count) }
end

Forkd.before_fork { record("prepare1", **gc_counts) }
Forkd.before_fork { record("prepare2") }
Forkd.after_fork_parent { record("parent1", **gc_counts) }
Forkd.after_fork_parent(-> { record("parent2") })
Forkd.after_fork_child { record("child1", listen_pid: ENV.fetch("LISTEN_PID", nil)) }
Forkd.after_fork_child { record("child2") }
Forkd.before_refork { record("before_refork") }
Forkd.after_refork { record("after_refork") }
# Whether descriptors opened now survive a full collection: a dropped connection whose Ruby object
# was left unclosed would have its finalizer close the number, now one of these pipes.
def fds_survive_gc
  pipes = Array.new(16) { IO.pipe }
  GC.start(full_mark: true, immediate_sweep: true)
  pipes.all? do |r, w|
    w.write("x")
    r.read_nonblock(1) == "x"
  rescue IOError, SystemCallError
    false
  end
ensure
  pipes&.flatten&.each { |io| io.close rescue nil } # rubocop:disable Style/RescueModifier
end

Forkd.after_mold do
  env = %w[LISTEN_PID FORKD_WORKER FORKD_GENERATION NOTIFY_SOCKET WATCHDOG_PID].to_h { |k| [k, ENV.fetch(k, nil)] }
  record("after_mold", env: env, template: Forkd.template?, mold: Forkd.mold?, serving: Forkd.serving?,
                       index: Forkd.worker_index, generation: Forkd.generation, listeners: Forkd.listeners.size,
                       fds_survive_gc: fds_survive_gc)
end
Forkd.after_worker_boot do
  env = %w[LISTEN_PID FORKD_WORKER FORKD_GENERATION FORKD_CONTROL_FD WATCHDOG_PID].to_h { |k| [k, ENV.fetch(k, nil)] }
  record("boot", env: env, template: Forkd.template?, index: Forkd.worker_index,
                 generation: Forkd.generation, listeners: Forkd.listeners.size)
end

if ENV["HOOKAPP_FAIL_PREPARE"]
  Forkd.before_fork { raise "prepare failed on purpose" }
end

run(lambda do |env|
  path = env["PATH_INFO"]
  query = env["QUERY_STRING"].to_s
  case path
  when "/slow"
    began(path)
    sleep(Integer(query[/ms=(\d+)/, 1] || "500", 10) / 1000.0)
  when "/wait"
    # In flight until the test creates the file it names.
    record("waiting")
    file = query[/file=([^&]+)/, 1]
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 30
    sleep 0.01 until File.exist?(file) || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
  when "/fork"
    # A fork made by library code, not by the SDK.
    pid = fork do
      record("library-child")
      exit!(0)
    end
    Process.wait(pid)
  when "/echo"
    body = env["rack.input"].read
    return [200, { "Content-Type" => "application/octet-stream" }, [body]]
  when "/error"
    raise "the app failed on purpose"
  end
  text = "pid=#{Process.pid} worker=#{Forkd.worker_index} generation=#{Forkd.generation} path=#{path}\n"
  [200, { "Content-Type" => "text/plain" }, [text]]
end)

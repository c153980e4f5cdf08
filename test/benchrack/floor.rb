# frozen_string_literal: true

# The "bare fork" of BenchmarkRackMemory (test/bench/rackmem_floor_test.go): no server at all,
# the floor of the benchmark's total PSS. What any fork server must hold is the app's memory once,
# in the process the workers are forked from; this process holds that and nothing else: no server
# code, no sockets, no threads, no master beside it.
#
# It loads memory.ru's app (BenchMem's boot half; `run` only keeps the app), readies its heap as a
# fork server's template does before it forks, and forks CHILDREN (ARGV[0], default 4) children
# that only wait: the floor "after boot". On a line "refork" on stdin it builds the lazy half too,
# as a worker holds it once warm, readies again, lets the old children exit and forks as many
# fresh ones: the floor "after a refork". After each fork it prints "forked PID PID ...".
#
# Its readying is GC.compact, a full collection that packs the survivors (forkd-rack's default on
# Ruby 3.1 is compact then promote; the promote rounds only matter to a child that allocates, and
# these allocate nothing). On EOF on stdin it exits, and its children with it.

CHILDREN = Integer(ARGV.fetch(0, "4"), 10)

def run(app)
  $app = app
end

load File.expand_path("memory.ru", __dir__)

def ready
  GC.respond_to?(:compact) ? GC.compact : GC.start(full_mark: true, immediate_sweep: true)
rescue NotImplementedError
  GC.start(full_mark: true, immediate_sweep: true)
end

# Forks the children; each waits until the write end of their pipe closes (the parent's next
# refork, or its exit), then exits without running anything.
def fork_children
  r, w = IO.pipe
  pids = Array.new(CHILDREN) do
    fork do
      w.close
      r.read
      exit!(0)
    end
  end
  r.close
  puts "forked #{pids.join(" ")}"
  $stdout.flush
  [w, pids]
end

ready
w, pids = fork_children
while (line = $stdin.gets)
  next unless line.strip == "refork"

  BenchMem.step while BenchMem.lazy.size < BenchMem::LAZY_STEPS
  ready
  w.close
  pids.each { |pid| Process.wait(pid) }
  w, pids = fork_children
end
w.close
pids.each { |pid| Process.wait(pid) }

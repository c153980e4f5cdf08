# frozen_string_literal: true

# The Rack app of forkd's memory benchmark (BenchmarkRackMemory, test/bench/rackmem_test.go),
# served the same way by forkd (forkd-rack in fork-worker mode) and by Puma's own cluster
# (`puma -w 4 --fork-worker`): plain Rack, no forkd API and no fork hook, so that both run exactly
# this code.
#
# Its memory is what a big app's is made of: many small Ruby objects (strings, arrays, hashes),
# which live in Ruby's object heap, with their contents in malloc's heap; not one big buffer,
# which no collector ever touches. It builds BENCHMEM_BOOT_MB (default 150) of them when it loads,
# and BENCHMEM_LAZY_MB (default 100) more lazily, in BENCHMEM_LAZY_STEPS (default 20) steps: each
# of the first requests a process serves builds one step, as an app that fills caches on its
# first requests does. A process forked from one that built them shares them copy-on-write, and
# builds nothing more.
#
#   GET /        reads a few entries of both, answers "pid=<pid> steps=<built>"
#   GET /stats   (builds nothing, counts for nothing) this process's GC.stat, the state of its collector (GC.latest_gc_info: a major
#                collection can be half done, its marking or sweeping interleaved with the
#                program), its count of requests and of lazy steps built, as JSON
#
# Each request also makes some garbage (a few kB of strings and arrays), as a real one does.

require "json"

module BenchMem
  # One MiB of objects: ENTRIES_PER_MB hash entries, each a short key and a value of a few
  # strings (malloc'd: longer than an embedded string).
  ENTRIES_PER_MB = 1_950

  def self.build_mb(tag)
    h = {}
    ENTRIES_PER_MB.times do |i|
      h["#{tag}-#{i}"] = ["v#{i}".ljust(120, "x"), (i * 7).to_s.ljust(60, "y"), [i, tag]]
    end
    h
  end

  BOOT = Array.new(Integer(ENV.fetch("BENCHMEM_BOOT_MB", "150"), 10)) { |i| build_mb("boot#{i}") }.freeze

  LAZY_MB = Integer(ENV.fetch("BENCHMEM_LAZY_MB", "100"), 10)
  LAZY_STEPS = Integer(ENV.fetch("BENCHMEM_LAZY_STEPS", "20"), 10)
  @lazy = []
  @lazy_lock = Mutex.new
  @requests = 0

  class << self
    attr_reader :lazy
  end

  # Build the next step of the lazy half, if any is left (one step per request).
  def self.step
    @lazy_lock.synchronize do
      @requests += 1
      return if @lazy.size >= LAZY_STEPS

      n = @lazy.size
      lo = LAZY_MB * n / LAZY_STEPS
      hi = LAZY_MB * (n + 1) / LAZY_STEPS
      @lazy << Array.new(hi - lo) { |i| build_mb("lazy#{lo + i}") }
    end
  end

  def self.requests
    @requests
  end

  def self.call(env)
    return stats if env["PATH_INFO"] == "/stats"

    step
    # A few reads, and their garbage.
    picks = Array.new(8) do |i|
      table = i.even? || @lazy.empty? ? BOOT.sample : @lazy.sample.sample
      key, value = table.first((i * 31) % 50 + 1).last
      "#{key}=#{value[0][0, 8]}#{value[1].size}"
    end
    body = "pid=#{Process.pid} steps=#{@lazy.size} #{picks.join(",").size}\n"
    [200, { "Content-Type" => "text/plain", "Content-Length" => body.bytesize.to_s }, [body]]
  end

  # Not a request of the app's: it neither builds a step nor counts, so that measuring changes
  # nothing.
  def self.stats
    body = JSON.generate({ "pid" => Process.pid, "steps" => @lazy.size, "requests" => requests, "gc" => GC.stat,
                           "gc_state" => GC.latest_gc_info(:state).to_s, "major_by" => GC.latest_gc_info(:major_by).to_s }) + "\n"
    [200, { "Content-Type" => "application/json", "Content-Length" => body.bytesize.to_s }, [body]]
  end
end

run BenchMem

# frozen_string_literal: true

module Forkd
  # Readying the template before it forks (docs/fork-safety.md, "Readying the template"): the
  # workers share the template's heap copy-on-write, and every page their collector or their
  # allocations write to becomes a private copy. Left as it is, the template's heap is what the
  # program left it: a major collection half done (Ruby marks and sweeps incrementally, between
  # the program's steps), objects too young to be old (each worker's minor collections then age
  # them, writing to their pages), and free slots scattered over every page (each worker fills
  # them). Before the first fork of a refork (or of the workers' first forks), with no request in
  # flight, the template runs the steps:
  #
  #   gc       a full collection, swept at once: nothing half done, the garbage freed
  #   promote  minor collections until no object is promoted any more: every survivor is old
  #   compact  GC.compact: the survivors packed into as few pages as can hold them
  #   trim     malloc_trim(0): the malloc heap's free pages given back to the kernel, so that no
  #            worker inherits them resident (glibc only; skipped where it is not found)
  #   warmup   Process.warmup (Ruby 3.3+), which does all three (and more) by itself
  #
  # The default is warmup where Process.warmup exists, else compact and promote. Forkd.ready_template=
  # (a list, or false) and forkd-rack's --ready-template (STEPS or off) choose otherwise. (Not an
  # environment variable: forkd reserves FORKD_* for itself and passes none to its workers.)
  module Readying
    STEPS = %w[gc promote compact trim warmup].freeze
    OFF = %w[off none false no 0].freeze
    # Ruby makes an object old once it has survived three collections (RVALUE_OLD_AGE): after
    # the full one of gc, three minor ones promote even an object born just before.
    PROMOTE_ROUNDS = 3

    class << self
      # The steps the template runs (a frozen list of STEPS; empty: none).
      def steps
        @steps ||= default_steps
      end

      # steps= takes a list of STEPS, or false or nil for none; raises ArgumentError for an
      # unknown step.
      def steps=(list)
        @steps = list ? validate(Array(list).map(&:to_s)).freeze : [].freeze
      end

      def default_steps
        return %w[warmup].freeze if Process.respond_to?(:warmup)

        # compact, not gc: GC.compact is a full collection too, and packing the survivors leaves
        # the free slots in pages of their own, so that a worker's allocations copy no page of
        # live shared objects (make bench, BenchmarkRackMemory: docs/fork-safety.md). Not trim:
        # it won nothing measurable there.
        %w[compact promote].freeze
      end

      # Read a command-line value: a comma-separated list of STEPS, or "off".
      def parse(value)
        return [].freeze if OFF.include?(value.to_s.strip.downcase)

        validate(value.to_s.split(",").map(&:strip).reject(&:empty?)).freeze
      end

      def validate(list)
        bad = list - STEPS
        raise ArgumentError, "unknown step #{bad.first.inspect} (want some of #{STEPS.join(", ")}, or off)" unless bad.empty?

        list.uniq
      end

      # Run the steps; returns what they did, for the log, or nil when there are none.
      def run
        list = steps
        return nil if list.empty?

        t0 = now
        cpu0 = cpu_now
        took = list.map do |step|
          t = now
          send("step_#{step}")
          "#{step} #{ms(now - t)}"
        end
        wall = now - t0
        cpu = cpu_now - cpu0
        s = GC.stat
        # The CPU time tells a readying slowed by the CPU it got (a busy machine) from one that had
        # more to do: the collector runs in this thread.
        "readied the template in #{ms(wall)} (#{took.join(", ")}; #{ms(cpu)} on a CPU): #{s[:heap_live_slots]} live objects, " \
          "#{s[:old_objects]} old, #{s[:heap_allocated_pages]} heap pages"
      end

      private

      def now
        Process.clock_gettime(Process::CLOCK_MONOTONIC)
      end

      def cpu_now
        Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID)
      end

      def ms(seconds)
        "#{(seconds * 1000).round} ms"
      end

      def step_gc
        GC.start(full_mark: true, immediate_sweep: true)
      end

      def step_promote
        PROMOTE_ROUNDS.times { GC.start(full_mark: false, immediate_sweep: true) }
      end

      # GC.compact raises NotImplementedError where the platform lacks what it needs.
      def step_compact
        GC.compact if GC.respond_to?(:compact)
      rescue NotImplementedError
        nil
      end

      def step_trim
        malloc_trim&.call(0)
      end

      # glibc's malloc_trim, through Fiddle; nil where either is missing.
      def malloc_trim
        return @malloc_trim if defined?(@malloc_trim)

        @malloc_trim = begin
          require "fiddle"
          Fiddle::Function.new(Fiddle.dlopen(nil)["malloc_trim"], [Fiddle::TYPE_SIZE_T], Fiddle::TYPE_INT)
        rescue LoadError, StandardError
          nil
        end
      end

      def step_warmup
        Process.warmup if Process.respond_to?(:warmup)
      end
    end
  end
end

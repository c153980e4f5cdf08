# frozen_string_literal: true

module Forkd
  # Ruby's collector, tuned for workers that share a template's heap (docs/fork-safety.md, "Ruby's
  # free slots"). Ruby keeps a share of ALL its object slots free after a collection: at least
  # RUBY_GC_HEAP_FREE_SLOTS_MIN_RATIO (0.20), and when it grows the heap, enough for
  # RUBY_GC_HEAP_FREE_SLOTS_GOAL_RATIO (0.40). A forked worker's heap is mostly the template's old
  # objects, shared copy-on-write, and they count in ALL: its first collections find too few slots
  # free and grow the heap by about 40 %, new pages the worker writes in full, of its own. On a
  # heap of 2.5 million objects that was 150-160 MB per worker within seconds of load (Puma's
  # fork_worker the same), against ~30 MB with the ratios below. The price: more frequent minor
  # collections, and a slower boot (the heap grows in smaller steps).
  #
  # The parameters are read once, when Ruby starts, from the environment; so forkd-rack, in the
  # template of fork-worker mode (the only process it starts that others are forked from), execs
  # itself again, same pid and same command line, with DEFAULTS added. A variable the environment
  # already sets wins, and any one of them set means the user chose: nothing is added then.
  module GCTuning
    DEFAULTS = {
      "RUBY_GC_HEAP_FREE_SLOTS_MIN_RATIO" => "0.03",
      "RUBY_GC_HEAP_FREE_SLOTS_GOAL_RATIO" => "0.06",
    }.freeze

    # The variables that, set, say the user tuned the free slots.
    CHOSEN = %w[RUBY_GC_HEAP_FREE_SLOTS RUBY_GC_HEAP_FREE_SLOTS_MIN_RATIO RUBY_GC_HEAP_FREE_SLOTS_GOAL_RATIO
                RUBY_GC_HEAP_FREE_SLOTS_MAX_RATIO].freeze

    class << self
      # Exec this process again with DEFAULTS added when it should (tune?); returns only when it
      # does not, or when the exec failed (then it says why: the worker runs untuned).
      def reexec(env = ENV)
        return unless tune?(env)

        argv = command_line
        if argv.nil? || argv.empty?
          warn "forkd-rack: Ruby's GC left untuned: /proc/self/cmdline is unreadable"
          return
        end
        begin
          # Same executable (the one running now, not a PATH lookup), same argv; descriptors stay
          # open (the listeners, the control channel): exec closes none of them.
          exec(DEFAULTS, ["/proc/self/exe", argv.first], *argv.drop(1), close_others: false)
        rescue SystemCallError => e
          warn "forkd-rack: Ruby's GC left untuned: cannot exec again: #{e.message}"
        end
      end

      # Whether this process is a fork-worker template that the user did not tune: forkd gave it a
      # control channel (FORKD_CONTROL_FD) and the passed sockets are its own (LISTEN_PID).
      def tune?(env = ENV)
        return false if env["FORKD_CONTROL_FD"].to_s.empty?

        listen_pid = env["LISTEN_PID"].to_s
        return false unless listen_pid.empty? || listen_pid == Process.pid.to_s

        CHOSEN.none? { |k| env.key?(k) }
      end

      # What the collector runs with, for the template's log line: "RUBY_GC_...=v ..." of the
      # variables set, with where they came from; nil when none is set.
      def describe(env = ENV)
        set = CHOSEN.select { |k| env.key?(k) }
        return nil if set.empty?

        ours = DEFAULTS.all? { |k, v| env[k] == v } && (set - DEFAULTS.keys).empty?
        "Ruby's GC: #{set.map { |k| "#{k}=#{env[k]}" }.join(" ")} " \
          "(#{ours ? "forkd-rack's defaults for fork-worker mode" : "from the environment"})"
      end

      # This process's argv, as the kernel holds it (the interpreter's own options included).
      def command_line
        File.binread("/proc/self/cmdline").split("\0")
      rescue SystemCallError
        nil
      end
    end
  end
end

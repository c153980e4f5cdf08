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

    # Below this many live objects (some 1,000 heap pages of 16 KB, ~16 MB) the bookkeeping is too
    # small to be worth an advice or a report.
    ADVICE_MIN_OBJECTS = 400_000

    # The variable a template reports (docs/protocol.md, X_FORKD_HEAP_SIZE), which the master
    # carries to the next template it execs.
    HEAP_SIZE_VARIABLE = "RUBY_GC_HEAP_INIT_SLOTS"

    # The variables that, set, say the user tuned the free slots.
    CHOSEN = %w[RUBY_GC_HEAP_FREE_SLOTS RUBY_GC_HEAP_FREE_SLOTS_MIN_RATIO RUBY_GC_HEAP_FREE_SLOTS_GOAL_RATIO
                RUBY_GC_HEAP_FREE_SLOTS_MAX_RATIO].freeze

    # jemalloc, where a package installed it (Debian's and Ubuntu's libjemalloc2, Fedora's and
    # RHEL's jemalloc): the first of these that exists.
    JEMALLOC_PATHS = %w[/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /usr/lib/aarch64-linux-gnu/libjemalloc.so.2
                        /usr/lib64/libjemalloc.so.2 /usr/lib/libjemalloc.so.2 /usr/local/lib/libjemalloc.so.2].freeze

    # Set, with LD_PRELOAD, in the exec that preloads jemalloc: LD_PRELOAD is forkd-rack's, and
    # the app's own child processes (a shell, git, ImageMagick) do not get it.
    PRELOADED = "FORKD_RACK_PRELOADED_MALLOC"

    # forkd-rack's --malloc values: auto (jemalloc where installed, else the system's), system.
    MALLOCS = %w[auto system].freeze

    class << self
      # Exec this process again with what the template of fork-worker mode should start with and
      # does not: DEFAULTS (tune?), and jemalloc preloaded (preload). Returns only when it does
      # not, or when the exec failed (then it says why: the worker runs as it started).
      def reexec(env = ENV, argv = ARGV)
        return unless template?(env)

        # After the exec that preloaded it, a library the loader refused (it says why) is not
        # tried again: each start would exec the next.
        preloaded = unpreload(env)
        add = tune?(env) ? DEFAULTS.dup : {}
        if !preloaded && (lib = preload(env, argv))
          add["LD_PRELOAD"] = lib
          add[PRELOADED] = lib
        end
        return if add.empty?

        cmdline = command_line
        if cmdline.nil? || cmdline.empty?
          warn "forkd-rack: Ruby's GC left untuned, its malloc the system's: /proc/self/cmdline is unreadable"
          return
        end
        begin
          # Same executable (the one running now, not a PATH lookup), same argv; descriptors stay
          # open (the listeners, the control channel): exec closes none of them.
          exec(add, ["/proc/self/exe", cmdline.first], *cmdline.drop(1), close_others: false)
        rescue SystemCallError => e
          warn "forkd-rack: Ruby's GC left untuned, its malloc the system's: cannot exec again: #{e.message}"
        end
      end

      # Whether this process is a fork-worker template: forkd gave it a control channel
      # (FORKD_CONTROL_FD) and the passed sockets are its own (LISTEN_PID).
      def template?(env = ENV)
        return false if env["FORKD_CONTROL_FD"].to_s.empty?

        listen_pid = env["LISTEN_PID"].to_s
        listen_pid.empty? || listen_pid == Process.pid.to_s
      end

      # Whether the user left Ruby's free-slot ratios alone in a template (template?).
      def tune?(env = ENV)
        template?(env) && CHOSEN.none? { |k| env.key?(k) }
      end

      # The jemalloc to preload (docs/fork-safety.md, "malloc"), or nil: with --malloc=auto (the
      # default), where one is installed, and when nothing is preloaded yet (LD_PRELOAD unset:
      # the user's choice wins) and this Ruby does not already run on jemalloc (built with it).
      def preload(env = ENV, argv = ARGV)
        return nil unless malloc_option(argv) == "auto"
        return nil unless env["LD_PRELOAD"].to_s.empty?
        return nil if jemalloc_loaded?

        JEMALLOC_PATHS.find { |path| File.file?(path) }
      end

      # --malloc's value in argv (its last), "auto" without one; an unknown value counts as
      # "system" here (nothing is preloaded for it) and forkd-rack's option parser refuses it.
      def malloc_option(argv)
        value = "auto"
        argv.each_with_index do |arg, i|
          break if arg == "--"

          if arg == "--malloc"
            value = argv[i + 1].to_s
          elsif arg.start_with?("--malloc=")
            value = arg.delete_prefix("--malloc=")
          end
        end
        value == "auto" ? "auto" : "system"
      end

      # After the exec that preloaded jemalloc: take LD_PRELOAD (and the mark) out of the
      # environment the app's children inherit; the process keeps its allocator. Returns whether
      # this start follows that exec.
      def unpreload(env = ENV)
        lib = env[PRELOADED]
        return false if lib.nil?

        env.delete(PRELOADED)
        env.delete("LD_PRELOAD") if env["LD_PRELOAD"] == lib
        true
      end

      # The jemalloc mapped into this process (preloaded, or linked into Ruby), or nil.
      def jemalloc_mapped
        line = File.foreach("/proc/self/maps").find { |l| l.include?("libjemalloc") }
        line&.split&.last
      rescue SystemCallError
        nil
      end

      def jemalloc_loaded?
        !jemalloc_mapped.nil?
      end

      # The allocator a template runs on, for its log line; nil outside a template.
      def describe_malloc(env = ENV)
        return nil unless template?(env)

        if (lib = jemalloc_mapped)
          return "malloc: jemalloc (#{lib}), so that the workers' collections copy less of the template " \
                 "(docs/fork-safety.md, \"malloc\"; --malloc=system for the system's)"
        end
        "malloc: the system's (glibc); with jemalloc installed (libjemalloc2) forkd-rack preloads it " \
          "unless --malloc=system or LD_PRELOAD is set (docs/fork-safety.md, \"malloc\")"
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

      # Advice on the heap's initial size, logged once by a template that has loaded the app
      # (docs/fork-safety.md, "Ruby's heap pages"): Ruby allocates each heap page's bookkeeping
      # (its struct and mark bitmaps) with malloc as the heap grows, so while an app loads, those
      # small blocks land between the app's own strings, one in every few malloc pages. Every
      # collection in every worker writes to them, and each write copies a shared 4 KB page of the
      # app's strings with it: ~15-18 MB per worker on a heap of 2.5 million objects. With
      # RUBY_GC_HEAP_INIT_SLOTS about as large as the heap the app builds, Ruby allocates the
      # pages, bookkeeping and all, at once before the app runs, side by side. forkd-rack cannot
      # know that size before the app has loaded: it says what to set, and, when the master
      # carries it (carried: it asked for the report, fork_worker.carry_heap_size), that the next
      # template starts with it. Nil when there is nothing to say: a RUBY_GC_HEAP_INIT* variable
      # is set (the operator's, or one the master carried), or there is no size (heap_slots).
      def heap_advice(stat = GC.stat, env = ENV, ruby = RUBY_VERSION, carried: false)
        return nil if env.keys.any? { |k| k.start_with?("RUBY_GC_HEAP_INIT") }

        slots = heap_slots(stat, ruby)
        return nil if slots.nil?

        live = stat[:heap_live_slots].to_i
        if carried
          return "Ruby's GC: the app's heap holds #{live} objects; forkd starts the next template (a reload, " \
                 "a hot restart) with #{HEAP_SIZE_VARIABLE}=#{slots}, so that Ruby lays out its heap pages before " \
                 "the app loads, and each worker copies less of the template's memory; set #{HEAP_SIZE_VARIABLE} " \
                 "in the app's environment (forkd's env, or Environment= in its unit) to choose it yourself " \
                 "(docs/fork-safety.md, \"Ruby's heap pages\")"
        end
        "Ruby's GC: the app's heap holds #{live} objects; with #{HEAP_SIZE_VARIABLE}=#{slots} in " \
          "the app's environment (forkd's env, or Environment= in its unit), Ruby lays out its heap pages before the app " \
          "loads, and each worker copies less of the template's memory (docs/fork-safety.md, \"Ruby's heap pages\")"
      end

      # The initial heap size that suits the app loaded now (suggested_slots of its live objects),
      # which a template reports to the master whatever its environment sets, so that the size
      # follows the app from release to release. Nil when the heap is smaller than min (the
      # advice's ADVICE_MIN_OBJECTS; the report's is 1, so that a release that shrank replaces
      # the size an earlier one left) or Ruby sizes its heaps per size pool (3.3+, other
      # variables, not measured here).
      def heap_slots(stat = GC.stat, ruby = RUBY_VERSION, min: ADVICE_MIN_OBJECTS)
        return nil if (ruby.split(".").map(&:to_i) <=> [3, 3]) >= 0

        live = stat[:heap_live_slots].to_i
        return nil if live < min

        slots = suggested_slots(live)
        slots.positive? ? slots : nil
      end

      # Nine tenths of the live objects, rounded down to two digits: below what the app holds, so
      # that the heap it builds fills the pages Ruby laid out at start. Past it, the spare slots
      # cost twice: the template holds them empty, and each worker's first objects copy their
      # shared pages (make bench: docs/fork-safety.md).
      def suggested_slots(live)
        want = (live * 9) / 10
        unit = 10**[Math.log10([want, 1].max).floor - 1, 0].max
        (want / unit) * unit
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

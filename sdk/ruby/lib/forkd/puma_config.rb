# frozen_string_literal: true

require "socket"
require "uri"

module Forkd
  module Rack
    # What forkd-rack takes from a Puma user's habits: puma's command-line flags and a puma.rb
    # (Puma's configuration DSL, lib/puma/dsl.rb, in its 5.6 to 8 spellings).
    #
    # A setting that means something in one worker under forkd is applied with Puma's meaning:
    # threads, environment, rackup, app, the Puma::Server options, the hooks that run in a
    # worker. One that belongs to Puma's master (workers, fork_worker, its timeouts, restarts,
    # control server, pidfile, daemon, logs) is refused, each with the forkd setting that does
    # the job, so that nothing a user relies on is silently dropped. A few that change nothing in
    # how a worker serves (a pidfile, a process tag, Rails' tmp_restart plugin) are ignored with a
    # warning. `bind` and `port` are forkd's `listen` blocks: under forkd a bind must name one of
    # the sockets forkd passed; without forkd (development) forkd-rack binds them itself.
    class PumaConfig
      # A Puma setting forkd-rack does not take, where it was given, and what to use instead.
      Refusal = Struct.new(:where, :setting, :why) do
        def to_s
          "#{where}: #{setting}: #{why}"
        end
      end

      HOOKS = %i[before_fork worker_boot worker_shutdown before_refork after_refork].freeze
      # Options handed to Puma::Server as they are.
      SERVER_OPTIONS = %i[persistent_timeout first_data_timeout max_fast_inline queue_requests early_hints
                          lowlevel_error_handler out_of_band wait_for_less_busy_worker].freeze

      attr_reader :settings, :hooks, :binds, :refusals, :warnings

      def initialize
        @settings = {}
        @hooks = HOOKS.to_h { |k| [k, []] }
        @binds = nil # [[url, where]]; nil: none given (an empty list is `clear_binds!`)
        @refusals = []
        @warnings = []
      end

      def [](key)
        @settings[key]
      end

      def []=(key, value)
        @settings[key] = value
      end

      def add_bind(url, where)
        (@binds ||= []) << [url.to_s, where]
      end

      def clear_binds
        @binds = []
      end

      def refuse(where, setting, why)
        @refusals << Refusal.new(where, setting, why)
        nil
      end

      def warn_ignored(where, setting, why)
        @warnings << "#{where}: #{setting} ignored: #{why}"
        nil
      end

      # Read a puma.rb into this config (Puma's file layer). Errors in the file (a syntax error,
      # an exception) are refusals too, with the line.
      def load_file(path)
        DSL.new(self, path).load(path)
        self
      end

      # This config with other's settings on top (Puma: the command line over the file). Binds:
      # other's, when it has any, replace ours; hooks add up.
      def merge(other)
        merged = PumaConfig.new
        merged.settings.update(@settings).update(other.settings)
        HOOKS.each { |k| merged.hooks[k].concat(@hooks[k]).concat(other.hooks[k]) }
        binds = other.binds.nil? ? @binds : other.binds
        binds&.each { |url, where| merged.add_bind(url, where) }
        merged.clear_binds if binds&.empty?
        merged.refusals.concat(@refusals).concat(other.refusals)
        merged.warnings.concat(@warnings).concat(other.warnings)
        merged
      end

      # Puma::Server options from the settings.
      def server_options
        SERVER_OPTIONS.each_with_object({}) { |k, h| h[k] = @settings[k] if @settings.key?(k) }
      end

      # Puma's default config file when none is named: config/puma/ENV.rb, then config/puma.rb.
      def self.default_file(environment, dir = Dir.pwd)
        ["config/puma/#{environment}.rb", "config/puma.rb"].map { |f| File.join(dir, f) }.find { |f| File.file?(f) }
      end

      # Puma's environment when nothing sets it.
      def self.default_environment
        ENV["APP_ENV"] || ENV["RACK_ENV"] || ENV["RAILS_ENV"] || "development"
      end

      # --- binds ---------------------------------------------------------------------------------

      # A bind URL, as Puma (and forkd-rack before it) writes them: [:tcp, host, port],
      # [:unix, path], or raises ArgumentError saying why not.
      def self.parse_bind(url)
        case url
        when %r{\Assl://}
          raise ArgumentError, "TLS: forkd passes plain sockets; terminate TLS in front of forkd " \
                               "(nginx, HAProxy, a load balancer)"
        when %r{\Aunix://(.+)\z}
          path = Regexp.last_match(1).split("?", 2).first
          [:unix, path.start_with?("@") ? "\0#{path[1..]}" : path]
        when /\Aunix:(.+)\z/ # forkd-rack's own unix:/path
          [:unix, Regexp.last_match(1)]
        when %r{\Atcp://}
          uri = begin
            URI.parse(url)
          rescue URI::InvalidURIError => e
            raise ArgumentError, "not a URL: #{e.message}"
          end
          raise ArgumentError, "want tcp://HOST:PORT" if uri.port.nil?

          [:tcp, (uri.host || "").delete_prefix("[").delete_suffix("]"), uri.port]
        when /\A(.*):(\d+)\z/ # HOST:PORT
          [:tcp, Regexp.last_match(1).delete_prefix("[").delete_suffix("]"), Integer(Regexp.last_match(2), 10)]
        else
          raise ArgumentError, "want tcp://HOST:PORT or unix:///path"
        end
      end

      WILDCARDS = ["", "0.0.0.0", "::", "*"].freeze

      # Whether a parsed bind names listener (a TCPServer or UNIXServer forkd passed).
      def self.bind_matches?(bind, listener)
        addr = listener.local_address
        if bind[0] == :unix
          return addr.unix? && addr.unix_path == bind[1]
        end
        return false unless addr.ip? && addr.ip_port == bind[2]
        return WILDCARDS.include?(addr.ip_address) if WILDCARDS.include?(bind[1])

        Addrinfo.getaddrinfo(bind[1], bind[2], nil, :STREAM).any? { |ai| ai.ip_address == addr.ip_address }
      rescue SocketError
        false
      end

      def self.describe(listener)
        addr = listener.local_address
        return "unix://#{addr.unix_path.sub(/\A\0/, "@")}" if addr.unix?

        host = addr.ipv6? ? "[#{addr.ip_address}]" : addr.ip_address
        "tcp://#{host}:#{addr.ip_port}"
      end

      # A refusal for every bind that forkd-rack cannot listen on, and, under forkd (listeners
      # not empty), for every bind that names none of the listeners forkd passed.
      def check_binds(listeners)
        (@binds || []).each do |url, where|
          begin
            bind = PumaConfig.parse_bind(url)
          rescue ArgumentError => e
            refuse(where, "bind #{url}", e.message)
            next
          end
          next if listeners.empty? || listeners.any? { |l| PumaConfig.bind_matches?(bind, l) }

          passed = listeners.map { |l| PumaConfig.describe(l) }.join(", ")
          refuse(where, "bind #{url}", "under forkd the listening sockets come from forkd's `listen` blocks, " \
                                       "and forkd passed #{passed}: listen there " \
                                       "(listen \"http\" { address = \"#{url.split("?", 2).first}\" }) " \
                                       "and remove this bind")
        end
      end

      # The DSL a puma.rb is evaluated with: Puma's method names, forkd's meaning.
      class DSL
        # Puma settings for its master, refused with what does the job under forkd.
        MASTER = {
          workers: "forkd runs the workers: `workers = N` in forkd's config (forkd --workers N)",
          fork_worker: "forkd's `fork_worker { refork_after = [1000] }` block (forkd --fork-worker); " \
                       "`forkctl refork` reforks by hand",
          worker_boot_timeout: "forkd's `timeouts { boot = \"60s\" }`",
          worker_shutdown_timeout: "forkd's `timeouts { shutdown = \"30s\" }` (SIGKILL after it)",
          force_shutdown_after: "forkd's `timeouts { shutdown = \"30s\" }` (SIGKILL after it)",
          worker_check_interval: "forkd watches heartbeats itself: `timeouts { worker = \"60s\" }`",
          worker_culling_strategy: "forkd picks the worker to stop on `forkctl scale -1`",
          restart_command: "forkd's hot restart re-executes forkd itself (`forkctl restart`); the app's command " \
                           "is forkd's `command`",
          on_restart: "runs in Puma's master before a hot restart: forkd's `hooks { before_restart = [...] }` " \
                      "(a command)",
          before_restart: "runs in Puma's master before a hot restart: forkd's `hooks { before_restart = [...] }` " \
                          "(a command)",
          on_worker_fork: "runs in Puma's master, which under forkd is not a Ruby process: `before_fork` (in " \
                          "the template, before each fork) or `on_worker_boot` (in the worker)",
          before_worker_fork: "runs in Puma's master, which under forkd is not a Ruby process: `before_fork` (in " \
                              "the template, before each fork) or `on_worker_boot` (in the worker)",
          after_worker_fork: "runs in Puma's master, which under forkd is not a Ruby process: " \
                             "Forkd.after_fork_parent (in the template) or `on_worker_boot` (in the worker)",
          after_worker_boot: "Puma's alias of after_worker_fork, which runs in Puma's master: `on_worker_boot` " \
                             "runs in each worker before it serves",
          on_booted: "runs in Puma's master once it has booted: forkd sends READY=1 to systemd then " \
                     "(an ExecStartPost= line, or `forkctl status`)",
          after_booted: "runs in Puma's master once it has booted: forkd sends READY=1 to systemd then " \
                        "(an ExecStartPost= line, or `forkctl status`)",
          on_stopped: "runs in Puma's master once it has stopped: systemd's ExecStopPost=",
          after_stopped: "runs in Puma's master once it has stopped: systemd's ExecStopPost=",
          activate_control_app: "forkd's control API: forkctl (status, reload, restart, refork, scale, stop)",
          state_path: "forkd's control API: forkctl (status, reload, restart, refork, scale, stop)",
          daemonize: "run forkd under systemd (packaging/forkd@.service), which needs no daemon",
          stdout_redirect: "a worker's output is forkd's: the journal under systemd, forkd's own output otherwise",
          prune_bundler: "forkd's master is not Ruby: each reload starts a fresh worker 0 from `command`",
          extra_runtime_dependencies: "forkd's master is not Ruby: each reload starts a fresh worker 0 from `command`",
          ssl_bind: "TLS: forkd passes plain sockets; terminate TLS in front of forkd (nginx, HAProxy, a load balancer)",
          nakayoshi_fork: "the SDK readies the template before each refork itself (GC.compact, every survivor " \
                          "promoted: forkd-rack --ready-template, docs/fork-safety.md)",
          raise_exception_on_sigterm: "forkd-rack stops gracefully on SIGTERM (docs/signals.md)",
          drain_on_shutdown: "a stopping forkd-rack worker serves the requests in flight and the next one on " \
                             "each open connection (forkd-rack --drain-timeout)",
          shutdown_debug: "not supported by forkd-rack",
          debug: "not supported by forkd-rack",
          custom_logger: "not supported by forkd-rack",
          log_formatter: "not supported by forkd-rack: a worker's output goes to forkd (the journal under systemd)",
          set_remote_address: "not supported by forkd-rack",
          io_selector_backend: "not supported by forkd-rack",
          mutate_stdout_and_stderr_to_sync_on_write: "not supported by forkd-rack",
          clean_thread_locals: "not supported by forkd-rack",
          fiber_per_request: "not supported by forkd-rack",
          idle_timeout: "forkd-rack does not stop an idle worker: `forkctl scale` changes the worker count",
          max_keep_alive: "not supported by forkd-rack",
          enable_keep_alives: "not supported by forkd-rack",
          supported_http_methods: "not supported by forkd-rack",
          http_content_length_limit: "not supported by forkd-rack",
          rack_url_scheme: "not supported by forkd-rack",
          on_thread_start: "not supported by forkd-rack",
          before_thread_start: "not supported by forkd-rack",
          on_thread_exit: "not supported by forkd-rack",
          before_thread_exit: "not supported by forkd-rack",
        }.freeze

        # Ignored with a warning: nothing a worker does depends on them.
        IGNORED = {
          pidfile: "forkd's PID is systemd's MainPID (or `forkctl status`); SIGUSR1, SIGUSR2 and SIGTERM mean " \
                   "there what they mean to Puma",
          state_permission: "forkd has no state file; forkctl talks to its control socket",
          tag: "forkd names its workers in `forkctl status` and the journal",
          silence_single_worker_warning: "Puma's own warning",
          silence_fork_callback_warning: "Puma's own warning",
          quiet: "requests are not logged unless log_requests (or -v) says so",
        }.freeze

        def initialize(config, path)
          @config = config
          @path = path
        end

        def load(path)
          text = File.read(path)
          instance_eval(text, path, 1)
        rescue SystemCallError => e
          @config.refuse(where, "load #{path}", e.message)
        rescue ScriptError, StandardError => e
          line = (e.backtrace_locations || []).find { |l| l.path == path }&.lineno
          line ||= e.message[/:(\d+):/, 1] if e.is_a?(SyntaxError)
          @config.refuse("#{path}#{line && ":#{line}"}", "error", "#{e.class}: #{e.message.lines.first&.strip}")
        end

        # --- applied ----------------------------------------------------------------------------

        def threads(min, max = min)
          min = Integer(min)
          max = Integer(max)
          return @config.refuse(where, "threads #{min}, #{max}", "the minimum is more than the maximum") if min > max
          return @config.refuse(where, "threads #{min}, #{max}", "the maximum must be at least 1") if max < 1

          @config[:min_threads] = min
          @config[:max_threads] = max
        end

        def environment(env)
          @config[:environment] = env.to_s
        end

        def bind(url)
          @config.add_bind(url, where)
        end

        def port(port, host = nil)
          @config.add_bind("tcp://#{host || "0.0.0.0"}:#{Integer(port)}", where)
        end

        def clear_binds!
          @config.clear_binds
        end

        # Puma binds the sockets systemd passed; forkd-rack always serves on the ones forkd passed.
        def bind_to_activated_sockets(_bind = true); end

        def rackup(path)
          @config[:rackup] = path.to_s
        end

        def app(obj = nil, &block)
          @config[:app] = obj || block
        end

        # forkd's fork-worker mode always loads the app once, in worker 0 (the template); in exec
        # mode every worker loads it. Nothing to choose here.
        def preload_app!(_answer = true); end

        def persistent_timeout(seconds)
          @config[:persistent_timeout] = Float(seconds)
        end

        def first_data_timeout(seconds)
          @config[:first_data_timeout] = Float(seconds)
        end

        def max_fast_inline(count)
          @config[:max_fast_inline] = Float(count)
        end

        # Seconds a worker with a request in flight waits before it accepts, so that an idle one
        # takes the connection; 0 accepts at once. forkd-rack waits 0.005 s unless told
        # (PumaServer::LESS_BUSY_DELAY), as Puma 6 does; the call without a value means that too.
        def wait_for_less_busy_worker(seconds = 0.005)
          @config[:wait_for_less_busy_worker] = Float(seconds)
        end

        def queue_requests(answer = true)
          @config[:queue_requests] = answer
        end

        def early_hints(answer = true)
          @config[:early_hints] = answer
        end

        def lowlevel_error_handler(obj = nil, &block)
          @config[:lowlevel_error_handler] = obj || block
        end

        def out_of_band(&block)
          (@config[:out_of_band] ||= []) << block if block
        end

        def log_requests(answer = true)
          @config[:log_requests] = answer
        end

        # Puma's worker hooks, in its 5.6 and 7 names (a key argument names a hook in Puma 6+), and
        # the kind of forkd hook each is:
        # - before_fork: Puma runs it in its master before it forks the workers; under forkd that
        #   is the template, before each fork (Forkd.before_fork);
        # - worker_boot: in each worker before it serves (Forkd.after_worker_boot), with its index;
        # - worker_shutdown: in each worker once it has stopped serving, with its index;
        # - before_refork, after_refork: in the template around a refork (Forkd.before_refork,
        #   Forkd.after_refork).
        HOOK_NAMES = {
          before_fork: :before_fork,
          on_worker_boot: :worker_boot, before_worker_boot: :worker_boot,
          on_worker_shutdown: :worker_shutdown, before_worker_shutdown: :worker_shutdown,
          on_refork: :before_refork, before_refork: :before_refork,
          after_refork: :after_refork,
        }.freeze

        HOOK_NAMES.each do |name, kind|
          define_method(name) do |_key = nil, &block|
            next @config.refuse(where, name.to_s, "needs a block") if block.nil?

            @config.hooks[kind] << block
          end
        end

        # forkd kills a worker whose heartbeats stop for its `timeouts.worker`: accepted when it
        # says the same.
        def worker_timeout(seconds)
          seconds = Float(seconds)
          usec = ENV.fetch("WATCHDOG_USEC", "")
          forkd = usec.match?(/\A\d+\z/) ? Integer(usec, 10) / 1e6 : nil
          return if forkd && (forkd - seconds).abs < 0.001

          now = forkd ? "\"#{format("%g", forkd)}s\"" : "off"
          @config.refuse(where, "worker_timeout #{format("%g", seconds)}",
                         "forkd kills a worker that sends no heartbeat for `timeouts { worker = " \
                         "\"#{format("%g", seconds)}s\" }` in its config (now #{now}): set it there and remove this line")
        end

        def plugin(name)
          case name.to_s
          when "tmp_restart"
            @config.warn_ignored(where, "plugin :tmp_restart", "restart with `forkctl reload` (or `systemctl reload`): " \
                                                               "a phased restart, one worker at a time")
          when "systemd"
            @config.warn_ignored(where, "plugin :systemd", "forkd speaks sd_notify to systemd itself")
          else
            @config.refuse(where, "plugin :#{name}", "Puma plugins run in Puma's launcher, which forkd replaces")
          end
        end

        MASTER.each do |name, why|
          define_method(name) { |*args, **_kw, &_block| @config.refuse(where, DSL.call_text(name, args), why) }
        end

        IGNORED.each do |name, why|
          define_method(name) { |*args, **_kw, &_block| @config.warn_ignored(where, DSL.call_text(name, args), why) }
        end

        # `name arg, ...` as the file has it.
        def self.call_text(name, args)
          [name, args.map(&:inspect).join(", ")].reject(&:empty?).join(" ")
        end

        # Puma chdirs there; forkd starts every worker in its own `directory`.
        def directory(dir)
          return if File.expand_path(dir) == Dir.pwd || (File.realpath(dir) == File.realpath(Dir.pwd) rescue false) # rubocop:disable Style/RescueModifier

          @config.refuse(where, "directory #{dir}", "forkd starts every worker in its `directory` (now #{Dir.pwd}): " \
                                                    "set it there (a reload picks up a new release)")
        end

        # Puma raises NoMethodError for a setting it does not know; so does forkd-rack, with the line.
        # (It answers no respond_to?: a setting is a call in the file, never a duck-typing probe.)
        def method_missing(name, *args, **kw, &block) # rubocop:disable Style/MissingRespondToMissing
          return super if name.start_with?("to_")

          @config.refuse(where, DSL.call_text(name, args), "not a Puma setting forkd-rack knows")
        end

        private

        # The puma.rb line that called the setting.
        def where
          loc = caller_locations.find { |l| l.path != __FILE__ }
          loc ? "#{loc.path}:#{loc.lineno}" : @path
        end
      end
    end
  end
end

# frozen_string_literal: true

require "optparse"
require "socket"

require_relative "../forkd"
require_relative "puma_config"
require_relative "gc_tuning"

module Forkd
  # forkd-rack: serve a Rack app (config.ru) as a forkd worker, with Puma::Server.
  #
  # Worker 0 loads config.ru once and runs Forkd.serve with a PumaServer; every worker forked from
  # it serves the same app object. See sdk/ruby/README.md.
  module Rack
    DEFAULT_THREADS = 5

    # The Forkd.serve server for Puma (5.6; 6.x is handled where its API differs).
    #
    # start makes a new Puma::Server on the inherited listeners and runs it in its own threads;
    # stop is Puma's own graceful restart, begin_restart(true), made to end under any load
    # (AcceptWaitEndsAtStop): the accept loop ends, keep-alive connections that are idle are
    # closed, requests in flight finish (their responses say "Connection: close"), every Puma
    # thread is joined, and the listeners stay open. A stopped server is dropped, and start makes
    # the next one: in the template after a pause or a fork, and in each forked worker, whose Puma
    # threads never existed in the template.
    class PumaServer
      attr_reader :app, :options

      # app: the Rack app. threads: requests served at once (Puma's max_threads). drain_timeout:
      # how long a stop waits for the next request of an open connection (DRAIN_TIMEOUT).
      # options: more Puma::Server options (persistent_timeout, first_data_timeout, ...).
      def initialize(app, threads: DEFAULT_THREADS, drain_timeout: DRAIN_TIMEOUT, **options)
        raise ArgumentError, "threads must be at least 1" unless threads.is_a?(Integer) && threads >= 1
        raise ArgumentError, "drain_timeout must be a number >= 0" unless drain_timeout.is_a?(Numeric) && drain_timeout >= 0

        PumaServer.require_puma
        @app = app
        @drain_timeout = drain_timeout
        @options = { min_threads: 0, max_threads: threads, wait_for_less_busy_worker: LESS_BUSY_DELAY }.merge(options)
        @options[:environment] ||= ENV["RACK_ENV"] || ENV["APP_ENV"] || "development"
        @server = nil
      end

      def self.require_puma
        require "puma"
        require "puma/server"
        require "puma/events"
      rescue LoadError => e
        raise LoadError, "forkd-rack needs the puma gem (Debian: apt-get install puma; " \
                         "with Bundler: gem \"puma\" in the Gemfile): #{e.message}"
      end

      # How long a worker with a request in flight waits before it accepts a connection, so that
      # an idle worker takes it first (Puma's wait_for_less_busy_worker; Puma 6 sets 0.005 in its
      # cluster mode, 5.6 only when asked). forkd's workers all accept on the same sockets, and the
      # kernel hands a new connection to whichever process reaches accept first: a busy one as
      # often as an idle one. Measured (BenchmarkRackMemory's phased restart, keep-alive clients):
      # without it, a reload's new template, idle beside three busy old workers, got none of the
      # connections that came free while it warmed up, and the workers' shares of 16 connections
      # ranged from 1 to 8 in steady state.
      LESS_BUSY_DELAY = 0.005

      # How long a stopping server keeps waiting for the next request on a connection whose
      # client may still send one (see KeepAliveDrain). A client that sends a request at least
      # this often is never cut off; one idle for longer is closed at this deadline, and only a
      # request written in that very instant could still meet the close.
      DRAIN_TIMEOUT = 2.0

      # The connections a stopping server holds open for their next request, and the wait for
      # them, bounded by the drain timeout (counted from the start of the stop).
      class Drain
        def initialize(timeout)
          @timeout = timeout
          @mutex = Mutex.new
          @held = []
          @deadline = nil
          @over = false
          @wake_r, @wake_w = IO.pipe
        end

        def begin
          @mutex.synchronize { @deadline ||= Process.clock_gettime(Process::CLOCK_MONOTONIC) + @timeout }
        end

        def active?
          !@deadline.nil?
        end

        # Take client instead of closing it, if its client may still send a request on it. Returns
        # whether it was taken.
        def hold(client)
          return false unless active? && owed?(client)

          taken = @mutex.synchronize { @over ? false : (@held << client) && true }
          wake if taken
          taken
        end

        def wake
          @wake_w.write_nonblock(".", exception: false)
        rescue IOError
          nil
        end

        # In a mold: close its pipe, whose other copies are the serving worker's.
        def abandon
          [@wake_r, @wake_w].each { |io| io.close unless io.closed? }
        end

        # Until every held connection has been handed to pool (readable: its next request came)
        # or closed (its client closed it), and no thread of pool is busy (one may hold more), or
        # until the deadline; then close what is left. Runs in the server's thread, before Puma
        # shuts its thread pool down.
        def run(pool)
          loop do
            held = @mutex.synchronize { @held.dup }
            break if held.empty? && pool.busy_threads.zero?

            left = @deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
            break if left <= 0

            # A thread that ends a request without holding its connection says nothing: look again
            # now and then.
            readable, = IO.select([@wake_r] + held.map(&:to_io), nil, nil, [left, 0.05].min)
            (readable || []).each do |io|
              if io.equal?(@wake_r)
                @wake_r.read_nonblock(4096, exception: false)
              else
                hand_back(held.find { |c| c.to_io.equal?(io) }, pool)
              end
            end
          end
          left = @mutex.synchronize do
            @over = true
            @held.slice!(0..)
          end
          left.each(&:close)
          [@wake_r, @wake_w].each(&:close)
        end

        private

        # A held connection is readable: its next request came (the thread pool serves it), or its
        # client closed it.
        def hand_back(client, pool)
          peek = begin
            client.to_io.recv_nonblock(1, Socket::MSG_PEEK, exception: false)
          rescue SystemCallError, IOError
            ""
          end
          return if peek == :wait_readable

          @mutex.synchronize { @held.delete(client) }
          client.forkd_handed = true
          return client.close if peek == ""

          begin
            pool << client
          rescue RuntimeError # a pool that is shutting down (not before run returns)
            client.close
          end
        end

        # Its client may send on it: nothing has been answered on it yet, or the last response
        # kept it alive; no request is half read; it was not handed back once already (every
        # response of a stopping server closes its connection).
        def owed?(client)
          client.forkd_reusable != false && !client.forkd_handed && client.can_close? &&
            client.io_ok? && !client.instance_variable_get(:@hijacked)
        rescue IOError
          false
        end
      end

      # What a Puma connection carries for its Drain: prepended to Puma::Client, whose close is
      # where Puma gives a connection up, wherever that happens (the reactor shutting down, a
      # thread after a keep-alive response that finds the reactor gone, a timeout).
      module DrainedClient
        # The Drain of its server (nil: not served by a forkd-rack server).
        attr_accessor :forkd_drain
        # Whether its last response kept it alive; nil before the first.
        attr_accessor :forkd_reusable
        # Whether the drain handed it back to the thread pool already.
        attr_accessor :forkd_handed

        def close
          drain = @forkd_drain
          return if drain&.hold(self)

          super
        end
      end

      # Puma::Server's graceful stop, without the failed request it causes for a keep-alive
      # client. Puma (5.6, and 6 to 8 alike) stops accepting, then closes every connection that
      # has no complete request buffered: an idle keep-alive connection whose client is writing
      # its next request at that moment (or about to: a busy client has not read the close yet)
      # gets end of file, and so does a connection accepted a moment earlier whose first request
      # is on its way. Clients that retry hide it (Go's, hey); wrk and Node's http client count a
      # failed request, and no client retries on a fresh connection. So from the moment the stop
      # begins, every response says "Connection: close", and a connection Puma would close while
      # its client may still send on it is held instead: its next request, once it comes, is
      # served (with "Connection: close") by the thread pool, which Puma shuts down only once the
      # drain is over: every held connection answered or closed by its client, or the drain
      # timeout passed.
      module KeepAliveDrain
        attr_writer :forkd_drain_timeout

        def forkd_drain
          @forkd_drain ||= Drain.new(@forkd_drain_timeout || DRAIN_TIMEOUT)
        end

        def begin_restart(sync = false)
          forkd_drain.begin
          super
        end

        # (The connection is found among the arguments: Puma 8 passes another object first.)
        def process_client(*args)
          client = args.find { |a| a.is_a?(::Puma::Client) }
          client&.forkd_drain = forkd_drain
          super
        ensure
          forkd_drain.wake if forkd_drain.active?
        end

        def handle_request(*args)
          client = args.find { |a| a.is_a?(::Puma::Client) }
          client&.forkd_reusable = false # an error closes it
          result = super
          client&.forkd_reusable = result == true
          result
        end

        # Puma decides keep-alive from the request's Connection header (and its own state).
        def str_headers(env, *rest)
          env[::Puma::Const::HTTP_CONNECTION] = "close" if forkd_drain.active?
          super
        end

        def graceful_shutdown
          forkd_drain.run(@thread_pool) if @thread_pool
          super
        end
      end

      # Puma::Server's accept loop, when a listener is readable, waits for a free pool thread
      # (ThreadPool#wait_until_not_full) before it looks at its stop command again. Under steady
      # keep-alive load no thread ever frees up: each serves its connection's next request, and
      # the reactor refills the queue with the others. So a stop could wait for as long as the
      # load lasts (a worker 0 that never pauses for a fork, an old worker killed at the shutdown
      # timeout). A stopping server marks its pool, and the wait ends: the loop accepts the
      # connection at hand (which is served, with "Connection: close"), reads the stop command
      # and ends. Puma::ThreadPool is patched for the whole process, since Server#run makes its
      # pool itself; a pool that is not stopping waits as Puma's does.
      module AcceptWaitEndsAtStop
        def stop_accepting
          with_mutex do
            @forkd_stop_accepting = true
            @not_full.broadcast
          end
        end

        def wait_until_not_full
          return super unless instance_variable_defined?(:@not_full) && instance_variable_defined?(:@max)

          with_mutex do
            @not_full.wait(@mutex) until @shutdown || @forkd_stop_accepting || busy_threads < @max
          end
        end
      end

      # The pool's threads serving a request, for X_FORKD_BUSY=: spawned minus waiting, what
      # Puma's stats report as max_threads - pool_capacity (busy_threads from Puma 6.5), without
      # the requests queued for a thread; 0 before the pool exists.
      module BusyThreads
        def forkd_busy_threads
          pool = @thread_pool
          pool ? [pool.spawned - pool.waiting, 0].max : 0
        end
      end

      # The stop command first, then the wake-up, so that the loop, once awake, reads it.
      module StopWakesAcceptLoop
        def begin_restart(sync = false)
          super(false)
          pool = @thread_pool
          pool.stop_accepting if pool.respond_to?(:stop_accepting)
          @thread.join if @thread && sync
        end
      end

      def self.server_class
        @server_class ||= begin
          ::Puma::ThreadPool.prepend(AcceptWaitEndsAtStop) unless ::Puma::ThreadPool <= AcceptWaitEndsAtStop
          ::Puma::Client.prepend(DrainedClient) unless ::Puma::Client <= DrainedClient
          Class.new(::Puma::Server) do
            include KeepAliveDrain
            include StopWakesAcceptLoop
            include BusyThreads
          end
        end
      end

      def running?
        !@server.nil?
      end

      def start(listeners)
        raise "the Puma server is already running" if @server

        options = @options.dup
        if defined?(::Puma::LogWriter) # Puma 6: events and logging are separate objects
          events = ::Puma::Events.new
          options[:log_writer] ||= ::Puma::LogWriter.stdio
        else
          events = ::Puma::Events.stdio
        end
        server = PumaServer.server_class.new(@app, events, options)
        server.forkd_drain_timeout = @drain_timeout
        binder = server.binder
        listeners.each do |io|
          binder.ios << io
          next unless io.is_a?(::UNIXServer)

          # As Puma's own inherit_unix_listener does: a unix socket has no peer address.
          env = binder.proto_env.dup
          env["REMOTE_ADDR"] = "127.0.0.1"
          binder.envs[io] = env
        end
        server.run
        @server = server
        Worker.busy_source = -> { server.forkd_busy_threads }
        nil
      end

      def stop
        server = @server
        @server = nil
        Worker.busy_source = nil
        server&.begin_restart(true)
        nil
      end

      # In a mold, forked from a worker this server serves in (Forkd.serve calls it): Puma's
      # threads do not exist here, and what they used is shared with that worker. So the server
      # is forgotten without a stop (whose command would travel through the pipe the serving
      # worker's Puma reads), and what it holds is closed, never shut down: its command pipe, its
      # reactor's poller (nio4r's close releases this process's epoll descriptor and wake-up
      # pipe; the epoll set itself lives on in the serving worker), the drain's pipe. The
      # connections are the runtime's business (Forkd::Runtime.drop_serving_state). The next
      # start, in a worker forked from the mold, makes a new Puma::Server.
      def abandon
        server = @server
        @server = nil
        return nil if server.nil?

        # The pool's counts were copied at the fork: none of its threads exists here.
        Worker.busy_source = nil

        selector = server.instance_variable_get(:@reactor)&.instance_variable_get(:@selector)
        selector.close if selector.respond_to?(:close)
        %i[@check @notify].each do |name|
          io = server.instance_variable_get(name)
          io.close if io.is_a?(IO) && !io.closed?
        end
        server.instance_variable_get(:@forkd_drain)&.abandon
        nil
      end
    end

    module_function

    # Load a Rack app from a rackup file, as Puma and rackup do. Returns the app.
    def load_app(path)
      require "rack"
      require "rack/builder"
      result = ::Rack::Builder.parse_file(path)
      result.is_a?(Array) ? result.first : result # Rack 2 returns [app, options]
    end

    # Count every request the app gets, for forkd's refork_after (X_FORKD_REQUESTS).
    def counting(app)
      lambda do |env|
        Forkd.add_requests(1)
        app.call(env)
      end
    end

    # Listen on a bind URL (PumaConfig.parse_bind's forms), for forkd-rack without forkd.
    def bind(url)
      kind, where, port = PumaConfig.parse_bind(url)
      if kind == :unix
        File.unlink(where) if !where.start_with?("\0") && File.socket?(where)
        return UNIXServer.new(where)
      end
      server = TCPServer.new(PumaConfig::WILDCARDS.include?(where) ? "0.0.0.0" : where, port)
      server.listen(1024)
      server
    end

    DEFAULT_BIND = "tcp://127.0.0.1:9292"

    # The command-line flags, read into a PumaConfig (Puma's flags, forkd-rack's own, and Puma's
    # that forkd-rack refuses or ignores, saying why). Returns [config, files, no_config, rest].
    def parse_command_line(argv, out)
      cli = PumaConfig.new
      files = []
      no_config = false
      here = "command line"
      master = PumaConfig::DSL::MASTER
      ignored = PumaConfig::DSL::IGNORED
      parser = OptionParser.new do |o|
        o.banner = "Usage: forkd-rack [options] [config.ru]\n\n" \
                   "Serve a Rack app as a forkd worker (Puma::Server, fork-worker capable). Puma's flags\n" \
                   "and puma.rb work where they mean something in a worker; the rest are refused with\n" \
                   "the forkd setting to use (docs/migrating-from-puma.md).\n\n"
        o.on("-t", "--threads MIN:MAX", "threads per worker, as Puma: MIN:MAX, or N for N:N " \
                                        "(default 0:#{DEFAULT_THREADS})") do |v|
          min, max = v.split(":", 2)
          begin
            cli[:min_threads] = Integer(min, 10)
            cli[:max_threads] = Integer(max || min, 10)
          rescue ArgumentError, TypeError
            raise OptionParser::InvalidArgument, "#{v} (want MIN:MAX or N)"
          end
          unless cli[:max_threads] >= 1 && cli[:min_threads].between?(0, cli[:max_threads])
            raise OptionParser::InvalidArgument, "#{v} (want 0 <= MIN <= MAX, MAX >= 1)"
          end
        end
        o.on("-e", "--environment ENV", "RACK_ENV (default: $APP_ENV, $RACK_ENV, $RAILS_ENV or development)") do |v|
          cli[:environment] = v
        end
        o.on("-b", "--bind URI", "tcp://HOST:PORT or unix:///path, repeatable; under forkd, one of the",
             "sockets of forkd's `listen` blocks (default without forkd: #{DEFAULT_BIND})") { |v| cli.add_bind(v, here) }
        o.on("-p", "--port PORT", Integer, "the same as -b tcp://0.0.0.0:PORT") { |v| cli.add_bind("tcp://0.0.0.0:#{v}", here) }
        o.on("-C", "--config PATH", "a puma.rb (default: config/puma/ENV.rb or config/puma.rb, if there)") do |v|
          files << v
        end
        o.on("--no-config", "read no puma.rb") { no_config = true }
        o.on("-I", "--include PATH", "add PATH (a:b:...) to $LOAD_PATH") { |v| $LOAD_PATH.unshift(*v.split(":")) }
        o.on("-v", "--log-requests", "log every request to stdout") { cli[:log_requests] = true }
        o.on("-q", "--quiet", "do not log requests (the default)") { cli[:log_requests] = false }
        o.on("-s", "--silent", "the same as --quiet") { cli[:log_requests] = false }
        o.on("--early-hints", "enable 103 Early Hints") { cli[:early_hints] = true }
        o.on("--preload", "accepted: in fork-worker mode worker 0 loads the app once") {}
        o.on("--bind-to-activated-sockets [only]", "accepted: forkd-rack serves on the sockets forkd passes") {}
        o.on("--keepalive SECONDS", Float, "idle keep-alive timeout (Puma's persistent_timeout, default 20)") do |v|
          cli[:persistent_timeout] = v
        end
        o.on("--drain-timeout SECONDS", Float, "how long a stopping worker waits for the next request on",
             "each open connection (default #{PumaServer::DRAIN_TIMEOUT})") do |v|
          raise OptionParser::InvalidArgument, "#{v} (want 0 or more)" if v.negative?

          cli[:drain_timeout] = v
        end
        o.on("--ready-template STEPS", "what worker 0 runs before each batch of forks, so that the workers",
             "share more of its heap: some of #{Readying::STEPS.join(",")}, or off",
             "(default #{Readying.default_steps.join(",")}; docs/fork-safety.md)") do |v|
          cli[:ready_template] = Readying.parse(v)
        rescue ArgumentError => e
          raise OptionParser::InvalidArgument, "#{v}: #{e.message}"
        end
        o.on("--malloc WHICH", GCTuning::MALLOCS, "the allocator of fork-worker mode's template and its forks: auto",
             "(jemalloc where installed, unless LD_PRELOAD is set) or system (default auto;",
             "docs/fork-safety.md)") do |v|
          cli[:malloc] = v
        end
        o.on("-V", "--version", "print the version") do
          out.puts "forkd-rack #{Forkd::VERSION} (protocol #{Forkd::Protocol::VERSION})"
          return nil
        end
        o.on("-h", "--help", "this help") do
          out.puts o
          return nil
        end
        o.separator ""
        o.separator "Puma's flags for its master, refused with the forkd setting to use:"
        { ["-w", "--workers COUNT", "forkd's `workers`"] => :workers,
          ["-f", "--fork-worker [REQUESTS]", "forkd's `fork_worker` block"] => :fork_worker,
          ["-S", "--state PATH", "forkctl"] => :state_path,
          ["--control-url URL", "forkctl"] => :activate_control_app,
          ["--control-token TOKEN", "forkctl"] => :activate_control_app,
          ["-R", "--restart-cmd CMD", "forkctl restart"] => :restart_command,
          ["--redirect-stdout FILE", "forkd's output (the journal)"] => :stdout_redirect,
          ["--redirect-stderr FILE", "forkd's output (the journal)"] => :stdout_redirect,
          ["--[no-]redirect-append", "forkd's output (the journal)"] => :stdout_redirect,
          ["--prune-bundler", "a reload starts a fresh worker 0"] => :prune_bundler,
          ["--extra-runtime-dependencies GEMS", "a reload starts a fresh worker 0"] => :extra_runtime_dependencies,
          ["--debug", "not supported"] => :debug }.each do |flags, name|
          o.on(*flags) do |v|
            cli.refuse(here, [flags.first.split.first, v].reject { |x| x.nil? || x == true }.join(" "), master.fetch(name))
          end
        end
        o.on("--dir DIR", "forkd's `directory`") do |v|
          next if File.expand_path(v) == Dir.pwd

          cli.refuse(here, "--dir #{v}", "forkd starts every worker in its `directory` (now #{Dir.pwd}): set it there")
        end
        o.separator "Ignored, with a warning:"
        { ["--pidfile PATH", "forkd's PID is systemd's MainPID"] => :pidfile,
          ["--tag NAME", "forkctl status names the workers"] => :tag }.each do |flags, name|
          o.on(*flags) { |v| cli.warn_ignored(here, "#{flags.first.split.first} #{v}", ignored.fetch(name)) }
        end
      end
      rest = parser.parse(argv)
      raise OptionParser::InvalidArgument, "want at most one config.ru, not #{rest.join(" ")}" if rest.size > 1

      [cli, files, no_config, rest]
    end

    # Puma's hooks from the config, as forkd's: each kind runs its blocks in the order Puma does
    # (the order they were given), the worker hooks with the worker's index.
    def register_hooks(config)
      hooks = config.hooks
      Forkd.before_fork { hooks[:before_fork].each(&:call) } unless hooks[:before_fork].empty?
      Forkd.after_worker_boot { hooks[:worker_boot].each { |h| h.call(Forkd.worker_index) } } unless hooks[:worker_boot].empty?
      Forkd.before_refork { hooks[:before_refork].each(&:call) } unless hooks[:before_refork].empty?
      Forkd.after_refork { hooks[:after_refork].each(&:call) } unless hooks[:after_refork].empty?
    end

    def main(argv = ARGV, out: $stdout)
      begin
        parsed = parse_command_line(argv, out)
      rescue OptionParser::ParseError => e
        warn "forkd-rack: #{e.message} (forkd-rack --help)"
        return 2
      end
      return 0 if parsed.nil?

      cli, files, no_config, rest = parsed
      # Puma's layers: the command line over the file, which is found for the environment.
      if files.empty? && !no_config
        default = PumaConfig.default_file(cli[:environment] || PumaConfig.default_environment)
        files << default if default
      end
      file = PumaConfig.new
      files.each { |f| file.load_file(f) }
      config = file.merge(cli)

      begin
        socks = Forkd.listeners
      rescue Forkd::Error => e
        Worker.log(e.message)
        return 1
      end
      config.check_binds(socks)
      tuned = GCTuning.describe
      Worker.log(tuned) if tuned && !ENV["FORKD_CONTROL_FD"].to_s.empty?
      malloc = GCTuning.describe_malloc
      Worker.log(malloc) if malloc
      config.warnings.each { |w| warn "forkd-rack: #{w}" }
      unless config.refusals.empty?
        config.refusals.each { |r| warn "forkd-rack: #{r}" }
        return 2
      end

      # As Puma does, before the app loads.
      environment = config[:environment] || PumaConfig.default_environment
      ENV["RACK_ENV"] = environment
      rackup = rest.first || config[:rackup] || "config.ru"
      begin
        PumaServer.require_puma
        app = config[:app] || load_app(rackup)
        if config[:log_requests]
          require "rack/common_logger"
          app = ::Rack::CommonLogger.new(app, $stdout)
        end
      rescue Exception => e # rubocop:disable Lint/RescueException
        raise if e.is_a?(SystemExit)

        Worker.log("cannot load #{rackup}: #{e.class}: #{e.message}\n#{(e.backtrace || []).first(20).join("\n")}")
        return 1
      end
      if socks.empty?
        urls = config.binds.nil? || config.binds.empty? ? [DEFAULT_BIND] : config.binds.map(&:first)
        begin
          socks = urls.map { |url| bind(url) }
        rescue SystemCallError, ArgumentError, SocketError => e
          Worker.log("cannot listen on #{urls.join(", ")}: #{e.message}")
          return 1
        end
        Worker.log("not under forkd: serving #{rackup} on #{urls.join(", ")}")
      end
      register_hooks(config)
      Forkd.ready_template = config[:ready_template] unless config[:ready_template].nil?
      server = PumaServer.new(counting(app), threads: config[:max_threads] || DEFAULT_THREADS,
                                             drain_timeout: config[:drain_timeout] || PumaServer::DRAIN_TIMEOUT,
                                             min_threads: config[:min_threads] || 0, environment: environment,
                                             **config.server_options)
      Forkd.serve(server, listeners: socks)
      config.hooks[:worker_shutdown].each { |h| h.call(Forkd.worker_index) }
      0
    end
  end
end

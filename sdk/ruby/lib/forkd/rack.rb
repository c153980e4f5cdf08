# frozen_string_literal: true

require "optparse"
require "socket"

require_relative "../forkd"

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

      # app: the Rack app. threads: requests served at once (Puma's max_threads). options: more
      # Puma::Server options (persistent_timeout, first_data_timeout, ...).
      def initialize(app, threads: DEFAULT_THREADS, **options)
        raise ArgumentError, "threads must be at least 1" unless threads.is_a?(Integer) && threads >= 1

        PumaServer.require_puma
        @app = app
        @options = { min_threads: 0, max_threads: threads }.merge(options)
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

      # How long a stopping server waits for the first request of a connection it has accepted
      # but not read from yet.
      FIRST_REQUEST_GRACE = 1.0

      # Puma::Server with one change to its graceful stop (Puma 5.6; 6.x has the same logic): when
      # it shuts its reactor down, Puma closes every connection that has no complete request
      # buffered. For an idle keep-alive connection that is right (HTTP clients retry an
      # idempotent request on a reused connection the server closed). But a connection accepted
      # a moment earlier, whose first request is still on its way, would be closed too, and a
      # client sees end of file on a fresh connection, which it never retries: a failed request,
      # at every pause, spawn and stop under load. So a connection that has served nothing yet gets until a shared
      # deadline (FIRST_REQUEST_GRACE after the shutdown began) for its request to arrive; then
      # Puma serves it, with "Connection: close", or closes it if nothing came.
      module FirstRequestGrace
        def reactor_wakeup(client)
          if !@queue_requests && client.can_close? && fresh?(client)
            @forkd_grace_until ||= Process.clock_gettime(Process::CLOCK_MONOTONIC) + FIRST_REQUEST_GRACE
            left = @forkd_grace_until - Process.clock_gettime(Process::CLOCK_MONOTONIC)
            client.to_io.wait_readable(left) if left.positive?
          end
          super
        end

        private

        def fresh?(client)
          served = client.instance_variable_get(:@requests_served)
          served.nil? || served.zero?
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
          Class.new(::Puma::Server) do
            include FirstRequestGrace
            include StopWakesAcceptLoop
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
        nil
      end

      def stop
        server = @server
        @server = nil
        server&.begin_restart(true)
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

    def bind(spec)
      if spec.start_with?("unix:")
        path = spec.delete_prefix("unix:")
        File.unlink(path) if !path.start_with?("\0") && File.socket?(path)
        UNIXServer.new(path)
      else
        host, sep, port = spec.rpartition(":")
        raise ArgumentError, "--bind wants HOST:PORT or unix:/path, not #{spec.inspect}" if sep.empty?

        host = host.delete_prefix("[").delete_suffix("]")
        host = "0.0.0.0" if host.empty?
        server = TCPServer.new(host, Integer(port, 10))
        server.listen(1024)
        server
      end
    end

    def main(argv = ARGV)
      opts = { threads: DEFAULT_THREADS, bind: "127.0.0.1:9292", keepalive: nil }
      parser = OptionParser.new do |o|
        o.banner = "Usage: forkd-rack [options] [config.ru]\n\n" \
                   "Serve a Rack app as a forkd worker (Puma::Server, fork-worker capable).\n\n"
        o.on("-t", "--threads N", Integer, "requests served at once (default #{DEFAULT_THREADS})") { |v| opts[:threads] = v }
        o.on("-b", "--bind ADDR", "HOST:PORT or unix:/path to listen on without LISTEN_FDS " \
                                  "(default #{opts[:bind]})") { |v| opts[:bind] = v }
        o.on("--keepalive SECONDS", Float, "how long an idle keep-alive connection stays open " \
                                           "(Puma's persistent_timeout, default 20)") { |v| opts[:keepalive] = v }
        o.on("-v", "--version", "print the version") do
          puts "forkd-rack #{Forkd::VERSION} (protocol #{Forkd::Protocol::VERSION})"
          return 0
        end
        o.on("-h", "--help", "this help") do
          puts o
          return 0
        end
      end
      begin
        rest = parser.parse(argv)
      rescue OptionParser::ParseError => e
        warn "forkd-rack: #{e.message}"
        warn parser.banner
        return 2
      end
      if rest.size > 1 || opts[:threads] < 1
        warn "forkd-rack: want at most one config.ru and --threads >= 1"
        return 2
      end
      rackup = rest.first || "config.ru"

      begin
        socks = Forkd.listeners
      rescue Forkd::Error => e
        Worker.log(e.message)
        return 1
      end
      begin
        PumaServer.require_puma
        app = load_app(rackup)
      rescue Exception => e # rubocop:disable Lint/RescueException
        raise if e.is_a?(SystemExit)

        Worker.log("cannot load #{rackup}: #{e.class}: #{e.message}\n#{(e.backtrace || []).first(20).join("\n")}")
        return 1
      end
      if socks.empty?
        begin
          socks = [bind(opts[:bind])]
        rescue SystemCallError, ArgumentError, SocketError => e
          Worker.log("cannot listen on #{opts[:bind]}: #{e.message}")
          return 1
        end
        Worker.log("not under forkd: serving #{rackup} on #{opts[:bind]}")
      end
      puma_options = {}
      puma_options[:persistent_timeout] = opts[:keepalive] if opts[:keepalive]
      server = PumaServer.new(counting(app), threads: opts[:threads], **puma_options)
      Forkd.serve(server, listeners: socks)
      0
    end
  end
end

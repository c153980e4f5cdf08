# frozen_string_literal: true

require "monitor"
require "socket"

require_relative "version"
require_relative "protocol"
require_relative "sd_notify"

module Forkd
  # Something forkd or systemd set for this process is unusable: a malformed LISTEN_FDS,
  # LISTEN_FDNAMES, LISTEN_PID, WATCHDOG_USEC, WATCHDOG_PID, FORKD_WORKER, FORKD_GENERATION or
  # FORKD_CONTROL_FD, or a passed descriptor that is not a listening stream socket. A real
  # supervisor never does that.
  class Error < StandardError; end

  # A flag that is set once and can be waited for, like Python's threading.Event.
  class Event
    def initialize
      @mutex = Mutex.new
      @cond = ConditionVariable.new
      @set = false
    end

    def set
      @mutex.synchronize do
        @set = true
        @cond.broadcast
      end
      self
    end

    def set?
      @set
    end

    # Wait until set, or timeout seconds (nil: forever). Returns set?.
    def wait(timeout = nil)
      deadline = timeout && Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
      @mutex.synchronize do
        until @set
          if deadline
            left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
            break if left <= 0

            @cond.wait(@mutex, left)
          else
            @cond.wait(@mutex)
          end
        end
      end
      @set
    end
  end

  # This process's side of the forkd worker contract (docs/protocol.md): the environment it was
  # started with, its listeners, its notifications, heartbeats and request count, the control
  # channel's handshake, and whether the master is still there. The public methods are
  # re-exported by the Forkd module, which documents them.
  module Worker
    LISTEN_FDS_START = 3
    UNKNOWN_NAME = "unknown"

    # How often the request count is reported when no heartbeat carries it.
    REQUESTS_INTERVAL = 1.0
    # How often the fallback without pidfds checks whether the master is gone.
    MASTER_POLL_INTERVAL = 1.0

    # pidfd_open(2) has the same number on every architecture of the unified syscall table.
    SYS_PIDFD_OPEN = 434

    module_function

    # Write one line to stderr, which forkd sends to its log.
    def log(msg)
      $stderr.write("forkd: #{msg}\n")
      $stderr.flush
    rescue StandardError
      nil
    end

    # Log msg and exit at once with code, from any thread (no at_exit handlers: this process
    # must not go on as anything).
    def die(msg, code = 1)
      log(msg)
      exit!(code)
    end

    # Exit with status 1 when FORKD_PROTOCOL names a version this SDK does not speak.
    def check_protocol
      theirs = ENV.fetch("FORKD_PROTOCOL", "")
      return if theirs.empty? || theirs == Protocol::VERSION.to_s

      $stderr.write("forkd-ruby speaks protocol #{Protocol::VERSION}, this forkd master speaks " \
                    "#{theirs}: upgrade the SDK\n")
      $stderr.flush
      exit!(1)
    end

    # --- the environment ------------------------------------------------------------------------

    def int_env(name, unset)
      text = ENV.fetch(name, "")
      return unset if text.empty?
      raise Error, "#{name}=#{text.inspect} is not an integer" unless text.match?(/\A[+-]?\d+\z/)

      Integer(text, 10)
    end

    # What the supervisor passed this process, read from the environment for one PID.
    class State
      attr_reader :pid, :mine, :watchdog, :control_fd
      attr_accessor :index, :generation, :master_pid, :channel, :channel_error,
                    :hello_sent, :welcomed, :template, :listeners, :names, :mold, :serve, :report_heap

      def initialize(channel: nil)
        @pid = Process.pid
        listen_pid = ENV.fetch("LISTEN_PID", "")
        # LISTEN_PID names the worker the environment was made for. A process the worker started
        # (or forked without the SDK) inherits the variables but is not that worker: it must not
        # take the listeners, nor the control channel whose number it may have for another file.
        @mine = true
        unless listen_pid.empty?
          raise Error, "LISTEN_PID=#{listen_pid.inspect} is not an integer" unless listen_pid.match?(/\A\d+\z/)

          @mine = Integer(listen_pid, 10) == @pid
        end
        @index = Worker.int_env("FORKD_WORKER", -1)
        raise Error, "FORKD_WORKER=#{@index}: want an index >= 0" if @index < -1

        @generation = Worker.int_env("FORKD_GENERATION", 0)
        @watchdog = read_watchdog
        @master_pid = @index >= 0 ? Process.ppid : 0
        @control_fd = nil
        fd = Worker.int_env("FORKD_CONTROL_FD", nil)
        if !fd.nil? && @mine
          raise Error, "FORKD_CONTROL_FD=#{fd} is not a descriptor" if fd.negative?

          @control_fd = fd
        end
        @channel = channel
        @channel_error = nil
        if @channel.nil? && !@control_fd.nil?
          begin
            @channel = Protocol::Channel.from_fd(@control_fd)
          rescue SystemCallError, ArgumentError, IOError => e
            @channel_error = Error.new("FORKD_CONTROL_FD=#{@control_fd}: #{e.message}")
          end
        end
        @hello_sent = false
        @welcomed = false
        @template = false
        # A mold: a template forked from a serving worker (docs/protocol.md, molds).
        @mold = false
        # Whether this worker serves: false in a template the master welcomed with "serve": false
        # (mold mode's worker 0) and in every mold.
        @serve = true
        # Whether the master asked this template to report its heap's size once the app has
        # loaded ("report_heap": true in the welcome of an exec'd worker 0): it carries it to the
        # next template it execs (docs/fork-safety.md, "Ruby's heap pages").
        @report_heap = false
        @listeners = nil # made by Worker.listeners on first use
        @names = nil
      end

      private

      # sd_watchdog_enabled(3): WATCHDOG_USEC applies when WATCHDOG_PID is unset or is us.
      def read_watchdog
        usec = ENV.fetch("WATCHDOG_USEC", "")
        return 0.0 if usec.empty?
        raise Error, "WATCHDOG_USEC=#{usec.inspect} is not an integer" unless usec.match?(/\A[+-]?\d+\z/)

        n = Integer(usec, 10)
        raise Error, "WATCHDOG_USEC must be a positive number of microseconds" unless n.positive?

        pid = Worker.int_env("WATCHDOG_PID", nil)
        return 0.0 if !pid.nil? && pid != @pid

        n / 1e6
      end
    end

    # (||=: a second load of this file must not drop the state, and with it the listeners.)
    @lock ||= Monitor.new
    @state = nil unless defined?(@state)

    class << self
      attr_reader :lock
    end

    # The State of this process, read once per PID (a forked child reads it anew).
    def state
      @lock.synchronize do
        opt_in_to_ksm if @state.nil?
        @state = State.new if @state.nil? || @state.pid != Process.pid
        @state
      end
    end

    # prctl(2)'s option that opts a whole process in to KSM (Linux 6.4+).
    PR_SET_MEMORY_MERGE = 67

    # With memory.ksm, forkd's shim opts the worker in to the kernel's same-page merging before
    # it execs the app; kernels before 6.16 drop the flag at the exec, so the exec'd process
    # (the template, or an exec-mode worker) opts in again, and its forks inherit it. A kernel
    # without it merges nothing: the master said so once.
    def opt_in_to_ksm
      return unless ENV["FORKD_KSM"] == "1"

      require "fiddle"
      prctl = Fiddle::Function.new(Fiddle.dlopen(nil)["prctl"],
                                   [Fiddle::TYPE_INT, Fiddle::TYPE_LONG, Fiddle::TYPE_LONG, Fiddle::TYPE_LONG,
                                    Fiddle::TYPE_LONG], Fiddle::TYPE_INT)
      prctl.call(PR_SET_MEMORY_MERGE, 1, 0, 0, 0)
    rescue LoadError, StandardError
      nil
    end

    # --- listeners ------------------------------------------------------------------------------

    def take_listeners(st)
      count_text = ENV.fetch("LISTEN_FDS", "")
      return [[], []] if count_text.empty? || ENV.fetch("LISTEN_PID", "").empty? || !st.mine
      raise Error, "LISTEN_FDS=#{count_text.inspect} is not an integer" unless count_text.match?(/\A[+-]?\d+\z/)

      count = Integer(count_text, 10)
      raise Error, "LISTEN_FDS=#{count}: want a count >= 0" if count.negative?

      names_text = ENV.fetch("LISTEN_FDNAMES", "")
      if names_text.empty?
        names = [UNKNOWN_NAME] * count
      else
        names = names_text.split(":", -1)
        if names.size != count
          raise Error, "LISTEN_FDNAMES=#{names_text.inspect} names #{names.size} sockets, LISTEN_FDS=#{count}"
        end
      end
      kinds = (0...count).map do |i|
        fd = LISTEN_FDS_START + i
        probe_listener(fd, names[i])
      end
      socks = kinds.each_with_index.map do |family, i|
        fd = LISTEN_FDS_START + i
        # for_fd leaves O_NONBLOCK as it is: the flag lives in the open file description that
        # every worker shares.
        io = family == Socket::AF_UNIX ? UNIXServer.for_fd(fd) : TCPServer.for_fd(fd)
        # Close-on-exec is per descriptor, not shared: programs the worker runs do not get them.
        io.close_on_exec = true
        io
      end
      [socks, names]
    end

    # The address family of the listening stream socket at fd; raises Error for anything else.
    def probe_listener(fd, name)
      begin
        probe = Socket.for_fd(fd)
      rescue SystemCallError, ArgumentError => e
        raise Error, "passed fd #{fd} (#{name}) is not a socket: #{e.message}"
      end
      probe.autoclose = false
      begin
        type = probe.getsockopt(:SOCKET, :TYPE).int
        accepting = probe.getsockopt(:SOCKET, :ACCEPTCONN).int
        family = probe.local_address.afamily
      rescue SystemCallError, SocketError => e
        raise Error, "passed fd #{fd} (#{name}) is not a socket: #{e.message}"
      end
      unless type == Socket::SOCK_STREAM && accepting == 1 &&
             [Socket::AF_INET, Socket::AF_INET6, Socket::AF_UNIX].include?(family)
        raise Error, "passed fd #{fd} (#{name}) is not a listening stream socket"
      end

      family
    end

    def listeners
      st = state
      @lock.synchronize do
        st.listeners, st.names = take_listeners(st) if st.listeners.nil?
        st.listeners.dup
      end
    end

    def listeners_by_name
      socks = listeners
      names = state.names
      byname = {}
      socks.zip(names).each { |s, name| (byname[name] ||= []) << s }
      byname
    end

    def worker_index
      state.index
    end

    def generation
      state.generation
    end

    def template?
      state.template
    end

    def mold?
      state.mold
    end

    def serving?
      state.serve
    end

    # --- request count and heartbeats -----------------------------------------------------------

    @requests_lock ||= Mutex.new
    @requests ||= 0
    @requests_started = false unless defined?(@requests_started)

    class << self
      attr_accessor :requests_started
      # A callable returning how many of this process's threads serve a request now, reported as
      # X_FORKD_BUSY= with the request count when it changed; nil (the default) reports nothing.
      # forkd-rack sets it to its Puma server's count.
      attr_accessor :busy_source
    end

    # The busy threads busy_source says, or nil: without one, or when it fails or says nonsense
    # (the master would drop the whole datagram).
    def busy_threads
      n = @busy_source&.call
      n.is_a?(Integer) && n >= 0 && n <= MAX_BUSY ? n : nil
    rescue StandardError
      nil
    end

    # The largest X_FORKD_BUSY= forkd takes (docs/protocol.md).
    MAX_BUSY = 1_000_000

    def add_requests(count = 1)
      raise TypeError, "add_requests wants an Integer, not #{count.inspect}" unless count.is_a?(Integer)

      @requests_lock.synchronize { @requests += count }
      start_reporter_lazily unless @requests_started
      @requests
    end

    def requests
      @requests
    end

    # A thread: WATCHDOG=1 every half WATCHDOG_USEC, X_FORKD_REQUESTS= and X_FORKD_BUSY= when they
    # changed (with the next heartbeat, or on their own at most once a second).
    class Reporter
      def initialize
        @thread = nil
        @stop = Event.new
        @reported = 0
        @reported_busy = nil
      end

      def running?
        !@thread.nil? && @thread.alive?
      end

      def start
        return if running?
        return if (SdNotify.address rescue nil).nil? # rubocop:disable Style/RescueModifier

        watchdog = Worker.state.watchdog
        @stop = Event.new
        stop = @stop
        @thread = Thread.new { run(watchdog, stop) }
        @thread.name = "forkd-heartbeat"
        @thread.report_on_exception = false
      end

      def stop
        t = @thread
        @thread = nil
        @stop.set
        t.join(5) if t && t != Thread.current
      end

      private

      def deliver(text)
        total = Worker.requests
        busy = Worker.busy_threads
        lines = text.empty? ? [] : [text]
        lines << "X_FORKD_REQUESTS=#{total}" if total != @reported
        lines << "X_FORKD_BUSY=#{busy}" if busy && busy != @reported_busy
        return if lines.empty?
        return unless SdNotify.notify(lines.join("\n"))

        @reported = total
        @reported_busy = busy if busy
      rescue SystemCallError, IOError
        # The master judges a worker by the heartbeats that arrive; a master that is gone is
        # master_gone's business.
        nil
      end

      def now
        Process.clock_gettime(Process::CLOCK_MONOTONIC)
      end

      def run(watchdog, stop)
        inf = Float::INFINITY
        hb_every = watchdog.positive? ? watchdog / 2 : inf
        next_hb = now + hb_every
        count_every = !watchdog.positive? || hb_every > REQUESTS_INTERVAL ? REQUESTS_INTERVAL : inf
        next_count = now + count_every
        loop do
          wait = [next_hb, next_count].min - now
          return if stop.wait([wait, 0].max)

          t = now
          if t >= next_hb
            deliver("WATCHDOG=1")
            next_hb = [next_hb + hb_every, t].max
          elsif t >= next_count
            deliver("")
          end
          next_count = t + count_every if t >= next_count
        end
      rescue StandardError => e
        Worker.log("heartbeat thread failed: #{e.class}: #{e.message}")
      end
    end

    @reporter ||= Reporter.new

    class << self
      attr_reader :reporter
    end

    def start_reporter_lazily
      @requests_started = true
      @reporter.start
    end

    # --- notifications --------------------------------------------------------------------------

    def notify(text)
      SdNotify.notify(text)
    end

    def ready
      st = state
      ensure_welcome(fork: false) if st.channel || st.channel_error
      sent = SdNotify.notify("READY=1")
      start_reporter_lazily
      sent
    end

    def status(text)
      SdNotify.notify("STATUS=#{text.to_s.tr("\n", " ")}")
    end

    def stopping
      SdNotify.notify("STOPPING=1")
    end

    # --- the control channel: hello / welcome ---------------------------------------------------

    def reply_error(channel, seq, reason)
      channel.send_message({ "op" => "error", "seq" => seq, "error" => reason })
    rescue SystemCallError, IOError, ArgumentError
      nil
    end

    # Send hello on this worker's channel and wait for welcome.
    #
    # Returns true once welcomed; false when interrupt_io became readable and interrupted.call
    # says to give up (a stop signal while waiting). Exits with status 1 on refuse, or when the
    # master closes the channel first.
    def handshake(fork:, interrupt_io: nil, interrupted: nil)
      st = state
      raise st.channel_error if st.channel_error

      ch = st.channel
      return true if ch.nil? || st.welcomed

      @lock.synchronize do
        unless st.hello_sent
          st.hello_sent = true
          begin
            ch.send_message(hello_message(fork: fork, mold: st.mold))
          rescue SystemCallError, IOError => e
            die("cannot send hello to the forkd master: #{e.message}")
          end
        end
      end
      loop do
        if interrupt_io
          readable, = IO.select([ch.sock, interrupt_io])
          return false if readable.include?(interrupt_io) && interrupted&.call
          next unless readable.include?(ch.sock)
        end
        begin
          msg, ios = ch.recv
        rescue SystemCallError, IOError => e
          die("control channel: #{e.message}")
        end
        Protocol.close_all(ios)
        die("the forkd master closed the control channel before welcoming this worker") if msg.nil?
        if msg.is_a?(Protocol::Invalid)
          reply_error(ch, msg.seq, msg.reason) unless msg.seq.nil?
          next
        end
        case msg["op"]
        when "welcome"
          @lock.synchronize do
            w = msg["worker"]
            g = msg["generation"]
            st.index = w if w.is_a?(Integer) && w >= 0
            st.generation = g if g.is_a?(Integer)
            st.welcomed = true
            st.template = st.mold || (fork && st.index.zero?)
            # Only a template can be told not to serve: it still forks the workers that do.
            st.serve = !st.mold && !(st.template && msg["serve"] == false)
            st.report_heap = st.template && !st.mold && msg["report_heap"] == true
          end
          return true
        when "refuse"
          die("the forkd master refused this worker: #{msg.fetch("error", "(no reason given)")}")
        else
          reply_error(ch, msg["seq"], "#{msg["op"]} before welcome") unless msg["seq"].nil?
        end
      end
    end

    # The plain API's handshake (no Forkd.serve): hello, welcome, then a reader thread that
    # answers requests with error and notices end of file.
    def ensure_welcome(fork: false)
      st = state
      raise st.channel_error if st.channel_error
      return if st.channel.nil?

      @lock.synchronize do
        return if st.welcomed

        handshake(fork: fork)
        t = Thread.new { plain_reader(st) }
        t.name = "forkd-control"
        t.report_on_exception = false
      end
    end

    def plain_reader(st)
      ch = st.channel
      loop do
        begin
          msg, ios = ch.recv
        rescue SystemCallError, IOError
          msg = nil
          ios = []
        end
        Protocol.close_all(ios)
        if msg.nil?
          set_master_gone
          return
        end
        if msg.is_a?(Protocol::Invalid)
          reply_error(ch, msg.seq, msg.reason) unless msg.seq.nil?
          next
        end
        seq = msg["seq"]
        next if seq.nil?

        if msg["op"] == "spawn"
          begin
            ch.send_message({ "op" => "spawn_failed", "seq" => seq,
                              "error" => "this worker does not fork (it runs without Forkd.serve)" })
          rescue SystemCallError, IOError, ArgumentError
            nil
          end
        else
          reply_error(ch, seq, "unexpected op #{msg["op"].inspect}")
        end
      end
    end

    # --- the master -----------------------------------------------------------------------------

    @master_gone ||= Event.new
    @master_gone_callbacks ||= []
    @master_watch_started = false unless defined?(@master_watch_started)

    class << self
      attr_reader :master_gone_callbacks
    end

    def master_gone_event
      @master_gone
    end

    def set_master_gone
      @master_gone.set
      @master_gone_callbacks.dup.each do |cb|
        cb.call
      rescue StandardError
        nil
      end
    end

    def master_gone
      st = state
      @lock.synchronize do
        if !@master_watch_started && st.index >= 0 && st.channel.nil?
          @master_watch_started = true
          master_pid = st.master_pid
          t = Thread.new { watch_master(master_pid) }
          t.name = "forkd-master"
          t.report_on_exception = false
        end
      end
      @master_gone
    end

    def pidfd_function
      return @pidfd_function if defined?(@pidfd_function)

      @pidfd_function = begin
        require "fiddle"
        libc = Fiddle.dlopen(nil)
        Fiddle::Function.new(libc["syscall"], [Fiddle::TYPE_LONG, Fiddle::TYPE_LONG, Fiddle::TYPE_LONG],
                             Fiddle::TYPE_LONG)
      rescue LoadError, StandardError
        nil
      end
    end

    # An IO for a pidfd of pid (readable once pid has exited), or nil when pidfds are not
    # available (no Fiddle, an old kernel, an architecture with another syscall number).
    def pidfd_open(pid)
      return nil unless RUBY_PLATFORM.match?(/x86_64|aarch64|arm|riscv|powerpc|ppc|s390|i[3-6]86|loongarch/)

      fn = pidfd_function
      return nil if fn.nil?

      fd = fn.call(SYS_PIDFD_OPEN, pid, 0)
      return nil if fd.negative?

      io = IO.for_fd(fd, autoclose: true)
      io.close_on_exec = true
      io
    rescue StandardError
      nil
    end

    # A pidfd IO for the master, or nil (no pidfd support); sets master_gone when already gone.
    def open_master_pidfd(master_pid)
      if Process.ppid != master_pid
        set_master_gone
        return nil
      end
      io = pidfd_open(master_pid)
      return nil if io.nil?

      # The master may have exited, and its PID been reused, between ppid and pidfd_open; while
      # it is still our parent, the pidfd is the master's.
      if Process.ppid != master_pid
        io.close
        set_master_gone
        return nil
      end
      io
    end

    def watch_master(master_pid)
      io = open_master_pidfd(master_pid)
      return if @master_gone.set?

      if io
        begin
          IO.select([io])
        ensure
          io.close
        end
        set_master_gone
        return
      end
      sleep(MASTER_POLL_INTERVAL) while Process.ppid == master_pid
      set_master_gone
    end

    # --- forks ----------------------------------------------------------------------------------

    # Say hello on a new worker's channel as soon as it is forked, before the process is made that
    # worker: the handshake then only waits for what is left of the master's answer. Returns false
    # when it could not be sent (the handshake tries again, and says why if it fails).
    def send_forked_hello(channel, mold: false)
      Protocol::Channel.new(channel).send_message(hello_message(fork: mold, mold: mold))
      true
    rescue SystemCallError, IOError, ArgumentError
      false
    end

    # The hello of this process: "fork" says it can be the template, "mold" that it is a mold.
    def hello_message(fork:, mold:)
      msg = { "op" => "hello", "pid" => Process.pid, "fork" => fork ? true : false, "sdk" => SDK }
      msg["mold"] = true if mold
      msg
    end

    # Make this process (the SDK's grandchild) worker index of generation gen, whose channel is
    # channel (a Socket): the environment, this module's state, the random generator and the
    # request count. The forking process's channel was closed by after_any_fork_in_child;
    # hello_sent says send_forked_hello did its part. mold: this process is a mold (worker 0, a
    # template that does not serve), whose notifications go to notify_socket when it is given.
    def become_forked_worker(index, gen, channel, hello_sent: false, mold: false, notify_socket: nil)
      pid = Process.pid.to_s
      old = @state
      ENV["LISTEN_PID"] = pid
      ENV["WATCHDOG_PID"] = pid if ENV.key?("WATCHDOG_PID")
      ENV["FORKD_WORKER"] = index.to_s
      ENV["FORKD_GENERATION"] = gen.to_s
      ENV["FORKD_CONTROL_FD"] = channel.fileno.to_s
      ENV["NOTIFY_SOCKET"] = notify_socket if notify_socket.is_a?(String) && !notify_socket.empty?
      channel.close_on_exec = true
      @requests_lock = Mutex.new
      @requests = 0
      @requests_started = false
      @master_gone = Event.new
      @master_watch_started = false
      @reporter = Reporter.new
      st = State.new(channel: Protocol::Channel.new(channel))
      st.hello_sent = hello_sent
      st.mold = mold
      st.serve = !mold
      st.master_pid = old.master_pid if old
      if old&.listeners
        # The same descriptors, now this worker's: LISTEN_PID says so.
        st.listeners = old.listeners
        st.names = old.names
      end
      @state = st
      # Ruby reseeds its default generator after every fork; do it here too, explicitly, as
      # docs/protocol.md asks of every SDK.
      Random.srand
    end

    # Any fork (the SDK's or a library's), in the child: the threads of this module are gone,
    # and the parent's control channel is the parent's: a copy held here would keep it open
    # after the parent is gone. (The SDK's new worker gets its own channel with the spawn.)
    def after_any_fork_in_child
      @requests_lock = Mutex.new
      @lock = Monitor.new
      @reporter = Reporter.new
      @requests_started = false
      st = @state
      return if st.nil? || st.channel.nil?

      begin
        st.channel.close
      rescue IOError, SystemCallError
        nil
      end
    end
  end
end

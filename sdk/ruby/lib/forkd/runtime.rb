# frozen_string_literal: true

require "io/nonblock"

require_relative "gc_tuning"
require_relative "hooks"
require_relative "protocol"
require_relative "readying"
require_relative "worker"

module Forkd
  # Forkd.serve: the worker runtime that serves, quiesces, forks and stops.
  #
  # The main thread runs the loop: IO.select over the control channel, the master's pidfd (exec
  # mode) and a self-pipe (signals). Serving is the server's business (forkd-rack's is Puma): the
  # runtime starts it, stops it gracefully whenever it must be quiet, and starts it again.
  #
  # A template forks its workers on the main thread at a quiescent point: the server stopped (not
  # accepting, no request in flight, no client connection open). A serving worker asked for a mold
  # forks at once, from the main thread, while its server's threads go on serving: the mold (a
  # template that never serves) drops what it inherited of that server. See docs/protocol.md
  # section 3 for what the master expects, and the Forkd module for what the application sees.
  module Runtime
    # Ops that need the server stopped before they are handled.
    QUIET_OPS = %w[spawn pause].freeze

    @stop_signal = nil
    @wake_w = nil
    @current = nil

    class << self
      attr_accessor :stop_signal, :wake_w, :current

      # The SIGTERM/SIGINT handler: remember the first signal, wake the loop. A second signal
      # changes nothing, since the master escalates to SIGKILL on its own after its shutdown
      # timeout. (No Mutex here: this runs in trap context.)
      def on_signal(name)
        @stop_signal ||= name
        w = @wake_w
        w.write_nonblock("s", exception: false) if w && !w.closed?
      rescue IOError, SystemCallError
        nil
      end
    end

    # What the loop returns in the SDK's new process (the grandchild of a spawn, or of a mold
    # when mold is true).
    Reborn = Struct.new(:msg, :io, :mold)

    # One worker's loop: the template's, then, in a forked worker, that worker's own.
    class Loop
      def initialize(server, listeners, fork:, forked: false)
        @server = server
        @listeners = listeners
        @fork = fork     # say "fork": true in hello: this worker can be the template
        @forked = forked # made by the SDK's fork (not exec'd)
        @ops = []        # [msg, ios] received, not yet handled
        @serving = false
        @paused = false
        @stopping = false
        @draining = true
        @done = false
        @readied = false
        @serves = true # false in a template the master told not to serve (a mold, mold mode's worker 0)
        @wake_r, @wake_w = IO.pipe
        @wake_w.nonblock = true
        Runtime.wake_w = @wake_w
        st = Worker.state
        raise st.channel_error if st.channel_error

        @channel = st.channel
        @pidfd = nil
        @poll_master = 0 # master PID to poll with Process.ppid (no pidfd), or 0
        @master_cb = nil
      end

      # True while the server is stopped or stopping: paused, forking or stopping.
      def draining?
        @draining
      end

      # Serve until the worker stops (returns nil), or, in the new worker of a spawn, return a
      # Reborn for Forkd.serve to carry on as that worker.
      def run
        Runtime.current = self
        return nil unless boot

        loop do
          reborn = step
          return reborn if reborn
          return nil if @done

          ios = [@wake_r]
          ios << @channel.sock if @channel
          ios << @pidfd if @pidfd
          timeout = @poll_master.positive? ? Worker::MASTER_POLL_INTERVAL : nil
          readable, = IO.select(ios, nil, nil, timeout)
          (readable || []).each do |io|
            if io.equal?(@wake_r)
              drain_wake
            elsif @channel && io.equal?(@channel.sock)
              on_control
            elsif io.equal?(@pidfd)
              master_is_gone
            end
          end
          master_is_gone if @poll_master.positive? && Process.ppid != @poll_master
        end
      end

      # In the SDK's new process: drop the forking process's state, become worker
      # rebirth.msg["worker"] (a spawn) or the mold, worker 0 (a mold).
      def reborn(rebirth)
        mold = rebirth.mold ? true : false
        # Hello first: the master's answer travels while this process sheds the other's state.
        hello_sent = Worker.send_forked_hello(rebirth.io, mold: mold)
        # A signal the forking process got was its own.
        Runtime.stop_signal = nil
        [@wake_r, @wake_w, @pidfd].each { |io| close_quietly(io) }
        @ops.each { |_, ios| Protocol.close_all(ios) }
        @ops.clear
        remove_master_cb
        Runtime.drop_serving_state(@server, @listeners, keep: [rebirth.io]) if mold
        Worker.become_forked_worker(mold ? 0 : rebirth.msg["worker"], rebirth.msg["generation"], rebirth.io,
                                    hello_sent: hello_sent, mold: mold,
                                    notify_socket: mold ? rebirth.msg["notify_socket"] : nil)
        begin
          Hooks.run_child(strict: true)
        rescue Exception => e # rubocop:disable Lint/RescueException
          Worker.die("after_fork_child hook failed: #{e.class}: #{e.message}\n" \
                     "#{(e.backtrace || []).first(20).join("\n")}")
        end
        Loop.new(@server, @listeners, fork: mold, forked: true)
      end

      # After the loop: stop heartbeats, release the loop's descriptors.
      def close
        Worker.reporter.stop
        remove_master_cb
        Runtime.wake_w = nil if Runtime.wake_w.equal?(@wake_w)
        Runtime.current = nil if Runtime.current.equal?(self)
        [@wake_r, @wake_w, @pidfd].each { |io| close_quietly(io) }
      end

      private

      def boot
        st = Worker.state
        if @channel && !st.welcomed
          interrupted = lambda do
            drain_wake
            !Runtime.stop_signal.nil?
          end
          return false unless Worker.handshake(fork: @fork, interrupt_io: @wake_r, interrupted: interrupted)
        elsif @channel
          # The plain API welcomed this worker already (Forkd.ready before Forkd.serve); its
          # reader thread owns the channel, and tells us when the master is gone.
          @channel = nil
        end
        if @channel.nil? && st.index >= 0 && st.channel.nil?
          @pidfd = Worker.open_master_pidfd(st.master_pid)
          @poll_master = st.master_pid if @pidfd.nil? && !Worker.master_gone_event.set?
        end
        if st.channel && @channel.nil?
          @master_cb = -> { wake }
          Worker.master_gone_callbacks << @master_cb
        end
        @serves = st.serve
        if @serves
          boot_hook("after_worker_boot") { Hooks.run_after_boot(strict: true) }
        else
          become_template
        end
        Worker.requests_started = true
        step
        return false if @done

        notify("READY=1")
        # After READY, which it would only delay: its first heartbeat is half WATCHDOG_USEC away.
        Worker.reporter.start
        true
      end

      def boot_hook(name)
        yield
      rescue Exception => e # rubocop:disable Lint/RescueException
        Worker.die("#{name} hook failed: #{e.class}: #{e.message}\n#{(e.backtrace || []).first(20).join("\n")}")
      end

      # Once per process, in the template that loaded the app (exec'd: a mold inherits its heap's
      # layout, and its heap is a serving worker's, warmed up past what the app loads): report the
      # heap's size when the master asked (it carries it to the next template it execs), and say
      # what RUBY_GC_HEAP_INIT_SLOTS would do when the environment sets none.
      def advise_heap_size
        return if @advised || @forked

        @advised = true
        report = Worker.state.report_heap
        stat = GC.stat
        if report && (slots = GCTuning.heap_slots(stat, min: 1))
          notify("X_FORKD_HEAP_SIZE=#{GCTuning::HEAP_SIZE_VARIABLE}=#{slots}")
        end
        advice = GCTuning.heap_advice(stat, carried: report)
        Worker.log(advice) if advice
      end

      # A template that does not serve (a mold, mold mode's worker 0) readies itself for forks at
      # once, before READY=1: nothing it does later changes its heap much, and the master may ask
      # for a spawn as soon as it is ready. before_refork runs here, once (this template exists
      # for the forks of one refork); after_refork never does (it never serves again).
      def become_template
        boot_hook("after_mold") { Hooks.run_after_mold(strict: true) }
        Hooks.run_before_refork
        done = Readying.run
        Worker.log(done) if done
        @readied = true
        advise_heap_size
      end

      # Bring the state up to date: stop, quiesce or serve; handle the ops that can be handled.
      def step
        loop do
          begin_stop if Runtime.stop_signal
          begin_stop if Worker.master_gone_event.set?
          head = @ops.first
          quiesce if @stopping || @paused || (head && QUIET_OPS.include?(head[0]["op"]))
          break if head.nil?

          @ops.shift
          reborn = handle(*head)
          return reborn if reborn
        end
        if @stopping
          @done = true
        elsif !@paused && !@serving && @serves
          @server.start(@listeners)
          @readied = false
          @serving = true
          @draining = false
        end
        nil
      end

      def quiesce
        @draining = true
        return unless @serving

        @server.stop
        @serving = false
      end

      def begin_stop
        return if @stopping

        @stopping = true
        notify("STOPPING=1")
      end

      def notify(text)
        SdNotify.notify(text)
      rescue SystemCallError, IOError => e
        # Nobody to tell once the master is gone: that is why this worker stops.
        return if Worker.master_gone_event.set? && (e.is_a?(Errno::ECONNREFUSED) || e.is_a?(Errno::ENOENT))

        Worker.log("cannot notify #{text.split("=").first}: #{e.message}")
      end

      def drain_wake
        loop do
          break if @wake_r.read_nonblock(4096, exception: false).is_a?(Symbol)
        end
      rescue EOFError, IOError
        nil
      end

      def wake
        @wake_w.write_nonblock("w", exception: false)
      rescue IOError, SystemCallError
        nil
      end

      def remove_master_cb
        Worker.master_gone_callbacks.delete(@master_cb) if @master_cb
        @master_cb = nil
      end

      def close_quietly(io)
        io&.close
      rescue IOError, SystemCallError
        nil
      end

      def master_is_gone
        close_quietly(@pidfd)
        @pidfd = nil
        @poll_master = 0
        Worker.set_master_gone
      end

      # Read what the master sent: every packet that is already there, so that a refork's
      # spawns are handled back to back without serving in between.
      def on_control
        loop do
          begin
            msg, ios = @channel.recv
          rescue SystemCallError, IOError => e
            Worker.log("control channel: #{e.message}")
            msg = nil
            ios = []
          end
          if msg.nil?
            close_quietly(@channel)
            @channel = nil
            Worker.state.channel = nil
            Worker.set_master_gone
            return
          end
          if msg.is_a?(Protocol::Invalid)
            reply({ "op" => "error", "seq" => msg.seq, "error" => msg.reason }) unless msg.seq.nil?
          else
            @ops << [msg, ios]
          end
          break unless IO.select([@channel.sock], nil, nil, 0)
        end
      end

      def reply(msg)
        return if @channel.nil?

        @channel.send_message(msg)
      rescue SystemCallError, IOError, ArgumentError => e
        Worker.log("cannot reply #{msg["op"]} to the master: #{e.message}")
      end

      def handle(msg, ios)
        op = msg["op"]
        seq = msg["seq"]
        return spawn(msg, ios) if op == "spawn"
        return mold(msg, ios) if op == "mold"

        take_stdio(msg, ios.first) if op == "stdio" && ios.length == 1
        Protocol.close_all(ios)
        case op
        when "pause"
          unless @paused
            @paused = true
            Hooks.run_before_refork if @serves
          end
          reply({ "op" => "paused", "seq" => seq })
        when "resume"
          if @paused
            @paused = false
            Hooks.run_after_refork if @serves
          end
          reply({ "op" => "resumed", "seq" => seq })
        else
          if !seq.nil? && !%w[error welcome].include?(op)
            why = Protocol::OPS.include?(op) ? "unexpected op #{op.inspect}" : "unknown op #{op.inspect}"
            reply({ "op" => "error", "seq" => seq, "error" => why })
          end
        end
        nil
      end

      # take_stdio makes a forked worker's stdout and stderr its own (under systemd, a journal stream
      # with the worker's own identifier) instead of worker 0's, which it inherited.
      def take_stdio(msg, io)
        [$stdout, $stderr].each do |stream|
          stream.flush
        rescue IOError, SystemCallError
          nil
        end
        $stdout.reopen(io)
        $stderr.reopen(io)
        if msg["journal_stream"].to_s.empty?
          ENV.delete("JOURNAL_STREAM")
        else
          ENV["JOURNAL_STREAM"] = msg["journal_stream"]
        end
      rescue IOError, SystemCallError => e
        Worker.log("cannot take the output the master sent: #{e.message}")
      end

      def spawn(msg, ios)
        seq = msg["seq"]
        index = msg["worker"]
        gen = msg["generation"]
        failed = lambda do |reason|
          Protocol.close_all(ios)
          reply({ "op" => "spawn_failed", "seq" => seq, "error" => reason })
          nil
        end
        if seq.nil?
          Protocol.close_all(ios)
          return nil
        end
        unless [index, gen].all? { |v| v.is_a?(Integer) && v >= 0 }
          Protocol.close_all(ios)
          reply({ "op" => "error", "seq" => seq, "error" => "spawn needs integer worker and generation" })
          return nil
        end
        return failed.call("spawn carried #{ios.size} descriptors, want 1: the new worker's channel") if ios.size != 1
        return failed.call("the template is stopping") if @stopping
        return failed.call("this worker is not the template") unless Worker.template?

        fork_with_hooks(msg, ios[0], "spawned", "spawn_failed") do
          # Once per batch of forks: the heap does not change between them.
          unless @readied
            done = Readying.run
            Worker.log(done) if done
            @readied = true
            advise_heap_size
          end
        end
      end

      # A mold, forked at once: no quiesce, the server goes on serving in its own threads while
      # the main thread forks (docs/protocol.md, molds). The mold drops what it inherited of the
      # server in reborn.
      def mold(msg, ios)
        seq = msg["seq"]
        if seq.nil?
          Protocol.close_all(ios)
          return nil
        end
        gen = msg["generation"]
        notify_socket = msg["notify_socket"]
        bad = if !gen.is_a?(Integer) || gen.negative?
                "mold needs an integer generation"
              elsif !notify_socket.nil? && !notify_socket.is_a?(String)
                "mold's notify_socket must be a string"
              else
                begin
                  SdNotify.address(notify_socket) unless notify_socket.to_s.empty?
                  nil
                rescue SystemCallError => e
                  e.message
                end
              end
        if bad
          Protocol.close_all(ios)
          reply({ "op" => "error", "seq" => seq, "error" => bad })
          return nil
        end
        if ios.size != 1 || @stopping
          Protocol.close_all(ios)
          why = @stopping ? "this worker is stopping" : "mold carried #{ios.size} descriptors, want 1: the mold's channel"
          reply({ "op" => "mold_failed", "seq" => seq, "error" => why })
          return nil
        end
        fork_with_hooks(msg, ios[0], "molded", "mold_failed", mold: true)
      end

      # The SDK's fork of a spawn or a mold: the before_fork hooks (a failure fails the fork), then
      # whatever the block readies, the double fork, the parent hooks, the reply (done or failed,
      # ops) in this process. Returns the Reborn in the new process, nil here.
      def fork_with_hooks(msg, channel_io, done, failed, mold: false)
        seq = msg["seq"]
        begin
          Hooks.run_prepare(strict: true)
        rescue StandardError, ScriptError => e
          Worker.log("before_fork hook failed: #{e.class}: #{e.message}\n#{(e.backtrace || []).first(20).join("\n")}")
          close_quietly(channel_io)
          reply({ "op" => failed, "seq" => seq, "error" => "before_fork hook failed: #{e.class}: #{e.message}" })
          return nil
        end
        yield if block_given?
        pid, err = double_fork(msg, channel_io, mold: mold)
        return pid if pid.is_a?(Reborn)

        close_quietly(channel_io)
        Hooks.run_parent
        if pid.positive?
          reply({ "op" => done, "seq" => seq, "pid" => pid })
        else
          reply({ "op" => failed, "seq" => seq, "error" => err })
        end
        nil
      end

      # Fork the new process through a short-lived intermediate child. Returns [pid, nil] or
      # [0, reason] in the forking process, and [Reborn, nil] in the new one.
      def double_fork(msg, channel_io, mold: false)
        r, w = IO.pipe
        begin
          pid = Hooks.sdk_fork
        rescue SystemCallError, NotImplementedError => e
          r.close
          w.close
          return [0, "fork: #{e.message}"]
        end
        return [intermediate(r, w, msg, channel_io, mold), nil] if pid.nil?

        w.close
        line = begin
          r.gets
        ensure
          r.close
        end
        wpid = line.to_s.strip.match?(/\A\d+\z/) ? Integer(line.strip, 10) : 0
        begin
          _, status = Process.waitpid2(pid)
        rescue Errno::ECHILD
          # Someone else reaped it (an app's SIGCHLD handler): the pipe has the answer.
          return wpid.positive? ? [wpid, nil] : [0, "the intermediate child exited without a worker PID"]
        end
        return [wpid, nil] if status.success? && wpid.positive?
        return [0, "the intermediate child was killed by signal #{status.termsig}"] if status.signaled?

        [0, "the intermediate child could not fork (status #{status.exitstatus})"]
      end

      # In the intermediate child: fork the worker, tell the template its PID, exit at once (the
      # worker is re-parented to the master, a subreaper). Returns only in the worker.
      def intermediate(r, w, msg, channel_io, mold)
        begin
          r.close
          pid = Hooks.sdk_fork
        rescue Exception # rubocop:disable Lint/RescueException
          exit!(1)
        end
        if pid
          own_process_group(pid)
          begin
            w.write("#{pid}\n")
          rescue Exception # rubocop:disable Lint/RescueException
            exit!(1)
          end
          exit!(0)
        end
        own_process_group(0)
        close_quietly(w)
        Reborn.new(msg, channel_io, mold)
      end

      # Make the new worker (pid, or 0 for this process) lead a process group of its own, as an
      # exec'd worker does: forkd signals a worker's whole group, which must not be the
      # template's. The intermediate child and the worker both call it, so the group exists
      # before either goes on; a failure leaves the worker in the template's group, which forkd
      # then signals alone.
      def own_process_group(pid)
        Process.setpgid(pid, pid)
      rescue SystemCallError
        nil
      end
    end

    module_function

    # A listener on one of these accepts connections to every address of the host.
    ANY_ADDRESSES = %w[0.0.0.0 ::].freeze

    # In a mold (forked from a serving worker, whose server's threads do not exist here): let the
    # server forget what it ran (server.abandon, when it has one: forkd-rack's closes Puma's
    # pipes and poller), then close every connection this process inherited that was accepted on
    # one of the listeners. close(2) only: the serving worker holds the same connections, and
    # shutdown(2) would cut them there too. Every Ruby IO object of such a connection is closed,
    # so that no finalizer closes its descriptor's number later, when it may name another file.
    # keep: IOs to leave open (the mold's channel). Returns how many connections it closed.
    def drop_serving_state(server, listeners, keep: [])
      begin
        server.abandon if server.respond_to?(:abandon)
      rescue StandardError => e
        Worker.log("the server could not forget its state in the mold: #{e.class}: #{e.message}")
      end
      kept = (listeners + keep).map { |io| io.fileno rescue nil }.compact + [0, 1, 2] # rubocop:disable Style/RescueModifier
      endpoints = listeners.map { |l| l.local_address rescue nil }.compact # rubocop:disable Style/RescueModifier
      by_fd = Hash.new { |h, fd| h[fd] = [] }
      ObjectSpace.each_object(IO) do |io|
        next if io.closed?

        fd = io.fileno
        by_fd[fd] << io unless kept.include?(fd)
      rescue IOError
        next
      end
      closed = 0
      by_fd.each_value do |ios|
        sock = ios.find { |io| io.is_a?(BasicSocket) }
        next unless sock && accepted_on?(sock, endpoints)

        # The others share its descriptor: closed without closing it, which the first one does.
        ios.each do |io|
          next if io.equal?(sock)

          io.autoclose = false
          io.close
        end
        sock.close
        closed += 1
      rescue IOError, SystemCallError
        next
      end
      closed
    end

    # Whether sock is a stream connection accepted on a listener at one of endpoints (its local
    # address is the listener's: the same port on the listener's address or any, the same path).
    def accepted_on?(sock, endpoints)
      return false unless sock.getsockopt(:SOCKET, :TYPE).int == Socket::SOCK_STREAM
      return false if sock.getsockopt(:SOCKET, :ACCEPTCONN).int == 1

      mine = sock.local_address
      endpoints.any? do |l|
        if l.ip? && mine.ip?
          l.ip_port == mine.ip_port && (ANY_ADDRESSES.include?(l.ip_address) || l.ip_address == mine.ip_address)
        else
          l.unix? && mine.unix? && !l.unix_path.empty? && l.unix_path == mine.unix_path
        end
      end
    rescue SystemCallError, SocketError, IOError
      false
    end

    def serve(server, listeners: nil)
      unless Thread.current == Thread.main
        raise "Forkd.serve must run on the main thread (it handles signals and forks)"
      end
      %i[start stop].each do |m|
        raise ArgumentError, "a Forkd.serve server responds to start(listeners) and stop; #{server.inspect} lacks #{m}" unless server.respond_to?(m)
      end
      listeners = Worker.listeners if listeners.nil?
      listeners = listeners.to_a
      if listeners.empty?
        raise Error, "no listening sockets: not under forkd or socket activation " \
                     "(pass listeners: to serve on sockets of your own)"
      end
      # Every worker shares these sockets and their O_NONBLOCK flag (docs/protocol.md section
      # 1). Every worker of a forkd cluster runs this same runtime, which wants an accept that
      # never blocks: after a poll says "readable", every worker wakes and all but one find
      # nothing. (Puma's accept_nonblock sets the flag anyway.)
      listeners.each { |l| l.nonblock = true }
      Runtime.stop_signal = nil
      previous = {}
      %w[TERM INT].each do |sig|
        previous[sig] = Signal.trap(sig) { Runtime.on_signal(sig) }
      end
      rt = Loop.new(server, listeners, fork: true)
      begin
        loop do
          rebirth = rt.run
          break if rebirth.nil?

          rt = rt.reborn(rebirth)
        end
      ensure
        rt.close
        previous.each do |sig, handler|
          Signal.trap(sig, handler.nil? ? "DEFAULT" : handler)
        rescue ArgumentError
          nil
        end
      end
      nil
    end

    def draining?
      rt = Runtime.current
      !rt.nil? && rt.draining?
    end
  end
end

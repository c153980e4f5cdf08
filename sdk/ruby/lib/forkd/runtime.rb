# frozen_string_literal: true

require "io/nonblock"

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
  # Forking happens on the main thread at a quiescent point: the server stopped (not accepting,
  # no request in flight, no client connection open). See docs/protocol.md section 3 for what the
  # master expects, and the Forkd module for what the application sees.
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

    # What the loop returns in the SDK's new worker (the grandchild of a spawn).
    Reborn = Struct.new(:msg, :io)

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

      # In the SDK's new worker: drop the template's state, become worker rb.msg["worker"].
      def reborn(rebirth)
        # Hello first: the master's answer travels while this process sheds the template's state.
        hello_sent = Worker.send_forked_hello(rebirth.io)
        # A signal the template got was the template's.
        Runtime.stop_signal = nil
        [@wake_r, @wake_w, @pidfd].each { |io| close_quietly(io) }
        @ops.each { |_, ios| Protocol.close_all(ios) }
        @ops.clear
        remove_master_cb
        Worker.become_forked_worker(rebirth.msg["worker"], rebirth.msg["generation"], rebirth.io, hello_sent: hello_sent)
        begin
          Hooks.run_child(strict: true)
        rescue Exception => e # rubocop:disable Lint/RescueException
          Worker.die("after_fork_child hook failed: #{e.class}: #{e.message}\n" \
                     "#{(e.backtrace || []).first(20).join("\n")}")
        end
        Loop.new(@server, @listeners, fork: false, forked: true)
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
        begin
          Hooks.run_after_boot(strict: true)
        rescue Exception => e # rubocop:disable Lint/RescueException
          Worker.die("after_worker_boot hook failed: #{e.class}: #{e.message}\n" \
                     "#{(e.backtrace || []).first(20).join("\n")}")
        end
        Worker.requests_started = true
        step
        return false if @done

        notify("READY=1")
        # After READY, which it would only delay: its first heartbeat is half WATCHDOG_USEC away.
        Worker.reporter.start
        true
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
        elsif !@paused && !@serving
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

        take_stdio(msg, ios.first) if op == "stdio" && ios.length == 1
        Protocol.close_all(ios)
        case op
        when "pause"
          unless @paused
            @paused = true
            Hooks.run_before_refork
          end
          reply({ "op" => "paused", "seq" => seq })
        when "resume"
          if @paused
            @paused = false
            Hooks.run_after_refork
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

        begin
          Hooks.run_prepare(strict: true)
        rescue StandardError, ScriptError => e
          Worker.log("before_fork hook failed: #{e.class}: #{e.message}\n#{(e.backtrace || []).first(20).join("\n")}")
          return failed.call("before_fork hook failed: #{e.class}: #{e.message}")
        end
        # Once per batch of forks: the heap does not change between them.
        unless @readied
          done = Readying.run
          Worker.log(done) if done
          @readied = true
        end
        channel_io = ios[0]
        pid, err = double_fork(msg, channel_io)
        return pid if pid.is_a?(Reborn)

        close_quietly(channel_io)
        Hooks.run_parent
        if pid.positive?
          reply({ "op" => "spawned", "seq" => seq, "pid" => pid })
        else
          reply({ "op" => "spawn_failed", "seq" => seq, "error" => err })
        end
        nil
      end

      # Fork the worker through a short-lived intermediate child. Returns [pid, nil] or
      # [0, reason] in the template, and [Reborn, nil] in the new worker.
      def double_fork(msg, channel_io)
        r, w = IO.pipe
        begin
          pid = Hooks.sdk_fork
        rescue SystemCallError, NotImplementedError => e
          r.close
          w.close
          return [0, "fork: #{e.message}"]
        end
        return [intermediate(r, w, msg, channel_io), nil] if pid.nil?

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
      def intermediate(r, w, msg, channel_io)
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
        Reborn.new(msg, channel_io)
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

# frozen_string_literal: true

# A fake forkd master for the SDK's tests: real sockets, real processes, bounded waits.
#
# It does what docs/protocol.md says the master does, as far as a worker can tell: a listening
# TCP socket at fd 3 with LISTEN_FDS/LISTEN_FDNAMES and LISTEN_PID set to the worker's own PID
# (through a `sh -c 'LISTEN_PID=$$ ... exec'` wrapper, as forkd's shim does), a unixgram notify
# socket in the abstract namespace with SO_PASSCRED (so every datagram's sender PID is known),
# and a SOCK_SEQPACKET control channel at fd 4. The test process is made a subreaper, so the
# workers that a template double-forks are re-parented to it, as they are to forkd's master.
#
# Every process a test starts or learns of is killed (by PID) and reaped in cleanup.

require "fileutils"
require "json"
require "minitest"
require "net/http"
require "rbconfig"
require "securerandom"
require "socket"
require "tmpdir"

require "forkd"

module ForkdTest
  HERE = __dir__
  SDK_DIR = File.dirname(HERE)
  LIB = File.join(SDK_DIR, "lib")
  APPS = File.join(HERE, "apps")
  FORKD_RACK = File.join(SDK_DIR, "bin", "forkd-rack")
  RUBY = RbConfig.ruby
  TIMEOUT = 10.0

  WRAPPER = 'LISTEN_PID=$$; export LISTEN_PID; ' \
            'if [ -n "$WATCHDOG_USEC" ]; then WATCHDOG_PID=$$; export WATCHDOG_PID; fi; ' \
            'exec "$@"'

  PR_SET_CHILD_SUBREAPER = 36

  module_function

  def now
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  def become_subreaper
    require "fiddle"
    libc = Fiddle.dlopen(nil)
    prctl = Fiddle::Function.new(libc["prctl"], [Fiddle::TYPE_INT, Fiddle::TYPE_LONG, Fiddle::TYPE_LONG,
                                                 Fiddle::TYPE_LONG, Fiddle::TYPE_LONG], Fiddle::TYPE_INT)
    raise "prctl(PR_SET_CHILD_SUBREAPER) failed" unless prctl.call(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0).zero?
  end

  def puma?
    return @puma if defined?(@puma)

    @puma = begin
      require "puma"
      require "rack"
      true
    rescue LoadError
      false
    end
  end

  def ppid_of(pid)
    stat = File.read("/proc/#{pid}/stat")
    # pid (comm) state ppid ...: comm may hold spaces and parentheses.
    Integer(stat[(stat.rindex(")") + 2)..].split[1], 10)
  end

  def alive?(pid)
    stat = File.read("/proc/#{pid}/stat")
    stat[stat.rindex(")") + 2] != "Z"
  rescue SystemCallError
    false
  end

  def wait_until(what = "condition", timeout: TIMEOUT, interval: 0.02)
    deadline = now + timeout
    loop do
      value = yield
      return value if value
      raise Minitest::Assertion, "timed out after #{timeout}s waiting for #{what}" if now > deadline

      sleep interval
    end
  end

  # Reap pid; returns its Process::Status, or fails when it does not exit in time.
  def waitpid_timeout(pid, timeout = TIMEOUT)
    deadline = now + timeout
    loop do
      begin
        got, status = Process.waitpid2(pid, Process::WNOHANG)
      rescue Errno::ECHILD
        raise Minitest::Assertion, "pid #{pid} is not our child"
      end
      return status if got == pid
      raise Minitest::Assertion, "pid #{pid} did not exit in #{timeout}s" if now > deadline

      sleep 0.02
    end
  end

  # The master's notify socket: collects [pid, text, time] of every datagram.
  class Notifications
    attr_reader :address

    def initialize
      @name = "forkd-test/#{Process.pid}/#{SecureRandom.hex(6)}"
      @address = "@#{@name}"
      @sock = Socket.new(:UNIX, :DGRAM)
      @sock.setsockopt(:SOCKET, :PASSCRED, 1)
      @sock.bind(Socket.sockaddr_un("\0#{@name}"))
      @items = []
      @mutex = Mutex.new
      @cond = ConditionVariable.new
      @thread = Thread.new { read_loop }
    end

    def read_loop
      loop do
        begin
          data, _, _, *controls = @sock.recvmsg(65_536, 0, 1024, scm_rights: true)
        rescue IOError, SystemCallError
          return
        end
        pid = nil
        controls.each do |c|
          if c.cmsg_is?(:SOCKET, :CREDENTIALS)
            pid = c.data.unpack1("i")
          elsif c.cmsg_is?(:SOCKET, :RIGHTS)
            c.unix_rights&.each(&:close) # as forkd does (this answers BARRIER=1)
          end
        end
        @mutex.synchronize do
          @items << [pid, data.dup.force_encoding("UTF-8"), ForkdTest.now]
          @cond.broadcast
        end
      end
    end

    # The first datagram from pid (nil: anyone) with a line equal to line (or starting with it,
    # when it ends with "="). Returns [pid, text, time].
    def wait_for(pid, line, timeout: TIMEOUT)
      match = lambda do |item|
        next false if pid && item[0] != pid

        item[1].split("\n").any? { |ln| ln == line || (line.end_with?("=") && ln.start_with?(line)) }
      end
      deadline = ForkdTest.now + timeout
      @mutex.synchronize do
        loop do
          found = @items.find(&match)
          return found if found

          left = deadline - ForkdTest.now
          raise Minitest::Assertion, "no #{line.inspect} from pid #{pid} in #{timeout}s; got #{@items.inspect}" if left <= 0

          @cond.wait(@mutex, left)
        end
      end
    end

    def lines(pid = nil)
      @mutex.synchronize do
        @items.select { |p, _, _| pid.nil? || p == pid }.flat_map { |_, text, _| text.split("\n") }
      end
    end

    def items(pid = nil)
      @mutex.synchronize { @items.select { |p, _, _| pid.nil? || p == pid } }
    end

    def close
      @sock.close
      @thread.join(2)
    end
  end

  # A worker as the fake master sees it.
  class Worker
    attr_reader :pid, :channel, :log

    def initialize(pid, channel, log)
      @pid = pid
      @channel = channel
      @log = log
    end

    # The next message from the worker: [msg, ios]; [nil, []] at end of file.
    def recv(timeout: TIMEOUT)
      raise Minitest::Assertion, "no message from worker #{@pid} in #{timeout}s" unless IO.select([@channel.sock], nil, nil, timeout)

      @channel.recv
    end

    def expect(op, timeout: TIMEOUT)
      msg, ios = recv(timeout: timeout)
      ios.each(&:close)
      if msg.nil? || msg.is_a?(Forkd::Protocol::Invalid) || msg["op"] != op
        raise Minitest::Assertion, "want #{op} from worker #{@pid}, got #{msg.inspect}\nlog:\n#{read_log}"
      end

      msg
    end

    def send_message(msg, ios = [])
      @channel.send_message(msg, ios)
    end

    def read_log
      @log ? File.read(@log) : ""
    rescue SystemCallError
      ""
    end
  end

  class FakeMaster
    attr_reader :dir, :port, :notify, :hook_log, :pids

    def initialize(watchdog_usec: nil)
      @dir = Dir.mktmpdir("forkd-ruby-test-")
      @listener = TCPServer.new("127.0.0.1", 0)
      @listener.listen(128)
      @port = @listener.addr[1]
      @notify = Notifications.new
      @watchdog_usec = watchdog_usec
      @pids = []
      @channels = []
      @seq = 0
      @hook_log = File.join(@dir, "hooks.log")
      @request_log = File.join(@dir, "requests.log")
    end

    def env(index: 0, generation: 1, control: true, protocol_version: "1", extra: {})
      env = {
        "PATH" => ENV.fetch("PATH", "/usr/bin:/bin"),
        "HOME" => ENV.fetch("HOME", "/tmp"),
        "RUBYLIB" => [LIB, APPS].join(":"),
        "LISTEN_FDS" => "1",
        "LISTEN_FDNAMES" => "http",
        "NOTIFY_SOCKET" => @notify.address,
        "FORKD_PROTOCOL" => protocol_version,
        "FORKD_WORKER" => index.to_s,
        "FORKD_GENERATION" => generation.to_s,
        "HOOK_LOG" => @hook_log,
        "REQUEST_LOG" => @request_log,
      }
      env["FORKD_CONTROL_FD"] = "4" if control
      env["WATCHDOG_USEC"] = @watchdog_usec.to_s if @watchdog_usec
      env.merge(extra)
    end

    # Start a worker running `ruby ARGS...` with fds 3 (listener) and 4 (channel).
    def start(args, index: 0, generation: 1, control: true, protocol_version: "1", env: {})
      env = self.env(index: index, generation: generation, control: control,
                     protocol_version: protocol_version, extra: env)
      log = File.join(@dir, "worker-#{index}-#{@pids.size}.log")
      redirects = { 3 => @listener, in: File::NULL, out: [log, "a"], err: [:child, :out],
                    unsetenv_others: true, close_others: true }
      ours = nil
      if control
        ours, theirs = UNIXSocket.pair(:SEQPACKET)
        redirects[4] = theirs
      end
      argv = ["/bin/sh", "-c", WRAPPER, "sh", RUBY, *args]
      pid = Process.spawn(env, *argv, **redirects)
      theirs&.close
      @pids << pid
      channel = ours && Forkd::Protocol::Channel.new(ours)
      @channels << channel if channel
      Worker.new(pid, channel, log)
    end

    # forkd-rack serving test/apps/hookapp.ru.
    # forkd-rack with hookapp.ru; a silent keep-alive connection holds a stop for half a second
    # (its drain timeout), not two.
    def start_rack(extra_args = [], **kw)
      start([FORKD_RACK, "--threads", "4", "--drain-timeout", "0.5", *extra_args, File.join(APPS, "hookapp.ru")], **kw)
    end

    # Remember a process the test did not start (a forked worker) for cleanup.
    def adopt(pid, channel = nil)
      @pids << pid
      Worker.new(pid, channel, nil)
    end

    def welcome(worker, index: 0, generation: 1, extra: {})
      hello = worker.expect("hello")
      worker.send_message({ "op" => "welcome", "worker" => index, "generation" => generation, **extra })
      hello
    end

    # Start forkd-rack, welcome it (with the welcome's extra fields) and wait for its READY=1.
    def boot_rack(index: 0, generation: 1, args: [], welcome: {}, **kw)
      w = start_rack(args, index: index, generation: generation, **kw)
      hello = welcome(w, index: index, generation: generation, extra: welcome)
      raise Minitest::Assertion, "hello from #{hello["pid"]}, want #{w.pid}" unless hello["pid"] == w.pid

      @notify.wait_for(w.pid, "READY=1")
      w
    end

    def next_seq
      @seq += 1
    end

    # Send spawn to the template; returns [seq, the master's end of the new worker's channel].
    def spawn(template, index:, generation: 1)
      ours, theirs = UNIXSocket.pair(:SEQPACKET)
      seq = next_seq
      template.send_message({ "op" => "spawn", "seq" => seq, "worker" => index, "generation" => generation }, [theirs])
      theirs.close
      ch = Forkd::Protocol::Channel.new(ours)
      @channels << ch
      [seq, ch]
    end

    # Spawn a worker from the template, welcome it and wait for its READY=1; returns [pid, the
    # master's end of its channel].
    def spawn_ready(template, index:, generation: 1)
      _, ch = spawn(template, index: index, generation: generation)
      pid = template.expect("spawned")["pid"]
      w = adopt(pid, ch)
      w.expect("hello")
      w.send_message({ "op" => "welcome", "worker" => index, "generation" => generation })
      @notify.wait_for(pid, "READY=1")
      [pid, ch]
    end

    def request(template, op, want, timeout: TIMEOUT)
      seq = next_seq
      template.send_message({ "op" => op, "seq" => seq })
      msg = template.expect(want, timeout: timeout)
      raise Minitest::Assertion, "#{want} for seq #{msg["seq"]}, want #{seq}" unless msg["seq"] == seq

      msg
    end

    # Waits until the app has begun count requests for path (apps/hookapp.ru's REQUEST_LOG): they
    # are in flight. Returns the PIDs serving them.
    def wait_began(path, count: 1)
      ForkdTest.wait_until("#{count} request(s) for #{path} in flight") do
        began = File.readlines(@request_log).map(&:split).select { |_, p| p == path }
        pids = began.map { |pid, _| Integer(pid, 10) }
        pids if pids.size >= count
      rescue Errno::ENOENT
        nil
      end
    end

    # The hook log: [[pid, event, data], ...].
    def hooks
      File.readlines(@hook_log).map do |line|
        pid, event, data = line.chomp.split(" ", 3)
        [Integer(pid, 10), event, JSON.parse(data)]
      end
    rescue Errno::ENOENT
      []
    end

    def events(pid)
      hooks.select { |p, _, _| p == pid }.map { |_, e, _| e }
    end

    def cleanup
      @pids.each do |pid|
        Process.kill(:KILL, pid)
      rescue Errno::ESRCH
        nil
      end
      @pids.each do |pid|
        ForkdTest.waitpid_timeout(pid, 5)
      rescue Minitest::Assertion
        nil
      end
      @channels.each(&:close)
      @listener.close
      @notify.close
      if ENV["FORKD_TEST_KEEP"]
        warn "\nkept #{@dir}"
      else
        FileUtils.rm_rf(@dir)
      end
    end
  end

  # An HTTP/1.1 keep-alive client, run in a thread when asked.
  class Client
    attr_reader :http, :started_at

    def initialize(port, timeout: 10)
      @http = Net::HTTP.new("127.0.0.1", port)
      @http.open_timeout = timeout
      @http.read_timeout = timeout
      @http.max_retries = 0
      @http.start
      @thread = nil
    end

    def get(path)
      res = @http.get(path)
      [res.code.to_i, res.body, res]
    end

    def get_in_thread(path)
      @started_at = ForkdTest.now
      @thread = Thread.new do
        get(path)
      rescue StandardError => e
        [nil, e.inspect, nil]
      end
      self
    end

    def join(timeout = 10)
      raise Minitest::Assertion, "request did not finish" unless @thread.join(timeout)

      @thread.value
    end

    # The raw socket under Net::HTTP's buffered one.
    def socket
      @http.instance_variable_get(:@socket).io
    end

    def close
      @http.finish if @http.started?
    rescue IOError
      nil
    end
  end

  def get(port, path = "/")
    c = Client.new(port)
    begin
      code, body, = c.get(path)
      [code, body]
    ensure
      c.close
    end
  end

  # Run a Ruby script with the SDK on the load path; returns [status, parsed JSON of its last
  # stdout line, its output].
  def run_script(script, env: {}, timeout: TIMEOUT)
    out_r, out_w = IO.pipe
    full_env = { "RUBYLIB" => [LIB, APPS].join(":") }.merge(env)
    pid = Process.spawn(full_env, RUBY, "-e", script, in: File::NULL, out: out_w, err: out_w)
    out_w.close
    reader = Thread.new { out_r.read }
    status = waitpid_timeout(pid, timeout)
    output = reader.value
    out_r.close
    last = output.lines.reverse.find { |l| l.start_with?("{") }
    [status, last && JSON.parse(last), output]
  end

  # Base class: a subreaper test process, and a fake master per test when asked for.
  class MasterTest < Minitest::Test
    def self.subreaper
      @subreaper ||= ForkdTest.become_subreaper || true
    end

    def setup
      MasterTest.subreaper
      @masters = []
    end

    def teardown
      @masters.each(&:cleanup)
    end

    def master(**kw)
      m = FakeMaster.new(**kw)
      @masters << m
      m
    end

    def require_puma
      skip "puma and rack are not installed (apt-get install puma ruby-rack)" unless ForkdTest.puma?
    end
  end
end

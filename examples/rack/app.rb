# frozen_string_literal: true

# The Rack demo app for forkd's fork-worker mode, with the two things that break across a fork
# and how forkd's hooks fix them (docs/fork-safety.md):
#
# - a database-like connection (Demo::DB: a client holding a UNIX socketpair, which records the
#   PID that opened it and refuses to be used from another process), opened lazily;
# - a background thread (Demo::Ticker, standing in for a metrics flusher or a cache refresher).
#
#     GET /            hello from worker I (pid P, generation G)
#     GET /slow?ms=N   the same, after N milliseconds (try it during a refork)
#     GET /info        JSON: this worker, its connection (who opened it) and its ticker
#
# At load it allocates DEMO_ALLOC_MB megabytes (default 50) and fills them, standing in for a big
# app's loaded code and data. Worker 0 loads it once; forkd forks every other worker from worker
# 0, so they share those pages copy-on-write: compare Rss with Pss in /proc/PID/smaps_rollup.
# Set DEMO_HOOK_LOG to a file to have every process append the hooks it runs ("PID EVENT JSON").
#
# Run it under forkd with `forkd --config examples/rack/forkd.hcl`, or alone for development:
#
#     ruby -I ../../sdk/ruby/lib ../../sdk/ruby/bin/forkd-rack config.ru   # http://127.0.0.1:9292/

require "json"
require "socket"

require "forkd"

module Demo
  # Filled, so the pages are really there (a zeroed allocation may be left unmapped).
  BALLAST = ("\x01".b * (Integer(ENV.fetch("DEMO_ALLOC_MB", "50"), 10) * 1024 * 1024)).freeze
  HOOK_LOG = ENV.fetch("DEMO_HOOK_LOG", nil)

  # Append one line to DEMO_HOOK_LOG, in one write(2) on an O_APPEND file, so that lines from
  # several processes never mix.
  def self.record(event, **data)
    return if HOOK_LOG.nil?

    File.open(HOOK_LOG, "a") { |f| f.syswrite("#{Process.pid} #{event} #{JSON.generate(data)}\n") }
  end

  # A database client's connection: here one end of a socketpair talking to a pretend server at
  # the other end. Like a real one, it must not be shared by two processes: queries from both
  # would interleave on one socket. So it remembers which process opened it.
  class Connection
    attr_reader :pid, :inode, :queries

    def initialize
      @client, @server = UNIXSocket.pair
      @pid = Process.pid
      @inode = File.stat("/proc/self/fd/#{@client.fileno}").ino
      @queries = 0
    end

    def query(sql)
      if @pid != Process.pid
        raise "connection opened by pid #{@pid} used by pid #{Process.pid}: inherited across a fork"
      end

      @client.write("#{sql}\n")
      @server.write("ok #{@server.gets}") # the pretend server answers
      @queries += 1
      @client.gets.chomp
    end

    # A clean disconnect, in the process that opened it (a real client says goodbye to the
    # server here, which is why a child must never call it on an inherited connection).
    def close
      @client.close
      @server.close
    end

    # Drop an inherited connection without a word to the server: only this process's copy of
    # the descriptors goes.
    def discard
      @client.close unless @client.closed?
      @server.close unless @server.closed?
    end
  end

  # The connection "pool": one connection per process, opened on first use.
  module DB
    @mutex = Mutex.new
    @conn = nil

    class << self
      def conn
        @mutex.synchronize { @conn ||= Connection.new }
      end

      def query(sql)
        c = conn
        @mutex.synchronize { c.query(sql) }
      end

      def connected?
        !@conn.nil?
      end

      def disconnect
        @mutex.synchronize do
          @conn&.close
          @conn = nil
        end
      end

      # In a forked child: forget what the parent had (a fork by any library lands here too).
      def discard_inherited
        @mutex = Mutex.new
        @conn&.discard
        @conn = nil
      end
    end
  end

  # A background thread: ticks every 50 ms. Threads do not survive a fork (the child has only the
  # thread that forked), so every worker starts its own.
  module Ticker
    @thread = nil
    @pid = nil
    @ticks = 0

    class << self
      attr_reader :ticks, :pid

      def start
        return if alive?

        @pid = Process.pid
        @ticks = 0
        @thread = Thread.new do
          loop do
            sleep 0.05
            @ticks += 1
          end
        end
        @thread.name = "demo-ticker"
      end

      def stop
        t = @thread
        @thread = nil
        return if t.nil?

        t.kill
        t.join
      end

      def alive?
        !@thread.nil? && @thread.alive? && @pid == Process.pid
      end

      # In a forked child the thread object is the parent's, and dead.
      def forget
        @thread = nil
        @pid = nil
      end
    end
  end

  # --- the hooks --------------------------------------------------------------------------------

  # Before any fork, in the forking process (the template): no thread of ours runs, and no
  # connection is open that a child could inherit.
  Forkd.before_fork do
    record("before_fork", db: DB.connected?, ticker: Ticker.alive?)
    Ticker.stop
    DB.disconnect
  end

  # After the fork, in the parent (the template goes on serving): restart what before_fork
  # stopped. The connection reopens on its next use.
  Forkd.after_fork_parent do
    Ticker.start
    record("after_fork_parent")
  end

  # After the fork, in the child: forget the parent's thread and connection (had a library forked
  # while they were in use, they would be here).
  Forkd.after_fork_child do
    DB.discard_inherited
    Ticker.forget
    record("after_fork_child", listen_pid: ENV.fetch("LISTEN_PID", nil))
  end

  # In each worker once it is one (worker 0 at boot, each forked worker after its fork), before it
  # serves: connect, start the ticker.
  Forkd.after_worker_boot do
    DB.conn
    Ticker.start
    record("after_worker_boot", worker: Forkd.worker_index, generation: Forkd.generation,
                                template: Forkd.template?)
  end

  # In the template around a refork: a full GC first, so the new workers share a heap that has
  # nothing left to collect (what Puma's and pitchfork's docs advise).
  Forkd.before_refork do
    record("before_refork")
    GC.start
  end

  Forkd.after_refork do
    record("after_refork")
  end

  # --- the app ----------------------------------------------------------------------------------

  class App
    def call(env)
      case env["PATH_INFO"]
      when "/"
        text(200, hello)
      when "/slow"
        ms = Integer(env["QUERY_STRING"].to_s[/(?:\A|&)ms=(\d+)/, 1] || "1000", 10)
        return text(400, "ms must be 0..600000\n") unless ms.between?(0, 600_000)

        sleep(ms / 1000.0)
        text(200, hello)
      when "/info"
        info = {
          worker: Forkd.worker_index, pid: Process.pid, generation: Forkd.generation,
          template: Forkd.template?, requests: Forkd.requests,
          db: { answer: DB.query("select 1"), pid: DB.conn.pid, inode: DB.conn.inode, queries: DB.conn.queries },
          ticker: { alive: Ticker.alive?, pid: Ticker.pid, ticks: Ticker.ticks },
        }
        [200, { "Content-Type" => "application/json" }, [JSON.generate(info) + "\n"]]
      else
        text(404, "not found: #{env["PATH_INFO"]}\n")
      end
    end

    private

    def hello
      "hello from worker #{Forkd.worker_index} (pid #{Process.pid}, generation #{Forkd.generation})\n"
    end

    def text(status, body)
      [status, { "Content-Type" => "text/plain; charset=utf-8", "Content-Length" => body.bytesize.to_s }, [body]]
    end
  end
end

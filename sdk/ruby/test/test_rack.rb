# frozen_string_literal: true

require_relative "helpers"

# forkd-rack's command line, and Forkd.serve with a server of one's own.
class RackTest < ForkdTest::MasterTest
  include ForkdTest

  def teardown
    (@cleanups || []).each(&:call)
    super
  end

  def free_port
    s = TCPServer.new("127.0.0.1", 0)
    port = s.addr[1]
    s.close
    port
  end

  def test_binds_without_listen_fds
    require_puma
    port = free_port
    status = nil
    out_r, out_w = IO.pipe
    pid = Process.spawn({ "RUBYLIB" => LIB, "LISTEN_FDS" => nil, "NOTIFY_SOCKET" => nil, "FORKD_WORKER" => nil },
                        RUBY, FORKD_RACK, "--bind", "127.0.0.1:#{port}", File.join(APPS, "hookapp.ru"),
                        in: File::NULL, out: out_w, err: out_w)
    out_w.close
    begin
      body = wait_until("forkd-rack on port #{port}") do
        get(port, "/echo")
      rescue SystemCallError
        nil
      end
      assert_equal 200, body[0]
      code, text = get(port, "/")
      assert_equal 200, code
      assert_includes text, "worker=-1 generation=0"
      c = Client.new(port)
      res = c.http.post("/echo", "x" * 100_000)
      assert_equal "x" * 100_000, res.body
      assert_equal 500, c.get("/error")[0]
      c.close
    ensure
      Process.kill(:TERM, pid)
      status = waitpid_timeout(pid)
    end
    assert_equal 0, status.exitstatus
    assert_includes out_r.read, "not under forkd: serving"
  end

  def test_command_line
    %w[--version -V].each do |flag|
      status, _, log = run_cli(flag)
      assert status.success?, log
      assert_match(/\Aforkd-rack \d+\.\d+\.\d+ \(protocol 1\)/, log)
    end
    status, _, log = run_cli("--help")
    assert status.success?, log
    assert_includes log, "--threads MIN:MAX"
    [%w[--threads zero], %w[-t 5:3], %w[-t 0:0], %w[--drain-timeout -1], %w[a.ru b.ru]].each do |args|
      status, _, log = run_cli(*args)
      assert_equal 2, status.exitstatus, "#{args}: #{log}"
      assert_match(/\Aforkd-rack: /, log)
    end
  end

  # Puma's flags and a puma.rb, as a Puma user writes them, serving without forkd: threads,
  # environment, binds (Puma's URLs), the worker hooks with the worker's index (-1: not under
  # forkd), request logging; the command line wins over the file.
  def test_pumas_command_line_and_puma_rb
    require_puma
    port = free_port
    dir = Dir.mktmpdir("forkd-rack-puma-")
    log = File.join(dir, "hooks.log")
    File.write(File.join(dir, "app.ru"), <<~RUBY)
      run(lambda do |env|
        puma = Puma::Server.current
        [200, {}, ["\#{ENV["RACK_ENV"]} \#{puma.min_threads}:\#{puma.max_threads}"]]
      end)
    RUBY
    File.write(File.join(dir, "puma.rb"), <<~RUBY)
      threads 1, 1
      environment "staging"
      port 1 # the command line's -b wins
      rackup "app.ru"
      on_worker_boot { |i| File.write(#{log.inspect}, "boot \#{i}\n", mode: "a") }
      on_worker_shutdown { |i| File.write(#{log.inspect}, "shutdown \#{i}\n", mode: "a") }
      pidfile "tmp/pids/server.pid"
    RUBY
    out_r, out_w = IO.pipe
    pid = Process.spawn({ "RUBYLIB" => LIB, "LISTEN_FDS" => nil, "NOTIFY_SOCKET" => nil, "FORKD_WORKER" => nil, "RACK_ENV" => nil },
                        RUBY, FORKD_RACK, "-t", "2:3", "-e", "production", "-b", "tcp://127.0.0.1:#{port}", "-C", "puma.rb",
                        "-v", chdir: dir, in: File::NULL, out: out_w, err: out_w)
    out_w.close
    output = Thread.new { out_r.read }
    begin
      code, body = wait_until("forkd-rack on port #{port}") do
        get(port, "/")
      rescue SystemCallError
        nil
      end
      assert_equal [200, "production 2:3"], [code, body]
    ensure
      Process.kill(:TERM, pid)
      status = waitpid_timeout(pid)
    end
    assert_equal 0, status.exitstatus
    assert_equal "boot -1\nshutdown -1\n", File.read(log)
    text = output.value
    assert_includes text, "pidfile \"tmp/pids/server.pid\" ignored"
    assert_match(%r{"GET / HTTP/1.1" 200}, text, "-v logs the requests")
  ensure
    FileUtils.rm_rf(dir) if dir
  end

  # Puma's master settings, on the command line or in the file, stop forkd-rack before it loads
  # the app, each with the forkd setting to use; the file is found where Puma finds it.
  def test_pumas_master_settings_are_refused
    dir = Dir.mktmpdir("forkd-rack-puma-")
    FileUtils.mkdir_p(File.join(dir, "config"))
    File.write(File.join(dir, "config", "puma.rb"), "workers 2\nfork_worker\n")
    status, _, log = run_cli("-w", "3", "--pidfile", "x.pid", "missing.ru", chdir: dir)
    assert_equal 2, status.exitstatus, log
    assert_includes log, "forkd-rack: command line: -w 3: forkd runs the workers"
    assert_match(%r{config/puma\.rb:1: workers 2: forkd runs the workers}, log)
    assert_match(%r{config/puma\.rb:2: fork_worker: forkd's `fork_worker}, log)
    assert_includes log, "--pidfile x.pid ignored"
    refute_includes log, "cannot load", "refused before the app loads"
    status, _, log = run_cli("--no-config", "-b", "ssl://127.0.0.1:1", "missing.ru", chdir: dir)
    assert_equal 2, status.exitstatus, log
    assert_includes log, "forkd-rack: command line: bind ssl://127.0.0.1:1: TLS"
    status, _, log = run_cli("--no-config", "missing.ru", chdir: dir)
    assert_equal 1, status.exitstatus, log
    assert_includes log, "cannot load missing.ru"
  ensure
    FileUtils.rm_rf(dir) if dir
  end

  # Forkd::GCTuning: the template of fork-worker mode runs with Ruby's free-slot ratios lowered.
  # forkd-rack execs itself once more for it (Ruby reads them only when it starts): same pid, its
  # listener and control channel kept, and its forks inherit them. A variable the environment sets
  # means the user chose; an exec-mode worker (no control channel) is left as Ruby starts it.
  def test_the_template_runs_with_rubys_gc_tuned_for_copy_on_write
    environ = ->(pid) { File.binread("/proc/#{pid}/environ").split("\0").grep(/\ARUBY_GC_/).sort }
    tuned = %w[RUBY_GC_HEAP_FREE_SLOTS_GOAL_RATIO=0.06 RUBY_GC_HEAP_FREE_SLOTS_MIN_RATIO=0.03]

    m = master
    t = m.boot_rack
    assert_equal tuned, environ.call(t.pid)
    assert_includes t.read_log, "Ruby's GC: RUBY_GC_HEAP_FREE_SLOTS_MIN_RATIO=0.03 RUBY_GC_HEAP_FREE_SLOTS_GOAL_RATIO=0.06 " \
                                "(forkd-rack's defaults for fork-worker mode)"
    pid, = m.spawn_ready(t, index: 1)
    assert_equal tuned, environ.call(pid)
    Process.kill(:TERM, t.pid)
    assert_equal 0, waitpid_timeout(t.pid).exitstatus, t.read_log
    Process.kill(:TERM, pid)

    chosen = master.boot_rack(env: { "RUBY_GC_HEAP_FREE_SLOTS_GOAL_RATIO" => "0.5" })
    assert_equal %w[RUBY_GC_HEAP_FREE_SLOTS_GOAL_RATIO=0.5], environ.call(chosen.pid)
    assert_includes chosen.read_log, "Ruby's GC: RUBY_GC_HEAP_FREE_SLOTS_GOAL_RATIO=0.5 (from the environment)"

    m = master
    exec_mode = m.start_rack(control: false)
    m.notify.wait_for(exec_mode.pid, "READY=1")
    assert_empty environ.call(exec_mode.pid)
    refute_includes exec_mode.read_log, "Ruby's GC"
  end

  # Forkd::GCTuning.preload: with jemalloc installed, the template of fork-worker mode runs on it
  # (preloaded in the same exec as the GC's tuning), and so do its forks; LD_PRELOAD is taken out
  # of the environment the app's children inherit. --malloc=system, an LD_PRELOAD the user set,
  # and an exec-mode worker are left on the system's malloc.
  def test_the_template_runs_on_jemalloc_where_installed
    lib = Forkd::GCTuning::JEMALLOC_PATHS.find { |path| File.file?(path) }
    skip "no jemalloc installed (apt-get install libjemalloc2)" unless lib
    jemalloc = ->(pid) { File.read("/proc/#{pid}/maps").include?("libjemalloc") }

    dir = Dir.mktmpdir
    m = master
    t = m.boot_rack(env: { "HOOKAPP_ENV_FILE" => File.join(dir, "env") })
    assert jemalloc.call(t.pid), "the template maps jemalloc"
    assert_includes t.read_log, "malloc: jemalloc (#{lib})"
    pid, = m.spawn_ready(t, index: 1)
    assert jemalloc.call(pid), "a forked worker runs on the template's jemalloc"
    app_env = File.read(File.join(dir, "env")).split("\n")
    assert_includes app_env, "RUBY_GC_HEAP_FREE_SLOTS_MIN_RATIO=0.03", "the app's ENV was written"
    refute(app_env.any? { |kv| kv.start_with?("LD_PRELOAD=", "#{Forkd::GCTuning::PRELOADED}=") }, "the app's ENV: #{app_env}")
    Process.kill(:TERM, t.pid)
    assert_equal 0, waitpid_timeout(t.pid).exitstatus, t.read_log
    Process.kill(:TERM, pid)

    system_malloc = master.boot_rack(args: ["--malloc=system"])
    refute jemalloc.call(system_malloc.pid), "--malloc=system"
    assert_includes system_malloc.read_log, "malloc: the system's (glibc)"
    assert_includes File.binread("/proc/#{system_malloc.pid}/environ").split("\0"), "RUBY_GC_HEAP_FREE_SLOTS_MIN_RATIO=0.03",
                    "the GC is tuned all the same"

    users = master.boot_rack(env: { "LD_PRELOAD" => "libm.so.6" })
    refute jemalloc.call(users.pid), "the user's LD_PRELOAD wins"

    # A library the loader refuses (not an ELF file here) is tried once: the template starts on
    # the system's malloc, with no exec after the one that tried.
    bogus = File.join(dir, "libjemalloc.so.2")
    File.write(bogus, "not a library\n")
    refused = master.boot_rack(env: { "LD_PRELOAD" => bogus, Forkd::GCTuning::PRELOADED => bogus,
                                      **Forkd::GCTuning::DEFAULTS }) # as that exec sets them
    refute jemalloc.call(refused.pid), "the refused preload"
    assert_includes refused.read_log, "malloc: the system's (glibc)"

    m = master
    exec_mode = m.start_rack(control: false)
    m.notify.wait_for(exec_mode.pid, "READY=1")
    refute jemalloc.call(exec_mode.pid), "an exec-mode worker"
  ensure
    FileUtils.rm_rf(dir) if dir
  end

  # A template whose app built a big heap says, once, what RUBY_GC_HEAP_INIT_SLOTS would lay its
  # pages out before the app loads; one that runs with it set says nothing.
  def test_the_template_advises_rubys_initial_heap_size
    skip "Ruby #{RUBY_VERSION} sizes its heaps per size pool" if (RUBY_VERSION.split(".").map(&:to_i) <=> [3, 3]) >= 0

    advice = /RUBY_GC_HEAP_INIT_SLOTS=(\d+) in the app's environment/
    m = master
    t = m.boot_rack(env: { "HOOKAPP_OBJECTS" => "600000" })
    m.spawn_ready(t, index: 1)
    m.spawn_ready(t, index: 2)
    log = t.read_log
    assert_equal 1, log.scan(advice).size, log
    live = Integer(log[/the app's heap holds (\d+) objects/, 1], 10)
    assert_operator live, :>=, 600_000
    suggested = Integer(log[advice, 1], 10)
    assert_operator suggested, :<, live
    assert_operator suggested, :>, live / 2

    m = master
    sized = m.boot_rack(env: { "HOOKAPP_OBJECTS" => "600000", "RUBY_GC_HEAP_INIT_SLOTS" => "800000" })
    m.spawn_ready(sized, index: 1)
    refute_match(/RUBY_GC_HEAP_INIT_SLOTS/, sized.read_log)
  end

  # Asked in its welcome ("report_heap": true), the template reports the heap its app loaded
  # (X_FORKD_HEAP_SIZE) once, at its first readying, whatever its environment sets (so that the
  # size follows the app across releases), and its advice says the next template starts with it.
  # Not asked, it reports nothing.
  def test_the_template_reports_its_heap_size_when_asked
    skip "Ruby #{RUBY_VERSION} sizes its heaps per size pool" if (RUBY_VERSION.split(".").map(&:to_i) <=> [3, 3]) >= 0

    report = "X_FORKD_HEAP_SIZE="
    m = master
    t = m.boot_rack(env: { "HOOKAPP_OBJECTS" => "600000" }, welcome: { "report_heap" => true })
    m.spawn_ready(t, index: 1)
    m.spawn_ready(t, index: 2)
    m.notify.wait_for(t.pid, report)
    reports = m.notify.lines(t.pid).select { |l| l.start_with?(report) }
    assert_equal 1, reports.size, reports.inspect
    slots = Integer(reports[0][/\AX_FORKD_HEAP_SIZE=RUBY_GC_HEAP_INIT_SLOTS=(\d+)\z/, 1], 10)
    log = t.read_log
    live = Integer(log[/the app's heap holds (\d+) objects/, 1], 10)
    assert_operator live, :>=, 600_000
    assert_equal Forkd::GCTuning.suggested_slots(live), slots
    assert_includes log, "forkd starts the next template (a reload, a hot restart) with RUBY_GC_HEAP_INIT_SLOTS=#{slots}"

    # Started with a size (one the master carried, or the operator's): it reports again, and
    # advises nothing.
    m = master
    sized = m.boot_rack(env: { "HOOKAPP_OBJECTS" => "600000", "RUBY_GC_HEAP_INIT_SLOTS" => slots.to_s },
                        welcome: { "report_heap" => true })
    m.spawn_ready(sized, index: 1)
    m.notify.wait_for(sized.pid, report)
    refute_match(/the app's heap holds/, sized.read_log)

    # Mold mode's worker 0 (welcomed with "serve": false) readies itself before READY=1, and
    # reports then.
    m = master
    cold = m.boot_rack(env: { "HOOKAPP_OBJECTS" => "600000" }, welcome: { "serve" => false, "report_heap" => true })
    m.notify.wait_for(cold.pid, report)
    assert_includes cold.read_log, "forkd starts the next template (a reload, a hot restart) with RUBY_GC_HEAP_INIT_SLOTS="

    # A small app (a release that shrank, started with the bigger one's size) reports too, so
    # that its size replaces the bigger one's; it logs no advice.
    m = master
    small = m.boot_rack(env: { "RUBY_GC_HEAP_INIT_SLOTS" => slots.to_s }, welcome: { "report_heap" => true })
    m.spawn_ready(small, index: 1)
    m.notify.wait_for(small.pid, report)
    small_slots = Integer(m.notify.lines(small.pid).grep(/\AX_FORKD_HEAP_SIZE=/)[0][/=(\d+)\z/, 1], 10)
    assert_operator small_slots, :<, Forkd::GCTuning::ADVICE_MIN_OBJECTS, "the small app's own size"
    refute_match(/the app's heap holds/, small.read_log)

    m = master
    quiet = m.boot_rack(env: { "HOOKAPP_OBJECTS" => "600000" })
    m.spawn_ready(quiet, index: 1)
    assert_empty(m.notify.lines(quiet.pid).select { |l| l.start_with?(report) })
    assert_match(/RUBY_GC_HEAP_INIT_SLOTS=\d+ in the app's environment/, quiet.read_log)
  end

  def test_missing_config_ru
    require_puma
    m = master
    w = m.start([FORKD_RACK, File.join(m.dir, "missing.ru")])
    assert_equal 1, waitpid_timeout(w.pid).exitstatus
    assert_includes w.read_log, "cannot load"
  end

  def test_serve_with_a_server_of_ones_own
    m = master
    t = m.start([File.join(APPS, "tiny_server.rb")])
    assert_equal true, t.expect("hello")["fork"]
    t.send_message({ "op" => "welcome", "worker" => 0, "generation" => 1 })
    m.notify.wait_for(t.pid, "READY=1")
    pid, = m.spawn_ready(t, index: 1)
    Process.kill(:TERM, t.pid)
    assert_equal 0, waitpid_timeout(t.pid).exitstatus, t.read_log
    s = TCPSocket.new("127.0.0.1", m.port)
    s.write("hi\n")
    assert_equal "tiny #{pid} 1\n", s.read
    s.close
    m.notify.wait_for(pid, "X_FORKD_REQUESTS=1", timeout: 3)
  end

  # A stop reaches Puma's accept loop even when it waits for a free thread (every thread busy, a
  # connection waiting to be accepted): the stop command is read at once, and the requests in
  # hand are served before stop returns.
  def test_stop_while_every_thread_is_busy
    require_puma
    require "forkd/rack"
    entered = Queue.new
    release = Queue.new
    app = lambda do |env|
      if env["PATH_INFO"] == "/hold"
        entered << true
        release.pop
      end
      [200, { "content-type" => "text/plain" }, [env["PATH_INFO"]]]
    end
    listener = TCPServer.new("127.0.0.1", 0)
    port = listener.addr[1]
    server = Forkd::Rack::PumaServer.new(app, threads: 1, environment: "test")
    server.start([listener])
    puma = server.instance_variable_get(:@server)
    busy = TCPSocket.new("127.0.0.1", port)
    busy.write("GET /hold HTTP/1.1\r\nHost: test\r\n\r\n")
    entered.pop
    waiting = TCPSocket.new("127.0.0.1", port)
    waiting.write("GET /next HTTP/1.1\r\nHost: test\r\n\r\n")
    wait_until("the accept loop waiting for a free thread") do
      (puma.thread.backtrace || []).any? { |line| line.include?("wait_until_not_full") }
    end
    stopper = Thread.new { server.stop }
    wait_until("the stop command read while the thread is busy", timeout: 10) { puma.shutting_down? }
    release << true
    assert stopper.join(10), "stop returned once the held request was served"
    [[busy, "/hold"], [waiting, "/next"]].each do |socket, path|
      response = socket.read
      assert_match %r{\AHTTP/1.1 200}, response
      assert_match(/^connection: close\r$/i, response)
      assert response.end_with?(path), response
      socket.close
    end
    refute listener.closed?, "the listener outlives the server"
  ensure
    release&.push(true)
    listener&.close
  end

  # A stopping server answers the next request on every connection whose client may still send
  # one (a keep-alive connection that is idle, one accepted whose first request has not come),
  # with "Connection: close", instead of closing it under the client. Puma closes them when it
  # shuts its reactor down; a client cannot tell before it writes, and one that does not retry
  # (wrk, Node's http) fails that request. The raw sockets here are such clients: each writes its
  # request after the point where Puma would have closed its connection.
  def test_stop_answers_the_next_request_on_every_open_connection
    server, puma, port = start_puma_server(drain_timeout: 60)
    idle = TCPSocket.new("127.0.0.1", port)
    idle.write(http_get("/first"))
    head, body = read_response(idle)
    assert_match %r{\AHTTP/1.1 200}, head
    refute_match(/^connection: close/i, head, "a keep-alive connection")
    assert_equal "/first", body
    fresh = TCPSocket.new("127.0.0.1", port)
    reactor = puma.instance_variable_get(:@reactor)
    wait_until("both connections waiting in Puma's reactor") { reactor.instance_variable_get(:@timeouts).size == 2 }
    stopper = Thread.new { server.stop }
    reactor_thread = reactor.instance_variable_get(:@thread)
    wait_until("Puma's reactor shut down") { !reactor_thread.alive? }
    [[idle, "/second"], [fresh, "/first-on-fresh"]].each do |socket, path|
      socket.write(http_get(path))
      head, body = read_response(socket)
      assert_match %r{\AHTTP/1.1 200}, head, "#{path}: a response, not end of file"
      assert_match(/^connection: close\r$/i, head)
      assert_equal path, body
      assert_nil socket.wait_readable(TIMEOUT) && socket.read_nonblock(1, exception: false), "then end of file"
      socket.close
    end
    assert stopper.join(TIMEOUT), "stop returned once every connection was answered, long before the drain timeout"
  end

  # Two workers on one listener, one of them busy with a request in flight: the idle one takes
  # the new connections (wait_for_less_busy_worker, on by default as in Puma 6's cluster mode).
  # Without the delay the busy worker's accept loop, woken by the same connection, takes about
  # half of them. A reload's new template, idle beside busy old workers, warms up only with
  # connections it gets this way.
  def test_an_idle_worker_takes_the_new_connections_before_a_busy_one
    require_puma
    require "forkd/rack"
    entered = Queue.new
    release = Queue.new
    listener = TCPServer.new("127.0.0.1", 0)
    servers = %w[first second].map do |name|
      app = lambda do |env|
        if env["PATH_INFO"] == "/hold"
          entered << name
          release.pop
        end
        [200, { "content-type" => "text/plain", "content-length" => name.bytesize.to_s }, [name]]
      end
      Forkd::Rack::PumaServer.new(app, threads: 5, environment: "test").tap { |s| s.start([listener]) }
    end
    assert_equal [0.005, 0.005], servers.map { |s| s.options[:wait_for_less_busy_worker] }
    held = TCPSocket.new("127.0.0.1", listener.addr[1])
    held.write(http_get("/hold"))
    busy = entered.pop
    tries = 30
    took = Array.new(tries) do
      s = TCPSocket.new("127.0.0.1", listener.addr[1])
      s.write("GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
      read_response(s)[1].tap { s.close }
    end
    assert_operator took.count { |name| name != busy }, :>=, tries * 3 / 4,
                    "the idle worker took most new connections: #{took.tally} (busy: #{busy})"
  ensure
    release&.push(true)
    held&.close
    servers&.each { |s| s.stop if s.running? }
    listener&.close
  end

  # A connection that stays silent is closed at the drain timeout; one its client closes ends the
  # wait for it at once.
  def test_stop_closes_silent_connections_at_the_drain_timeout
    server, _, port = start_puma_server(drain_timeout: 0.5)
    silent, gone = Array.new(2) do
      s = TCPSocket.new("127.0.0.1", port)
      s.write(http_get("/"))
      assert_match %r{\AHTTP/1.1 200}, read_response(s)[0]
      s
    end
    gone.close
    assert Thread.new { server.stop }.join(TIMEOUT), "stop returned"
    assert silent.wait_readable(TIMEOUT), "the silent connection was closed"
    assert_nil silent.read_nonblock(1, exception: false)
    silent.close
  end

  # A PumaServer serving PATH_INFO on a listener of its own, stopped in cleanup: [server, its
  # Puma::Server, port].
  def start_puma_server(**options)
    require_puma
    require "forkd/rack"
    app = ->(env) { [200, { "content-type" => "text/plain", "content-length" => env["PATH_INFO"].bytesize.to_s }, [env["PATH_INFO"]]] }
    listener = TCPServer.new("127.0.0.1", 0)
    server = Forkd::Rack::PumaServer.new(app, threads: 2, environment: "test", **options)
    server.start([listener])
    (@cleanups ||= []) << lambda do
      server.stop if server.running?
      listener.close
    end
    [server, server.instance_variable_get(:@server), listener.addr[1]]
  end

  def http_get(path)
    "GET #{path} HTTP/1.1\r\nHost: test\r\n\r\n"
  end

  # One response from socket: [head, body] (body by Content-Length); [""] at end of file.
  def read_response(socket)
    head = +""
    while (line = socket.gets)
      head << line
      break if line == "\r\n"
    end
    length = head[/^content-length: *(\d+)/i, 1]
    [head, length ? socket.read(Integer(length, 10)) : nil]
  end

  # forkd-rack ARGS..., not under forkd: [status, nil, output].
  def run_cli(*args, chdir: Dir.pwd)
    out_r, out_w = IO.pipe
    pid = Process.spawn({ "RUBYLIB" => LIB, "LISTEN_FDS" => nil, "NOTIFY_SOCKET" => nil }, RUBY, FORKD_RACK, *args,
                        chdir: chdir, in: File::NULL, out: out_w, err: out_w)
    out_w.close
    reader = Thread.new { out_r.read }
    status = waitpid_timeout(pid)
    [status, nil, reader.value]
  end
end

# frozen_string_literal: true

require_relative "helpers"

# forkd-rack's command line, and Forkd.serve with a server of one's own.
class RackTest < ForkdTest::MasterTest
  include ForkdTest

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
    status, _, log = run_cli("--version")
    assert status.success?, log
    assert_match(/\Aforkd-rack \d+\.\d+\.\d+ \(protocol 1\)/, log)
    status, _, log = run_cli("--help")
    assert status.success?, log
    assert_includes log, "--threads N"
    status, _, log = run_cli("--threads", "zero")
    assert_equal 2, status.exitstatus, log
    status, _, log = run_cli("a.ru", "b.ru")
    assert_equal 2, status.exitstatus, log
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
    _, ch = m.spawn(t, index: 1)
    pid = t.expect("spawned")["pid"]
    w = m.adopt(pid, ch)
    w.expect("hello")
    w.send_message({ "op" => "welcome", "worker" => 1, "generation" => 1 })
    m.notify.wait_for(pid, "READY=1")
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

  # forkd-rack ARGS..., not under forkd: [status, nil, output].
  def run_cli(*args)
    out_r, out_w = IO.pipe
    pid = Process.spawn({ "RUBYLIB" => LIB }, RUBY, FORKD_RACK, *args, in: File::NULL, out: out_w, err: out_w)
    out_w.close
    reader = Thread.new { out_r.read }
    status = waitpid_timeout(pid)
    [status, nil, reader.value]
  end
end

# frozen_string_literal: true

require_relative "helpers"

# sd_notify(3) and sd_notify_barrier(3) against a real receiving socket.
class NotifyTest < Minitest::Test
  N = Forkd::SdNotify

  def setup
    @notify = ForkdTest::Notifications.new
  end

  def teardown
    @notify.close
  end

  def test_abstract_address_with_credentials
    assert_equal true, N.notify("READY=1\nSTATUS=up", address: @notify.address)
    pid, text, = @notify.wait_for(Process.pid, "READY=1")
    assert_equal Process.pid, pid
    assert_equal "READY=1\nSTATUS=up", text
  end

  def test_environment_and_path_address
    dir = Dir.mktmpdir("forkd-notify-")
    path = File.join(dir, "notify.sock")
    recv = Socket.new(:UNIX, :DGRAM)
    recv.bind(Socket.sockaddr_un(path))
    old = ENV["NOTIFY_SOCKET"]
    begin
      ENV["NOTIFY_SOCKET"] = path
      assert_equal true, Forkd.status("line one\nline two")
      assert_equal "STATUS=line one line two", recv.recv(100)
      ENV["NOTIFY_SOCKET"] = @notify.address
      assert_equal true, Forkd.stopping
      @notify.wait_for(Process.pid, "STOPPING=1")
    ensure
      ENV["NOTIFY_SOCKET"] = old
      recv.close
      FileUtils.rm_rf(dir)
    end
  end

  def test_outcomes
    old = ENV.delete("NOTIFY_SOCKET")
    begin
      assert_equal false, Forkd.notify("READY=1"), "nobody to notify: false, not an error"
      assert_equal false, Forkd.notify_barrier
      e = assert_raises(Forkd::NotifyError) { N.notify("READY=1", address: "relative/path") }
      assert_kind_of SystemCallError, e
      assert_match(/neither an absolute path nor an @abstract name/, e.message)
      assert_raises(Errno::ECONNREFUSED) { N.notify("READY=1", address: "@forkd-test/nobody/#{SecureRandom.hex(4)}") }
      assert_raises(Errno::ENOENT) { N.notify("READY=1", address: "/nonexistent/forkd/notify.sock") }
    ensure
      ENV["NOTIFY_SOCKET"] = old if old
    end
  end

  def test_barrier
    assert_equal true, N.notify_barrier(timeout: 5, address: @notify.address)
    @notify.wait_for(Process.pid, "BARRIER=1")
  end

  def test_barrier_times_out_when_the_descriptor_is_kept
    keeper = Socket.new(:UNIX, :DGRAM)
    name = "\0forkd-test/keeper/#{SecureRandom.hex(4)}"
    keeper.bind(Socket.sockaddr_un(name))
    started = ForkdTest.now
    assert_raises(Errno::ETIMEDOUT) { N.notify_barrier(timeout: 0.3, address: "@#{name[1..]}") }
    assert_operator ForkdTest.now - started, :>=, 0.3
    # The datagram (and its descriptor) is still queued: whoever reads it holds the pipe.
    _, _, _, *controls = keeper.recvmsg(100, 0, 256, scm_rights: true)
    controls.each { |c| c.unix_rights&.each(&:close) }
    keeper.close
  end
end

# frozen_string_literal: true

require_relative "helpers"

# The gem: `gem build` and `gem install` offline, the installed forkd-rack, `bundle exec`.
class InstallTest < Minitest::Test
  include ForkdTest

  def setup
    @dir = Dir.mktmpdir("forkd-ruby-install-")
  end

  def teardown
    FileUtils.rm_rf(@dir)
  end

  def sh(env, *argv, chdir: @dir)
    out_r, out_w = IO.pipe
    pid = Process.spawn(env, *argv, chdir: chdir, in: File::NULL, out: out_w, err: out_w)
    out_w.close
    reader = Thread.new { out_r.read }
    status = waitpid_timeout(pid, 60)
    [status, reader.value]
  end

  def test_gem_build_and_install_offline
    src = File.join(@dir, "src")
    FileUtils.cp_r(SDK_DIR, src)
    FileUtils.rm_rf(Dir[File.join(src, "*.gem")])
    status, out = sh({}, "gem", "build", "forkd.gemspec", chdir: src)
    assert status.success?, out
    gem_file = Dir[File.join(src, "forkd-*.gem")].first
    assert gem_file, out
    home = File.join(@dir, "gems")
    status, out = sh({ "GEM_HOME" => home }, "gem", "install", "--local", "--no-document", "--install-dir", home, gem_file)
    assert status.success?, out
    env = { "GEM_HOME" => home, "GEM_PATH" => [home, *Gem.path].join(":"), "RUBYLIB" => nil, "RUBYOPT" => nil }
    status, out = sh(env, File.join(home, "bin", "forkd-rack"), "--version")
    assert status.success?, out
    assert_match(/\Aforkd-rack #{Regexp.escape(Forkd::VERSION)} \(protocol 1\)/, out)
    status, out = sh(env, RUBY, "-e", 'require "forkd"; print Forkd::SDK, " ", $LOADED_FEATURES.grep(/forkd\.rb/).first')
    assert status.success?, out
    assert_includes out, "forkd-ruby/#{Forkd::VERSION} #{home}"
  end

  def test_bundle_exec
    skip "bundler's bundle command is not installed (apt-get install bundler)" unless system("command -v bundle >/dev/null 2>&1")
    skip "puma and rack are not installed (apt-get install puma ruby-rack)" unless ForkdTest.puma?
    app = File.join(@dir, "app")
    FileUtils.mkdir_p(app)
    example = File.expand_path("../../examples/rack", SDK_DIR)
    %w[app.rb config.ru Gemfile].each { |f| FileUtils.cp(File.join(example, f), app) }
    gemfile = File.read(File.join(app, "Gemfile")).sub(%r{path: "../../sdk/ruby"}, "path: #{SDK_DIR.inspect}")
    File.write(File.join(app, "Gemfile"), gemfile)
    env = { "BUNDLE_APP_CONFIG" => File.join(app, ".bundle"), "RUBYLIB" => nil, "RUBYOPT" => nil,
            "BUNDLE_GEMFILE" => File.join(app, "Gemfile"), "DEMO_ALLOC_MB" => "1" }
    status, out = sh(env, "bundle", "install", "--local", chdir: app)
    assert status.success?, out
    port = TCPServer.new("127.0.0.1", 0).then { |s| s.addr[1].tap { s.close } }
    out_r, out_w = IO.pipe
    pid = Process.spawn(env, "bundle", "exec", "forkd-rack", "--bind", "127.0.0.1:#{port}", "config.ru",
                        chdir: app, in: File::NULL, out: out_w, err: out_w)
    out_w.close
    reader = Thread.new { out_r.read }
    begin
      code, body = wait_until("bundle exec forkd-rack on #{port}", timeout: 30) do
        get(port, "/")
      rescue SystemCallError
        nil
      end
      assert_equal 200, code
      assert_includes body, "hello from worker -1"
    ensure
      Process.kill(:TERM, pid)
      waitpid_timeout(pid)
    end
    assert_includes reader.value, "not under forkd"
  end
end

# frozen_string_literal: true

require_relative "helpers"
require "forkd/puma_config"

# forkd-rack reading a Puma user's puma.rb and command line (Forkd::Rack::PumaConfig): what it
# applies, what it refuses (naming the forkd setting to use, with the file and line), what it
# ignores with a warning, and binds checked against the sockets forkd passed.
class PumaConfigTest < Minitest::Test
  include ForkdTest

  def setup
    @dir = Dir.mktmpdir("forkd-puma-config-")
  end

  def teardown
    FileUtils.rm_rf(@dir)
  end

  # A PumaConfig read from a puma.rb with body.
  def config(body, name: "puma.rb")
    path = File.join(@dir, name)
    File.write(path, body)
    Forkd::Rack::PumaConfig.new.load_file(path)
  end

  def test_settings_that_mean_something_in_a_worker
    c = config(<<~RUBY)
      threads 2, 8
      environment "staging"
      port 3000
      bind "unix:///run/app.sock"
      rackup "other.ru"
      persistent_timeout 30
      first_data_timeout 10
      max_fast_inline 4
      queue_requests true
      early_hints
      log_requests
      preload_app!
      bind_to_activated_sockets
      lowlevel_error_handler { |_e| [500, {}, ["oops"]] }
      out_of_band { :gc }
      wait_for_less_busy_worker 0.01
    RUBY
    assert_empty c.refusals.map(&:to_s)
    assert_empty c.warnings
    assert_equal [2, 8, "staging", "other.ru", true], c.settings.values_at(:min_threads, :max_threads, :environment, :rackup, :log_requests)
    assert_equal ["tcp://0.0.0.0:3000", "unix:///run/app.sock"], c.binds.map(&:first)
    opts = c.server_options
    assert_equal [30.0, 10.0, 4.0, true, true], opts.values_at(:persistent_timeout, :first_data_timeout, :max_fast_inline, :queue_requests, :early_hints)
    assert_equal [500, {}, ["oops"]], opts[:lowlevel_error_handler].call(nil)
    assert_equal [:gc], opts[:out_of_band].map(&:call)
    assert_equal 0.01, opts[:wait_for_less_busy_worker]
    assert_equal 0.005, config("wait_for_less_busy_worker\n").server_options[:wait_for_less_busy_worker], "Puma's value when none is given"
  end

  def test_hooks_in_pumas_spellings
    c = config(<<~RUBY)
      before_fork { :before_fork }
      on_worker_boot { |i| [:boot5, i] }          # Puma 5 and 6
      before_worker_boot { |i| [:boot7, i] }      # Puma 7
      on_worker_shutdown { |i| [:shutdown5, i] }
      before_worker_shutdown(:key) { |i| [:shutdown7, i] }
      on_refork { :refork5 }
      before_refork { :refork7 }
      after_refork { :after_refork }
    RUBY
    assert_empty c.refusals.map(&:to_s)
    h = c.hooks
    assert_equal [:before_fork], h[:before_fork].map(&:call)
    assert_equal [[:boot5, 2], [:boot7, 2]], h[:worker_boot].map { |b| b.call(2) }
    assert_equal [[:shutdown5, 1], [:shutdown7, 1]], h[:worker_shutdown].map { |b| b.call(1) }
    assert_equal %i[refork5 refork7], h[:before_refork].map(&:call)
    assert_equal [:after_refork], h[:after_refork].map(&:call)
  end

  # Each of Puma's master settings is refused with what to use under forkd, and where it is.
  def test_master_settings_are_refused_with_the_forkd_setting_to_use
    {
      "workers 4" => "`workers = N` in forkd's config",
      "fork_worker 1000" => "forkd's `fork_worker { refork_after = [1000] }` block",
      "worker_timeout 30" => "`timeouts { worker = \"30s\" }`",
      "worker_boot_timeout 60" => "`timeouts { boot = \"60s\" }`",
      "worker_shutdown_timeout 30" => "`timeouts { shutdown = \"30s\" }`",
      "on_worker_fork { }" => "Puma's master",
      "after_worker_fork { }" => "Puma's master",
      "after_worker_boot { }" => "alias of after_worker_fork",
      "on_restart { }" => "`hooks { before_restart = [...] }`",
      "before_restart { }" => "`hooks { before_restart = [...] }`",
      "on_booted { }" => "READY=1",
      "activate_control_app" => "forkctl",
      "state_path 'puma.state'" => "forkctl",
      "daemonize" => "systemd",
      "stdout_redirect 'a.log', 'b.log'" => "the journal",
      "ssl_bind '0.0.0.0', 9293, {}" => "TLS",
      "restart_command 'bin/puma'" => "forkctl restart",
      "prune_bundler" => "fresh worker 0",
      "nakayoshi_fork" => "--ready-template",
      "directory '/somewhere/else'" => "forkd starts every worker in its `directory`",
      "plugin :heroku" => "Puma's launcher",
      "frobnicate 3" => "not a Puma setting",
    }.each do |line, hint|
      c = config("# a comment\n#{line}\n")
      assert_equal 1, c.refusals.size, "#{line}: #{c.refusals.map(&:to_s)}"
      text = c.refusals.first.to_s
      assert text.start_with?("#{File.join(@dir, "puma.rb")}:2: "), text
      assert_includes text, hint, line
    end
  end

  def test_worker_timeout_that_agrees_with_forkd_is_accepted
    with_env("WATCHDOG_USEC" => "30000000") do
      assert_empty config("worker_timeout 30\n").refusals
      assert_includes config("worker_timeout 60\n").refusals.first.to_s, "(now \"30s\")"
    end
  end

  def test_what_changes_nothing_is_ignored_with_a_warning
    c = config(<<~RUBY)
      pidfile "tmp/pids/server.pid"
      plugin :tmp_restart
      tag "app"
      silence_single_worker_warning
    RUBY
    assert_empty c.refusals
    assert_equal 4, c.warnings.size
    assert_match(/puma\.rb:1: pidfile "tmp\/pids\/server\.pid" ignored: .*MainPID/, c.warnings[0])
    assert_match(/puma\.rb:2: plugin :tmp_restart ignored: .*forkctl reload/, c.warnings[1])
  end

  # Rails' generated config/puma.rb (Rails 6.1 to 8) is Ruby that reads ENV: it loads, and every
  # line but `workers` either applies or warns.
  def test_a_rails_puma_rb
    c = config(<<~RUBY)
      max_threads_count = ENV.fetch("RAILS_MAX_THREADS") { 5 }
      min_threads_count = ENV.fetch("RAILS_MIN_THREADS") { max_threads_count }
      threads min_threads_count, max_threads_count
      worker_timeout 3600 if ENV.fetch("RAILS_ENV", "development") == "development"
      port ENV.fetch("PORT") { 3000 }
      environment ENV.fetch("RAILS_ENV") { "development" }
      pidfile ENV.fetch("PIDFILE") { "tmp/pids/server.pid" }
      workers ENV.fetch("WEB_CONCURRENCY") { 2 }
      preload_app!
      plugin :tmp_restart
    RUBY
    with_env("RAILS_ENV" => "production") do
      c = config(File.read(File.join(@dir, "puma.rb")))
    end
    assert_equal ["workers 2"], c.refusals.map(&:setting)
    assert_equal [5, 5], c.settings.values_at(:min_threads, :max_threads)
    assert_equal "production", c[:environment]
  end

  def test_errors_in_the_file_name_the_line
    c = config("threads 1, 2\nraise 'no'\n")
    assert_equal "#{File.join(@dir, "puma.rb")}:2: error: RuntimeError: no", c.refusals.first.to_s
    c = config("threads 1,\n")
    assert_includes c.refusals.first.to_s, "SyntaxError"
    c = config("threads 3, 2\nthreads 'x'\n")
    assert_includes c.refusals[0].to_s, "puma.rb:1: threads 3, 2: the minimum is more than the maximum"
    assert_includes c.refusals[1].to_s, "puma.rb:2: error: ArgumentError"
    c = Forkd::Rack::PumaConfig.new.load_file(File.join(@dir, "missing.rb"))
    assert_includes c.refusals.first.to_s, "No such file"
  end

  def test_load_reads_another_file
    File.write(File.join(@dir, "common.rb"), "threads 3, 3\nworkers 2\n")
    c = config("load '#{File.join(@dir, "common.rb")}'\nenvironment 'production'\n")
    assert_equal [3, "production"], c.settings.values_at(:max_threads, :environment)
    assert_equal "#{File.join(@dir, "common.rb")}:2", c.refusals.first.where
  end

  def test_the_command_line_wins_over_the_file
    file = config("threads 1, 2\nport 3000\nenvironment 'staging'\nbefore_fork { :file }\n")
    cli = Forkd::Rack::PumaConfig.new
    cli[:max_threads] = 9
    cli.add_bind("tcp://127.0.0.1:4000", "command line")
    cli.hooks[:before_fork] << -> { :cli }
    merged = file.merge(cli)
    assert_equal [1, 9, "staging"], merged.settings.values_at(:min_threads, :max_threads, :environment)
    assert_equal ["tcp://127.0.0.1:4000"], merged.binds.map(&:first)
    assert_equal %i[file cli], merged.hooks[:before_fork].map(&:call)
    assert_equal ["tcp://0.0.0.0:3000"], file.merge(Forkd::Rack::PumaConfig.new).binds.map(&:first)
  end

  def test_default_file_as_puma_finds_it
    FileUtils.mkdir_p(File.join(@dir, "config", "puma"))
    assert_nil Forkd::Rack::PumaConfig.default_file("production", @dir)
    File.write(File.join(@dir, "config", "puma.rb"), "")
    assert_equal File.join(@dir, "config", "puma.rb"), Forkd::Rack::PumaConfig.default_file("production", @dir)
    File.write(File.join(@dir, "config", "puma", "production.rb"), "")
    assert_equal File.join(@dir, "config", "puma", "production.rb"), Forkd::Rack::PumaConfig.default_file("production", @dir)
  end

  # Under forkd a bind must name a socket forkd passed: the same address, a host name that
  # resolves to it, a wildcard for a wildcard; anything else is refused, naming forkd's listen.
  def test_binds_under_forkd_name_the_sockets_forkd_passed
    tcp = TCPServer.new("127.0.0.1", 0)
    port = tcp.addr[1]
    path = File.join(@dir, "app.sock")
    unix = UNIXServer.new(path)
    ok = ["tcp://127.0.0.1:#{port}", "tcp://localhost:#{port}", "127.0.0.1:#{port}", "unix://#{path}",
          "unix:#{path}", "tcp://127.0.0.1:#{port}?backlog=2048"]
    bad = ["tcp://0.0.0.0:#{port}", "tcp://127.0.0.1:#{port + 1}", "unix:///elsewhere.sock", "ssl://127.0.0.1:#{port}",
           "tcp://no-such-host.invalid:#{port}", "http://127.0.0.1:#{port}"]
    c = Forkd::Rack::PumaConfig.new
    (ok + bad).each { |url| c.add_bind(url, "command line") }
    c.check_binds([tcp, unix])
    assert_equal bad.map { |url| "bind #{url}" }, c.refusals.map(&:setting)
    text = c.refusals.first.to_s
    assert_includes text, "forkd's `listen` blocks"
    assert_includes text, "forkd passed tcp://127.0.0.1:#{port}, unix://#{path}"
    assert_includes text, "listen \"http\" { address = \"tcp://0.0.0.0:#{port}\" }"
    assert_includes c.refusals[3].to_s, "TLS"
  ensure
    tcp&.close
    unix&.close
  end

  def with_env(vars)
    old = vars.keys.to_h { |k| [k, ENV.fetch(k, nil)] }
    vars.each { |k, v| ENV[k] = v }
    yield
  ensure
    old.each { |k, v| ENV[k] = v }
  end
end

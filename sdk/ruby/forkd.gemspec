# frozen_string_literal: true

require_relative "lib/forkd/version"

Gem::Specification.new do |spec|
  spec.name = "forkd"
  spec.version = Forkd::VERSION
  spec.summary = "forkd's worker SDK for Ruby: sd_listen_fds/sd_notify helpers, fork hooks, " \
                 "and a fork-worker capable runtime with a Puma-based Rack runner"
  spec.description = <<~TEXT
    The worker side of forkd's protocol (version 1): listeners passed by forkd or systemd,
    readiness, heartbeats and request counts over sd_notify, the fork-worker control channel
    (the template double-forks every other worker on the master's request), fork hooks on
    Process._fork, and forkd-rack, which serves a config.ru with Puma::Server. Standard library
    only; forkd-rack also needs puma and rack.
  TEXT
  spec.authors = ["The forkd authors"]
  spec.required_ruby_version = ">= 3.1"
  spec.platform = Gem::Platform::RUBY

  spec.files = Dir.chdir(__dir__) do
    Dir["lib/**/*.rb", "bin/*", "README.md", "forkd.gemspec"]
  end
  spec.bindir = "bin"
  spec.executables = ["forkd-rack"]
  spec.require_paths = ["lib"]
  spec.metadata["rubygems_mfa_required"] = "true"
  # forkd-rack needs puma (>= 5.6) and rack; the SDK itself needs neither, so they are not
  # dependencies: add them to the app's Gemfile (or apt-get install puma ruby-rack).
end

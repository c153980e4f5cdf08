# frozen_string_literal: true

# The Rack demo for forkd (see app.rb). Loaded once, by worker 0; forkd forks the others from it.
#
#   forkd --config examples/rack/forkd.hcl
#   bundle exec forkd-rack config.ru          # alone, with the Gemfile beside this file

require_relative "app"

run Demo::App.new

# frozen_string_literal: true

module Forkd
  # The gem's version.
  VERSION = "0.1.0"

  # What this SDK calls itself in the control channel's hello.
  SDK = "forkd-ruby/#{VERSION}"
end

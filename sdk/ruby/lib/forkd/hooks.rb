# frozen_string_literal: true

module Forkd
  # Fork hooks, with pthread_atfork(3) semantics, plus forkd's refork and boot hooks.
  #
  # - before_fork: *prepare*, run in the forking process just before a fork, in reverse order of
  #   registration (the last registered runs first);
  # - after_fork_parent: run in the forking process after the fork, in registration order;
  # - after_fork_child: run in the new process after the fork, in registration order;
  # - before_refork / after_refork: run in the template around a refork (forkd's pause ...
  #   resume), before_refork once no request is in flight;
  # - after_worker_boot: run in each worker once it is a worker: in an exec'd worker (worker 0)
  #   at boot, in each forked worker after the fork and forkd's welcome, before READY=1; not in a
  #   template that does not serve (mold mode);
  # - after_mold: run in each template that does not serve, once it is one: a mold after its fork
  #   (after the child hooks) and forkd's welcome, mold mode's worker 0 after the welcome; before
  #   it readies its heap and says READY=1.
  #
  # The fork hooks sit on Process._fork (Ruby 3.1+, Feature #17795): a module prepended to
  # Process's singleton class wraps it, so they run around every Kernel#fork, Process.fork and
  # IO.popen("-"), whoever calls it (a library, a job runner, the app). Process.spawn, system and
  # backticks do not fork a Ruby process and run no hooks.
  #
  # For the SDK's own double fork (template -> short-lived intermediate -> worker), the hooks run
  # exactly once per process they belong to: prepare and parent hooks once in the template, child
  # hooks once in the new worker, none in the intermediate. The SDK marks its forks (a
  # thread-local flag, set only around its own Process.fork calls) so that the _fork wrapper
  # leaves the user's hooks alone, and runs them itself at the right points.
  module Hooks
    # (||=: a second load of this file keeps the hooks registered so far.)
    @prepare ||= []
    @parent ||= []
    @child ||= []
    @before_refork ||= []
    @after_refork ||= []
    @after_boot ||= []
    @after_mold ||= []

    FLAG = :forkd_sdk_forking

    class << self
      def register(registry, callable, block, name)
        fn = callable || block
        if callable && block
          raise ArgumentError, "Forkd.#{name} takes a callable or a block, not both"
        end
        raise ArgumentError, "Forkd.#{name} needs a block or a callable" if fn.nil?
        raise TypeError, "a forkd hook must respond to call, not #{fn.inspect}" unless fn.respond_to?(:call)

        registry << fn
        fn
      end

      def registry(kind)
        case kind
        when :prepare then @prepare
        when :parent then @parent
        when :child then @child
        when :before_refork then @before_refork
        when :after_refork then @after_refork
        when :after_boot then @after_boot
        when :after_mold then @after_mold
        else raise ArgumentError, kind.inspect
        end
      end

      def report(kind, fn, error)
        Forkd::Worker.log("#{kind} hook #{fn.inspect} failed: #{error.class}: #{error.message}\n" \
                          "#{(error.backtrace || []).first(20).join("\n")}")
      end

      # Run the hooks of a registry. strict: let an exception through (the caller decides what it
      # means); otherwise report it on stderr and go on with the next hook.
      def run(kind, fns, strict)
        fns.each do |fn|
          if strict
            fn.call
          else
            begin
              fn.call
            rescue StandardError, ScriptError => e
              report(kind, fn, e)
            end
          end
        end
        nil
      end

      def run_prepare(strict: false)
        run("before_fork", @prepare.reverse, strict)
      end

      def run_parent
        run("after_fork_parent", @parent.dup, false)
      end

      def run_child(strict: false)
        run("after_fork_child", @child.dup, strict)
      end

      def run_before_refork
        run("before_refork", @before_refork.dup, false)
      end

      def run_after_refork
        run("after_refork", @after_refork.dup, false)
      end

      def run_after_boot(strict: true)
        run("after_worker_boot", @after_boot.dup, strict)
      end

      def run_after_mold(strict: true)
        run("after_mold", @after_mold.dup, strict)
      end

      # True while this thread is inside one of the SDK's own forks.
      def sdk_forking?
        Thread.current.thread_variable_get(FLAG) ? true : false
      end

      # Fork the way the SDK does (Process.fork without the user's hooks); returns what
      # Process.fork returns: the child's PID in the parent, nil in the child.
      def sdk_fork
        Thread.current.thread_variable_set(FLAG, true)
        begin
          Process.fork
        ensure
          Thread.current.thread_variable_set(FLAG, nil)
        end
      end
    end

    # Prepended to Process's singleton class: every Ruby-level fork goes through _fork.
    module ProcessFork
      def _fork
        user = !Forkd::Hooks.sdk_forking?
        Forkd::Hooks.run_prepare if user
        begin
          pid = super
        rescue Exception # rubocop:disable Lint/RescueException
          # As after a failed fork(2) in C: the parent hooks undo what the prepare hooks did.
          Forkd::Hooks.run_parent if user
          raise
        end
        if pid.zero?
          Forkd::Worker.after_any_fork_in_child
          Forkd::Hooks.run_child if user
        elsif user
          Forkd::Hooks.run_parent
        end
        pid
      end
    end

    unless Process.respond_to?(:_fork)
      raise LoadError, "forkd needs Ruby 3.1 or later (Process._fork, Feature #17795); this is Ruby #{RUBY_VERSION}"
    end

    Process.singleton_class.prepend(ProcessFork) unless Process.singleton_class.include?(ProcessFork)
  end
end

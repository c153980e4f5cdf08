"""gunicorn's command line and config file, read by gunicorn's own code, minus what forkd owns.

The settings that would make gunicorn's arbiter do forkd's job (how many workers, where to listen,
reloading, daemonizing, a PID file) are refused, wherever they are set, with the forkd option to
use instead. Settings that forkd's listen blocks own (backlog, reuse_port) are ignored with a
warning, and so are server hooks that only gunicorn's arbiter would call.
"""

import os
import sys

from gunicorn.app.wsgiapp import WSGIApplication
from gunicorn.config import get_default_config_file, make_settings

__all__ = ["Application", "REFUSED", "IGNORED", "ARBITER_HOOKS", "PROG"]

PROG = "forkd-gunicorn"

#: Settings forkd owns: setting name -> (its command-line flags, what to use instead).
REFUSED = {
    "workers": ("-w/--workers", "set workers = N in forkd.hcl (forkd --workers N): each forkd "
                                "worker runs one gunicorn worker"),
    "bind": ("-b/--bind", "add a listen block to forkd.hcl (forkd --listen tcp://HOST:PORT), "
                          "or use a systemd .socket unit: forkd owns the listening sockets"),
    "reload": ("--reload", "run forkctl reload (systemctl reload under systemd): it replaces the "
                           "workers one by one with the new code"),
    "daemon": ("-D/--daemon", "forkd runs in the foreground, under systemd or a shell"),
    "pidfile": ("-p/--pid", "the master's PID is forkd's (systemd's MAINPID); forkctl status "
                            "lists every worker's"),
}

#: Settings that forkd's listen blocks own: ignored, with a warning.
IGNORED = {
    "backlog": "set backlog in forkd.hcl's listen block",
    "reuse_port": "set reuse_port in forkd.hcl's listen block",
}

#: Server hooks that only gunicorn's arbiter calls: never run under forkd.
ARBITER_HOOKS = {
    "on_reload": "forkctl reload starts new workers, which run on_starting and when_ready",
    "child_exit": "the forkd master reaps workers: see forkd's on_worker_crash hook",
    "nworkers_changed": "forkctl scale changes the number of workers",
    "pre_exec": "a hot restart (forkctl restart) re-executes forkd, not the workers",
}


def _setting_source(name, cli, env, config_file):
    if cli.get(name) is not None:
        return "on the command line"
    if env.get(name) is not None:
        return "in GUNICORN_CMD_ARGS"
    return "in %s" % (config_file or "the gunicorn config")


class Application(WSGIApplication):
    """gunicorn's WSGIApplication: the same command line, GUNICORN_CMD_ARGS, config file
    (-c FILE, or ./gunicorn.conf.py) and app loading, checked for settings forkd owns."""

    def __init__(self):
        self.warnings = []
        super().__init__("%(prog)s [OPTIONS] [APP_MODULE]", prog=PROG)

    def load_config(self):
        super().load_config()
        self._check()

    def _check(self):
        parser = self.cfg.parser()
        cli = vars(parser.parse_args(sys.argv[1:]))
        env = vars(parser.parse_args(self.cfg.get_cmd_args_from_env()))
        config_file = cli.get("config") or env.get("config") or get_default_config_file()
        defaults = make_settings()
        refused = []
        for name, (flags, instead) in REFUSED.items():
            given = cli.get(name) is not None or env.get(name) is not None
            if not given and self.cfg.settings[name].value == defaults[name].value:
                continue
            label = flags if given else name
            refused.append("%s %s is forkd's: %s" % (
                label, _setting_source(name, cli, env, config_file), instead))
        if refused:
            # gunicorn's do_load_config turns an Exception into "Error: ..." and status 1; a
            # refused setting is a usage error, said in one line per setting.
            for line in refused:
                sys.stderr.write("%s: %s\n" % (PROG, line))
            sys.stderr.flush()
            sys.exit(2)
        for name, instead in IGNORED.items():
            if self.cfg.settings[name].value != defaults[name].value:
                self.warnings.append("%s %s is ignored: %s" % (
                    name, _setting_source(name, cli, env, config_file), instead))
        for name, instead in ARBITER_HOOKS.items():
            if self.cfg.settings[name].value is not defaults[name].value:
                self.warnings.append("the %s hook never runs under forkd (only gunicorn's "
                                     "arbiter calls it): %s" % (name, instead))

    def add_pythonpath(self):
        """--pythonpath, as gunicorn's Application.run adds it before anything is loaded."""
        if self.cfg.pythonpath:
            for path in self.cfg.pythonpath.split(","):
                path = os.path.abspath(path)
                if path not in sys.path:
                    sys.path.insert(0, path)

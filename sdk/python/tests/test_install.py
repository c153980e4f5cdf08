"""pip install from the directory works offline (the in-tree backend needs no setuptools nor
wheel), with its forkd-gunicorn script, and the example app serves."""

import http.client
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from .helpers import EXTRA_PATH, SDK_DIR, MasterTestCase, PY, have

REPO = os.path.dirname(os.path.dirname(SDK_DIR))
EXAMPLE = os.path.join(REPO, "examples", "python")


class InstallTest(unittest.TestCase):
    @unittest.skipIf(importlib.util.find_spec("pip") is None, "pip is missing")
    def test_pip_install_no_build_isolation(self):
        tmp = tempfile.mkdtemp(prefix="forkd-pip-")
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        # A copy, so the build leaves nothing in the source tree.
        src = os.path.join(tmp, "src")
        shutil.copytree(SDK_DIR, src, ignore=shutil.ignore_patterns(
            "__pycache__", "build", "*.egg-info", "tests"))
        target = os.path.join(tmp, "target")
        env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1",
                   PYTHONDONTWRITEBYTECODE="1")
        proc = subprocess.run(
            [PY, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
             "--target", target, src],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        self.assertEqual(proc.returncode, 0, proc.stdout.decode(errors="replace"))
        for name in ("__init__.py", "runtime.py", "protocol.py", "gunicorn/__init__.py",
                     "gunicorn/__main__.py"):
            self.assertTrue(os.path.exists(os.path.join(target, "forkd", name)), name)
        out = subprocess.run(
            [PY, "-c", "import forkd, forkd.runtime; print(forkd.__file__, forkd.worker_index())"],
            env=dict(env, PYTHONPATH=target), cwd=tmp, stdout=subprocess.PIPE, timeout=30)
        text = out.stdout.decode()
        self.assertTrue(text.startswith(os.path.join(target, "forkd")), text)
        self.assertTrue(text.strip().endswith("-1"), text)
        # The console script, which runs forkd.gunicorn (here: refuses a gunicorn-only option).
        script = os.path.join(target, "bin", "forkd-gunicorn")
        self.assertTrue(os.access(script, os.X_OK), os.listdir(target))
        if have("gunicorn"):
            proc = subprocess.run(
                [script, "--workers", "2", "app:app"], cwd=tmp, timeout=30,
                env=dict(env, PYTHONPATH=os.pathsep.join([target] + EXTRA_PATH)),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            self.assertEqual(proc.returncode, 2, proc.stdout)
            self.assertIn(b"-w/--workers on the command line is forkd's", proc.stdout)


@unittest.skipUnless(os.path.exists(os.path.join(EXAMPLE, "app.py")), "no examples/python")
@unittest.skipUnless(have("gunicorn"), "gunicorn is missing: apt-get install python3-gunicorn")
class ExampleTest(MasterTestCase):
    def test_example_app(self):
        m = self.master()
        w = m.start(["-m", "forkd.gunicorn", "-c", os.path.join(EXAMPLE, "gunicorn.conf.py"),
                     "app:app"], generation=4,
                    env={"PYTHONPATH": os.pathsep.join(EXTRA_PATH + [SDK_DIR, EXAMPLE]),
                         "DEMO_ALLOC_MB": "2"})
        hello = m.welcome(w, index=0, generation=4)
        self.assertIs(hello["fork"], True)
        m.notify.wait_for(w.pid, "READY=1")
        c = http.client.HTTPConnection("127.0.0.1", m.port, timeout=5)
        self.addCleanup(c.close)
        c.request("GET", "/")
        body = c.getresponse().read().decode()
        self.assertEqual(body, "hello from worker 0 (pid %d, generation 4)\n" % w.pid)
        c.request("GET", "/slow?ms=50")
        self.assertTrue(re.match(r"hello from worker 0 ", c.getresponse().read().decode()))
        c.request("GET", "/nope")
        resp = c.getresponse()
        resp.read()
        self.assertEqual(resp.status, 404)


if __name__ == "__main__":
    unittest.main()

"""forkd's PEP 517 build backend: the standard library only, no build dependencies.

The package is pure Python, so a wheel is a zip of forkd/*.py plus its .dist-info. setuptools
cannot build a wheel by itself before version 70.1 (it needs the separate `wheel` package for
bdist_wheel), and a machine without PyPI may not have it; this backend needs nothing, so
`pip install --no-build-isolation ./sdk/python` works offline with any pip that speaks PEP 517
(19.1 or later). It provides build_wheel, build_sdist and build_editable (pip install -e).
"""

import base64
import hashlib
import io
import os
import re
import tarfile
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "forkd"
# Files are dated SOURCE_DATE_EPOCH, or 1980-01-01 (the earliest a zip can say): reproducible.
_EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "315532800"))


def _project():
    """name, version, description and requires-python from pyproject.toml's [project] table."""
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        text = f.read()
    table = text.split("[project]", 1)[1].split("\n[", 1)[0]
    fields = {}
    for key in ("name", "version", "description", "requires-python"):
        found = re.search(r'^%s\s*=\s*"([^"]*)"' % re.escape(key), table, re.M)
        fields[key] = found.group(1) if found else ""
    return fields


def _table(name):
    """The key = value lines of pyproject.toml's [name] table (values as written)."""
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        text = f.read()
    header = "\n[%s]\n" % name
    if header not in "\n" + text:
        return {}
    body = ("\n" + text).split(header, 1)[1].split("\n[", 1)[0]
    out = {}
    for line in body.splitlines():
        found = re.match(r'^([A-Za-z0-9_.-]+)\s*=\s*(.+?)\s*$', line)
        if found:
            out[found.group(1)] = found.group(2)
    return out


def _scripts():
    """[project.scripts]: console script name -> "module:function"."""
    return {k: v.strip('"') for k, v in _table("project.scripts").items()}


def _extras():
    """[project.optional-dependencies]: extra -> list of requirements."""
    return {k: re.findall(r'"([^"]+)"', v) for k, v in _table("project.optional-dependencies").items()}


def _entry_points():
    scripts = _scripts()
    if not scripts:
        return None
    lines = ["[console_scripts]"] + ["%s = %s" % kv for kv in sorted(scripts.items())]
    return ("\n".join(lines) + "\n").encode()


def _dist_info_name():
    p = _project()
    return "%s-%s.dist-info" % (p["name"], p["version"])


def _metadata():
    p = _project()
    lines = [
        "Metadata-Version: 2.1",
        "Name: %s" % p["name"],
        "Version: %s" % p["version"],
        "Summary: %s" % p["description"],
        "Requires-Python: %s" % p["requires-python"],
        "Classifier: Operating System :: POSIX :: Linux",
        "Classifier: Programming Language :: Python :: 3",
        "Description-Content-Type: text/markdown",
    ]
    for extra, reqs in sorted(_extras().items()):
        lines.append("Provides-Extra: %s" % extra)
        lines += ['Requires-Dist: %s; extra == "%s"' % (req, extra) for req in reqs]
    readme = os.path.join(ROOT, "README.md")
    body = ""
    if os.path.exists(readme):
        with open(readme, encoding="utf-8") as f:
            body = f.read()
    return ("\n".join(lines) + "\n\n" + body).encode("utf-8")


def _wheel_file():
    return (b"Wheel-Version: 1.0\nGenerator: forkd_build\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n")


def _package_files():
    out = []
    pkg = os.path.join(ROOT, PACKAGE)
    for dirpath, dirnames, filenames in os.walk(pkg):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith((".pyc", ".pyo")):
                continue
            full = os.path.join(dirpath, name)
            out.append((os.path.relpath(full, ROOT).replace(os.sep, "/"), full))
    return out


def _digest(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _write_wheel(wheel_directory, entries):
    """entries: list of (archive path, bytes). Adds the .dist-info and RECORD; returns the name."""
    p = _project()
    dist_info = _dist_info_name()
    entries = list(entries) + [
        (dist_info + "/METADATA", _metadata()),
        (dist_info + "/WHEEL", _wheel_file()),
        (dist_info + "/top_level.txt", (PACKAGE + "\n").encode()),
    ]
    if _entry_points() is not None:
        entries.append((dist_info + "/entry_points.txt", _entry_points()))
    record = "".join("%s,%s,%d\n" % (path, _digest(data), len(data)) for path, data in entries)
    record += dist_info + "/RECORD,,\n"
    entries.append((dist_info + "/RECORD", record.encode()))
    name = "%s-%s-py3-none-any.whl" % (p["name"].replace("-", "_"), p["version"])
    stamp = time.gmtime(max(_EPOCH, 315532800))[:6]
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in entries:
            info = zipfile.ZipInfo(path, date_time=stamp)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return name


def _read(full):
    with open(full, "rb") as f:
        return f.read()


# --- PEP 517 ------------------------------------------------------------------------------------

def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    dist_info = _dist_info_name()
    target = os.path.join(metadata_directory, dist_info)
    os.makedirs(target, exist_ok=True)
    with open(os.path.join(target, "METADATA"), "wb") as f:
        f.write(_metadata())
    with open(os.path.join(target, "WHEEL"), "wb") as f:
        f.write(_wheel_file())
    with open(os.path.join(target, "top_level.txt"), "w") as f:
        f.write(PACKAGE + "\n")
    if _entry_points() is not None:
        with open(os.path.join(target, "entry_points.txt"), "wb") as f:
            f.write(_entry_points())
    return dist_info


prepare_metadata_for_build_editable = prepare_metadata_for_build_wheel


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    return _write_wheel(wheel_directory, [(path, _read(full)) for path, full in _package_files()])


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    # A .pth file puts this directory on sys.path: the installed forkd is the source tree.
    return _write_wheel(wheel_directory, [("__editable__.%s.pth" % PACKAGE,
                                           (ROOT + "\n").encode())])


def build_sdist(sdist_directory, config_settings=None):
    p = _project()
    base = "%s-%s" % (p["name"], p["version"])
    name = base + ".tar.gz"
    members = [("pyproject.toml", os.path.join(ROOT, "pyproject.toml")),
               ("_build/forkd_build.py", os.path.abspath(__file__))]
    if os.path.exists(os.path.join(ROOT, "README.md")):
        members.append(("README.md", os.path.join(ROOT, "README.md")))
    members += _package_files()
    pkg_info = _metadata()
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz", format=tarfile.PAX_FORMAT) as tf:
        for path, data in [("PKG-INFO", pkg_info)] + [(p_, _read(f)) for p_, f in members]:
            info = tarfile.TarInfo("%s/%s" % (base, path))
            info.size = len(data)
            info.mtime = _EPOCH
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    return name

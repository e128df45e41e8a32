"""Shared test helpers for vma-tool (stdlib only, Python 3.9+).

    TOOL                  path of vma-tool (env VMA_TOOL, else <repo>/vma-tool)
    REPO, TESTS_DIR       repository root and tests directory
    run_tool(*args, stdin=None, input=None, env=None, timeout=120, cwd=None)
                          run [sys.executable, TOOL, *args]; stdout/stderr captured as bytes.
                          env: extra variables merged over os.environ (a value of None removes
                          the variable).  stdin defaults to /dev/null unless input is given.
    assert_clean_error(testcase, result, *keywords, code=None, multiple=None)
                          exit != 0 (== code if given); stderr has exactly one line starting with
                          "vma-tool: error: " (at least one for `verify`, or multiple=True); no
                          "Traceback" in stdout/stderr; every keyword (lowercase) is a substring of
                          stderr.lower().
    TempDir               mixin: self.tmp is a fresh directory per test (created on first use,
                          removed afterwards); self.tmp_path(*parts) joins under it.
    load_tool_module()    import vma-tool as a module (cached; name "vma_tool").
"""

import importlib.machinery
import importlib.util
import os
import shutil
import stat
import subprocess
import sys
import tempfile

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)
TOOL = os.path.abspath(os.environ.get("VMA_TOOL") or os.path.join(REPO, "vma-tool"))

ERROR_PREFIX = "vma-tool: error: "


def run_tool(*args, stdin=None, input=None, env=None, timeout=120, cwd=None):
    """Run vma-tool with the current interpreter; returns subprocess.CompletedProcess (bytes)."""
    cmd = [sys.executable, TOOL] + [a if isinstance(a, (str, bytes)) else
                                     (os.fspath(a) if hasattr(a, "__fspath__") else str(a))
                                     for a in args]
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        for k, v in env.items():
            if v is None:
                full_env.pop(k, None)
            else:
                full_env[k] = v
    kw = {}
    if input is not None:
        if isinstance(input, str):
            input = input.encode()
        kw["input"] = input
    else:
        kw["stdin"] = subprocess.DEVNULL if stdin is None else stdin
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env,
                          timeout=timeout, cwd=cwd, **kw)


def _text(b):
    if b is None:
        return ""
    if isinstance(b, bytes):
        return b.decode("utf-8", "replace")
    return b


def assert_clean_error(testcase, result, *keywords, code=None, multiple=None):
    """Assert result is a clean vma-tool failure (see module docstring)."""
    out = _text(result.stdout)
    err = _text(result.stderr)
    ctx = "\n--- exit %r\n--- stderr:\n%s\n--- stdout (head):\n%s" % (
        result.returncode, err[-4000:], out[:1000])
    testcase.assertNotEqual(result.returncode, 0, "expected a failure" + ctx)
    if code is not None:
        testcase.assertEqual(result.returncode, code, "unexpected exit status" + ctx)
    testcase.assertNotIn("Traceback", err, "traceback on stderr" + ctx)
    testcase.assertNotIn("Traceback", out, "traceback on stdout" + ctx)
    lines = [ln for ln in err.splitlines() if ln.startswith(ERROR_PREFIX)]
    if multiple is None:
        args = [a.decode() if isinstance(a, bytes) else str(a) for a in (result.args or [])]
        multiple = "verify" in args
    if multiple:
        testcase.assertGreaterEqual(len(lines), 1, "no %r line" % ERROR_PREFIX + ctx)
    else:
        testcase.assertEqual(len(lines), 1, "expected exactly one %r line" % ERROR_PREFIX + ctx)
    low = err.lower()
    for kw in keywords:
        testcase.assertIn(kw.lower(), low, "keyword %r not in stderr" % kw + ctx)


def _rmtree(path):
    def onerror(func, p, exc):
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            os.chmod(p, stat.S_IRWXU)
        except OSError:
            pass
        try:
            func(p)
        except OSError:
            pass
    shutil.rmtree(path, onerror=onerror)


class TempDir:
    """Mixin for unittest.TestCase: self.tmp is a fresh temporary directory for each test."""

    @property
    def tmp(self):
        d = self.__dict__.get("_support_tmp")
        if d is None:
            d = tempfile.mkdtemp(prefix="vmatest-")
            self.__dict__["_support_tmp"] = d
            self.addCleanup(self._support_cleanup)
        return d

    def _support_cleanup(self):
        d = self.__dict__.pop("_support_tmp", None)
        if d is not None and os.path.exists(d):
            _rmtree(d)

    def tmp_path(self, *parts):
        return os.path.join(self.tmp, *parts)


_TOOL_MODULE = None


def load_tool_module():
    """Import vma-tool (no .py suffix) as module "vma_tool" for white-box tests (cached)."""
    global _TOOL_MODULE
    if _TOOL_MODULE is None:
        name = "vma_tool"
        loader = importlib.machinery.SourceFileLoader(name, TOOL)
        spec = importlib.util.spec_from_loader(name, loader)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            loader.exec_module(mod)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        _TOOL_MODULE = mod
    return _TOOL_MODULE

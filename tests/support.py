"""Shared test helpers for vma-tool (stdlib only, Python 3.9+).

    TOOL                  path of vma-tool (env VMA_TOOL, else <repo>/vma-tool)
    SCRIPT                the script itself (TOOL, except under `make coverage`: see there)
    unnamed_tool_argv()   how to start vma-tool so that its outputs are created unnamed (O_TMPFILE), with
                          LINK_SHIM where links through /proc fail (link_shim_needed()); None: impossible
    REPO, TESTS_DIR       repository root and tests directory
    run_tool(*args, stdin=None, input=None, env=None, timeout=120, cwd=None)
                          run tool_argv() + args; stdout/stderr captured as bytes.
                          env: extra variables merged over os.environ (a value of None removes
                          the variable).  stdin defaults to /dev/null unless input is given.
    assert_clean_error(testcase, result, *keywords, code=None, multiple=None)
                          exit != 0 (== code if given); stderr has exactly one line starting with
                          "vma-tool: error: " (at least one for `verify`, or multiple=True); no
                          "Traceback" in stdout/stderr; every keyword (lowercase) is a substring of
                          stderr.lower().
    TempDir               mixin: self.tmp is a fresh directory per test (created on first use,
                          removed afterwards; prefix TMP_PREFIX); self.tmp_path(*parts) joins
                          under it; put(name, data) writes a file there, read(path) reads one.
    tool_argv()           [python, -S, runnable_tool()]: how the tests start vma-tool.
    runnable_tool()       TOOL compiled once per process (a .pyc Python runs directly; see there).
    load_tool_module()    import vma-tool as a module (cached; name "vma_tool").
    cached(key, fn)       fn() computed once per process for key (keys are shared by all modules).
    fixture_vm(seed), fixture_archive(seed)
                          cached vmafixture.make_vm(seed) / its archive (write_archive, same seed).
    first_diff(a, b)      offset of the first differing byte (len of the shorter if one is a prefix).
    pid_alive(pid)        is process pid running?
    write_unpacked_dir(vm, path)
                          the directory unpack produces (and pack reads): <config>, disk-<device>.raw.
    parse_size(text)      "512M", "2G", "1.5GiB", "4096" -> bytes (benchmarks' size variables).
    ScratchCase           TestCase base: TempDir plus path() and assertOk(result).
"""

import atexit
import hashlib
import importlib.machinery
import importlib.util
import os
import py_compile
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import unittest

# vma-tool keeps a signal ignored that it inherits ignored (nohup, a background job's SIGINT).  The
# tests send it these signals and expect its own reaction, so a suite started that way (`nohup make
# test`, `make test &` in a script) must not hand the ignoring on to every vma-tool it runs.
for _signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                signal.SIGALRM):
    if signal.getsignal(_signum) == signal.SIG_IGN:
        signal.signal(_signum, signal.default_int_handler if _signum == signal.SIGINT else signal.SIG_DFL)

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)
TOOL = os.path.abspath(os.environ.get("VMA_TOOL") or os.path.join(REPO, "vma-tool"))
# The script itself, for tests that run it with another interpreter or as another user: under
# `make coverage` TOOL is a wrapper that needs Python 3.12 and the coverage directory.
SCRIPT = os.path.abspath(os.environ.get("VMA_TOOL_SCRIPT") or TOOL)

ERROR_PREFIX = "vma-tool: error: "


_RUNNABLE = []


def runnable_tool():
    """The file the tests run as vma-tool: TOOL compiled once per test process into a .pyc, which
    Python runs directly.  A script is compiled anew at every start (about 50 ms of a run's 80 ms, and
    the suite starts the tool thousands of times); the code is the same.  Tests of the script as such
    (its #! line, old interpreters, the hook run by the kernel) use TOOL.  VMA_TOOL_TEST_SCRIPT=1 makes
    every test run the script."""
    if os.environ.get("VMA_TOOL_TEST_SCRIPT"):
        return TOOL
    if not _RUNNABLE:
        directory = tempfile.mkdtemp(prefix="vma-tool-compiled-")
        atexit.register(shutil.rmtree, directory, True)
        path = os.path.join(directory, os.path.basename(TOOL) + ".pyc")
        py_compile.compile(TOOL, cfile=path, dfile=TOOL, doraise=True)
        _RUNNABLE.append(path)
    return _RUNNABLE[0]


def tool_argv():
    """How the tests start vma-tool: the current interpreter with -S (the tool is stdlib-only; skipping
    site-packages keeps the many short runs fast and proves that no third-party import is needed)."""
    return [sys.executable, "-S", runnable_tool()]


# Where links through /proc/self/fd fail (some sandboxes refuse them with EXDEV), vma-tool creates its
# outputs under temporary names, and its unnamed (O_TMPFILE) way would go untested.  LINK_SHIM, run
# before the tool's code, names such a file with linkat(fd, "", AT_EMPTY_PATH) instead (root only).
LINK_SHIM = r"""
import ctypes as _ctypes, os as _os
_libc = _ctypes.CDLL(None, use_errno=True)
_real_link = _os.link
def _link(src, dst, *, src_dir_fd=None, dst_dir_fd=None, follow_symlinks=True):
    if isinstance(src, str) and src.startswith("/proc/self/fd/") and follow_symlinks:
        if _libc.linkat(int(src.rsplit("/", 1)[1]), b"", -100 if dst_dir_fd is None else dst_dir_fd,
                        _os.fsencode(dst), 0x1000) != 0:
            number = _ctypes.get_errno()
            raise OSError(number, _os.strerror(number), dst)
        return
    return _real_link(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=follow_symlinks)
_os.link = _link
"""
_EXEC_TOOL = r"""
import sys
tool = sys.argv[1]
sys.argv = sys.argv[1:]
with open(tool, "rb") as f:
    code = compile(f.read(), tool, "exec")
exec(code, {"__name__": "__main__", "__file__": tool, "__builtins__": __builtins__})
"""
_UNNAMED = {}


def _names_unnamed(directory, shim):
    """Can an O_TMPFILE file in directory be given a name (through /proc, or as LINK_SHIM does)?"""
    import ctypes
    probe = os.path.join(directory, ".vmatest-link-probe")
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o600)
    except (OSError, AttributeError):
        return False
    try:
        if shim:
            if ctypes.CDLL(None, use_errno=True).linkat(fd, b"", -100, os.fsencode(probe), 0x1000) != 0:
                return False
        else:
            os.link("/proc/self/fd/%d" % fd, probe, follow_symlinks=True)
    except OSError:
        return False
    finally:
        os.close(fd)
    os.unlink(probe)
    return True


def link_shim_needed():
    """True where vma-tool needs LINK_SHIM to create unnamed outputs (in the temporary directory's file
    system) and the shim works; False where it needs none, or where nothing helps."""
    if "shim" not in _UNNAMED:
        directory = tempfile.mkdtemp(prefix="vmatest-probe-")
        try:
            _UNNAMED["plain"] = _names_unnamed(directory, False)
            _UNNAMED["shim"] = not _UNNAMED["plain"] and _names_unnamed(directory, True)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    return _UNNAMED["shim"]


def unnamed_tool_argv():
    """How to start vma-tool so that it creates its outputs unnamed (O_TMPFILE) in the temporary
    directory's file system: tool_argv(), or the tool under LINK_SHIM; None where it cannot."""
    if link_shim_needed():
        return [sys.executable, "-S", "-c", LINK_SHIM + _EXEC_TOOL, TOOL]
    return tool_argv() if _UNNAMED["plain"] else None


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pid_alive(pid):
    """Is process pid running (as far as this host can tell)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def error_lines(text):
    """The `vma-tool: error: ...` lines of a stderr text."""
    return [line for line in text.splitlines() if line.startswith(ERROR_PREFIX)]


def snapshot(root, contents=True):
    """{relative path: ("d", mode) | ("l", target) | ("f", mode, size, digest)} of everything under root, to
    compare a sandbox before and after a run; contents=False leaves the digests out (None), for speed.  A file
    that disappears while we look is left out."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            try:
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    out[rel] = ("l", os.readlink(path))
                elif stat.S_ISDIR(st.st_mode):
                    out[rel] = ("d", oct(st.st_mode & 0o7777))
                else:
                    digest = None
                    if contents:
                        h = hashlib.blake2b(digest_size=16)
                        with open(path, "rb") as f:
                            for chunk in iter(lambda: f.read(1 << 20), b""):
                                h.update(chunk)
                        digest = h.hexdigest()
                    out[rel] = ("f", oct(st.st_mode & 0o7777), st.st_size, digest)
            except FileNotFoundError:
                continue
    return out


def run_tool(*args, stdin=None, input=None, env=None, timeout=120, cwd=None):
    """Run vma-tool with the current interpreter; returns subprocess.CompletedProcess (bytes)."""
    cmd = tool_argv() + [a if isinstance(a, (str, bytes)) else
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
        args = [a.decode(errors="replace") if isinstance(a, bytes) else str(a) for a in (result.args or [])]
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
    """Mixin for unittest.TestCase: self.tmp is a fresh temporary directory for each test
    (made on first use, prefix TMP_PREFIX), with put() and read() of whole files."""

    TMP_PREFIX = "vmatest-"

    @property
    def tmp(self):
        d = self.__dict__.get("_support_tmp")
        if d is None:
            d = tempfile.mkdtemp(prefix=self.TMP_PREFIX)
            self.__dict__["_support_tmp"] = d
            self.addCleanup(self._support_cleanup)
        return d

    def _support_cleanup(self):
        d = self.__dict__.pop("_support_tmp", None)
        if d is not None and os.path.exists(d):
            _rmtree(d)

    def tmp_path(self, *parts):
        return os.path.join(self.tmp, *parts)

    def put(self, name, data):
        p = self.tmp_path(name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
        return p

    def read(self, p):
        with open(p, "rb") as f:
            return f.read()


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


_CACHE = {}


def cached(key, fn):
    """fn() once per process for key; the store is shared, so keys must be unique across modules."""
    if key not in _CACHE:
        _CACHE[key] = fn()
    return _CACHE[key]


RESTIC_TEST_PASSWORD = "test"


def restic_repository(path):
    """An empty restic repository at path (password RESTIC_TEST_PASSWORD): a copy of one made once
    per test process, because `restic init` spends seconds calibrating its key derivation (4 s on
    this project's 2-core test machine).  The copies share their id (so each needs a cache
    directory of its own) and their chunker polynomial (so what they store compares)."""
    def make():
        template = tempfile.mkdtemp(prefix="vma-tool-restic-")
        atexit.register(shutil.rmtree, template, True)
        repo = os.path.join(template, "repo")
        env = dict(os.environ, RESTIC_REPOSITORY=repo, RESTIC_PASSWORD=RESTIC_TEST_PASSWORD)
        for name in ("RESTIC_PASSWORD_FILE", "RESTIC_PASSWORD_COMMAND"):
            env.pop(name, None)
        subprocess.run(["restic", "--quiet", "--no-cache", "init"], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, check=True, timeout=120)
        return repo
    shutil.copytree(cached("restic-repository", make), path)


def fixture_vm(seed):
    """vmafixture.make_vm(seed), built once per seed."""
    import vmafixture as fx
    return cached(("fixture-vm", seed), lambda: fx.make_vm(seed))


def fixture_archive(seed):
    """bytes of vmafixture.write_archive(fixture_vm(seed), None, seed=seed), built once per seed."""
    import vmafixture as fx
    return cached(("fixture-archive", seed),
                  lambda: bytes(fx.write_archive(fixture_vm(seed), None, seed=seed)))


def first_diff(a, b):
    """Offset of the first byte where a and b differ (min(len(a), len(b)) if one is a prefix)."""
    n = min(len(a), len(b))
    for off in range(0, n, 4096):
        if a[off:off + 4096] != b[off:off + 4096]:
            for i in range(off, min(off + 4096, n)):
                if a[i] != b[i]:
                    return i
    return n


def write_unpacked_dir(vm, path):
    """The directory layout unpack produces (and pack reads): <config name>, disk-<device>.raw."""
    os.makedirs(path)
    for n, d in vm.configs:
        with open(os.path.join(path, n), "wb") as f:
            f.write(d)
    for (n, size), d in zip(vm.devices, vm.disks):
        with open(os.path.join(path, "disk-%s.raw" % n), "wb") as f:
            f.write(d)


def parse_size(text):
    """A size like 512M, 2G, 1.5GiB, 64k or 4096 (bytes) as an int."""
    t = text.strip().upper().replace("IB", "").rstrip("B")
    mult = 1
    for suffix, m in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        if t.endswith(suffix):
            t, mult = t[:-1], m
            break
    return int(float(t) * mult)


class ScratchCase(TempDir, unittest.TestCase):
    """Base for command tests: TempDir with path() and assertOk()."""

    def path(self, *parts):
        return self.tmp_path(*parts)

    def assertOk(self, r):
        err = r.stderr.decode("utf-8", "replace")
        self.assertNotIn("Traceback", err)
        self.assertEqual(r.returncode, 0, "exit %d, stderr:\n%s" % (r.returncode, err))

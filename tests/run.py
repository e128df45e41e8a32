#!/usr/bin/env python3
"""Test runner: python3 tests/run.py [-v] [-f] [-j N] [--coverage DIR] [pattern...]

Discovers tests/test_*.py (optionally only modules matching a pattern: a substring of the module
name or an fnmatch pattern, e.g. `fixture`, `test_verify`, `test_p*`), runs them with unittest and
prints the final line `N passed, N failed, N skipped`.  Exit status 1 if anything failed or
errored (or no module matched the given patterns), else 0.  Works from any cwd.

-j N runs N modules at a time, each in its own process (default: the number of CPUs; -j 1 runs
everything in this process); a module's output is printed whole when it finishes.

--coverage DIR (Python 3.12+) runs the tests on a wrapper of vma-tool that records the lines it
executes (tests/linecover.py, sys.monitoring), writes DIR/report.txt (the uncovered lines by
function) and prints the covered percentage and the functions with the most uncovered lines,
before the summary line.
"""

import concurrent.futures
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import time
import unittest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


class _Result(unittest.TextTestResult):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.bad = set()
        self.started = set()
        self.skipped_ids = set()

    def startTest(self, test):
        super().startTest(test)
        self.started.add(test.id())

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.skipped_ids.add(test.id())

    def _mark(self, test):
        self.bad.add(test.id())

    def addError(self, test, err):
        super().addError(test, err)
        self._mark(test)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._mark(test)

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._mark(test)

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._mark(test)


def _matches(mod, patterns):
    if not patterns:
        return True
    for p in patterns:
        p = os.path.basename(p)
        if p.endswith(".py"):
            p = p[:-3]
        if p in mod or fnmatch.fnmatch(mod, p) or fnmatch.fnmatch(mod, "test_" + p):
            return True
    return False


# Slowest first, so that the last module to finish is a short one.
SLOW_FIRST = ("test_hostile", "test_faults", "test_hook", "test_unpack", "test_recipes", "test_optimize",
              "test_safety", "test_compression", "test_pack")
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed, (\d+) skipped$", re.M)


def run_parallel(mods, jobs, flags):
    """Each module in a process of its own, `jobs` at a time; returns (passed, failed, skipped)."""
    totals = [0, 0, 0]
    mods = sorted(mods, key=lambda m: (SLOW_FIRST.index(m) if m in SLOW_FIRST else len(SLOW_FIRST), m))

    def one(mod):
        started = time.monotonic()
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "-j", "1", mod] + flags,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return mod, r, time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for mod, r, seconds in pool.map(one, mods):
            text = r.stdout.decode("utf-8", "replace")
            found = SUMMARY.findall(text)
            # only the total at the end is the plain summary line
            text = SUMMARY.sub(lambda m: "%s: %s" % (mod, m.group(0)), text)
            sys.stdout.write("== %s (%.0f s)\n%s" % (mod, seconds, text if r.returncode or "-v" in flags
                                                       else text[-300:]))
            sys.stdout.flush()
            if not found:
                totals[1] += 1                  # the module did not even report
                continue
            for i, count in enumerate(found[-1]):
                totals[i] += int(count)
    return totals


def main(argv):
    verbosity = 1
    failfast = False
    coverage_dir = None
    jobs = os.cpu_count() or 1
    patterns = []
    args = list(argv)
    while args:
        a = args.pop(0)
        if a in ("-v", "--verbose"):
            verbosity = 2
        elif a in ("-f", "--failfast"):
            failfast = True
        elif a == "-j":
            jobs = max(1, int(args.pop(0)))
        elif a == "--coverage":
            if not args:
                sys.stderr.write("run.py: --coverage needs a directory\n")
                return 2
            coverage_dir = args.pop(0)
        elif a in ("-h", "--help"):
            print(__doc__.strip())
            return 0
        else:
            patterns.append(a)
    if TESTS_DIR not in sys.path:
        sys.path.insert(0, TESTS_DIR)
    if coverage_dir is None:
        return run(patterns, jobs, verbosity, failfast)
    if not hasattr(sys, "monitoring"):
        sys.stderr.write("run.py: --coverage needs Python 3.12 or newer (sys.monitoring); this is %s\n"
                         % sys.version.split()[0])
        return 2
    import linecover
    import tempfile
    tool = os.path.abspath(os.environ.get("VMA_TOOL") or
                           os.path.join(os.path.dirname(TESTS_DIR), "vma-tool"))
    wrapper_dir = tempfile.mkdtemp(prefix="vma-linecover-")
    saved = os.environ.get("VMA_TOOL")
    os.environ["VMA_TOOL"] = linecover.make_wrapper(tool, coverage_dir, wrapper_dir)
    os.environ["VMA_TOOL_SCRIPT"] = tool    # for tests of the script as such (support.SCRIPT)
    try:
        return run(patterns, jobs, verbosity, failfast,
                   lambda: linecover.report(coverage_dir, tool)[1] + "\n")
    finally:
        os.environ.pop("VMA_TOOL_SCRIPT", None)
        if saved is None:
            os.environ.pop("VMA_TOOL", None)
        else:
            os.environ["VMA_TOOL"] = saved
        shutil.rmtree(wrapper_dir, ignore_errors=True)


def run(patterns, jobs, verbosity, failfast, coverage_report=None):
    """Run the matching modules; coverage_report() gives text to print before the summary line."""
    mods = sorted(f[:-3] for f in os.listdir(TESTS_DIR)
                  if f.startswith("test_") and f.endswith(".py"))
    mods = [m for m in mods if _matches(m, patterns)]
    if jobs > 1 and len(mods) > 1:
        flags = (["-v"] if verbosity > 1 else []) + (["-f"] if failfast else [])
        passed, failed, skipped = run_parallel(mods, jobs, flags)
        if coverage_report:
            sys.stdout.write(coverage_report())
        sys.stdout.write("%d passed, %d failed, %d skipped\n" % (passed, failed, skipped))
        return 1 if failed else 0
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    for m in mods:
        suite.addTest(loader.loadTestsFromName(m))   # an import error becomes a failing test
    runner = unittest.TextTestRunner(verbosity=verbosity, resultclass=_Result, failfast=failfast)
    result = runner.run(suite)
    sys.stderr.flush()
    skipped = len(result.skipped)
    failed = len(result.bad)      # failing tests plus class/module fixture errors
    passed = len(result.started - result.bad - result.skipped_ids)
    if patterns and not mods:
        sys.stderr.write("run.py: no test module matches %s\n" % " ".join(patterns))
        sys.stderr.flush()
    if coverage_report:
        import linecover
        linecover.flush()               # this process imported the tool too
        sys.stdout.write(coverage_report())
    sys.stdout.write("%d passed, %d failed, %d skipped\n" % (passed, failed, skipped))
    sys.stdout.flush()
    return 1 if failed or (patterns and not mods) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

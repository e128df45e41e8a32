"""The README's pipeline recipes (issue 18), run exactly as README.md shows them with the real
restic and borg against a throw-away repository: a whole stream leaves one snapshot or archive
that restores to the canonical archive; a cut stream, or vma-tool killed midway, leaves none and
the recipe exits non-zero.

Each recipe is the fenced block after a `<!-- recipe: NAME -->` line.  `vzdump 100 --stdout` is
a stand-in on PATH that writes the test's archive (FIXTURE), or its first KILL_AFTER bytes and
then kills vma-tool with SIGKILL, or pauses after PAUSE_AFTER bytes; it exits VZDUMP_STATUS (the vma-tool on PATH writes its pid first, then execs the tool
under test).  Tests skip when the backup program (or its version) is missing."""

import json
import os
import re
import shutil
import subprocess
import sys
import unittest

import support
import vmafixture as vf

CLUSTER = 65536
RECIPE = re.compile(r"^<!-- recipe: (\S+) -->\n```bash\n(.*?)^```$", re.M | re.S)
TESTED = {"restic-0.14", "restic-0.17", "borg-1.2"}

STAND_IN_VZDUMP = r"""#!/bin/sh
# stands in for `vzdump 100 --stdout`
[ "$*" = "100 --stdout" ] || { echo "vzdump stand-in: unexpected arguments: $*" >&2; exit 2; }
if [ -n "$KILL_AFTER" ]; then
    head -c "$KILL_AFTER" "$FIXTURE"
    while [ ! -s "$VMA_TOOL_PIDFILE" ]; do sleep 0.02; done
    sleep 0.3                   # vma-tool has read what there is and waits for more
    kill -KILL "$(cat "$VMA_TOOL_PIDFILE")"
elif [ -n "$PAUSE_AFTER" ]; then
    head -c "$PAUSE_AFTER" "$FIXTURE"
    sleep 1.5                   # a slow backup
    tail -c +"$((PAUSE_AFTER + 1))" "$FIXTURE"
else
    cat "$FIXTURE"
fi
exit "${VZDUMP_STATUS:-0}"
"""

VMA_TOOL_WRAPPER = r"""#!/bin/sh
echo $$ > "$VMA_TOOL_PIDFILE"
exec "$VMA_TOOL_PYTHON" -S "$VMA_TOOL_UNDER_TEST" "$@"
"""

# borg with a 1-second checkpoint interval (the recipe's runs take seconds, not 30 minutes); it
# notes which archives the recipe's `borg delete` finds, to show a checkpoint was there to delete
BORG_FAST_CHECKPOINTS = r"""#!/bin/sh
case "$1" in
create) shift; exec "$REAL_BORG" create --checkpoint-interval 1 "$@" ;;
delete) "$REAL_BORG" list --consider-checkpoints --short >> "$BORG_SEEN" ;;
esac
exec "$REAL_BORG" "$@"
"""


def readme_recipes():
    with open(os.path.join(support.REPO, "README.md"), encoding="utf-8") as handle:
        return dict(RECIPE.findall(handle.read()))


def program_version(argv):
    """(major, minor) from the first `N.N` in the program's version output."""
    out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30).stdout.decode()
    match = re.search(r"(\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def fixture():
    """A small VM, its archive as vzdump writes it, and its canonical form."""
    def make():
        vm = vf.make_vm(5801, devices=[("drive-scsi0", 40 * CLUSTER), ("drive-efidisk0", 3 * 4096)])
        # the recipes stream `optimize - -`: standard output carries no digests blob
        return bytes(vf.write_archive(vm, None, seed=3)), vf.canonical_archive_v3(vm)
    return support.cached("recipes-fixture", make)


class RecipeCase(support.ScratchCase):

    def setUp(self):
        super().setUp()
        self.bin = self.path("bin")
        os.mkdir(self.bin)
        self.script("vzdump", STAND_IN_VZDUMP)
        self.script("vma-tool", VMA_TOOL_WRAPPER)
        self.archive, self.canonical = fixture()
        self.env = dict(os.environ, PATH=self.bin + os.pathsep + os.environ.get("PATH", ""),
                        VMA_TOOL_PYTHON=sys.executable, VMA_TOOL_UNDER_TEST=support.TOOL)
        for name in ("KILL_AFTER", "PAUSE_AFTER", "VZDUMP_STATUS"):
            self.env.pop(name, None)

    def script(self, name, text):
        path = os.path.join(self.bin, name)
        with open(path, "w") as handle:
            handle.write(text)
        os.chmod(path, 0o755)

    def recipe(self, name):
        recipes = readme_recipes()
        self.assertIn(name, recipes, "README.md has no <!-- recipe: %s --> block" % name)
        return recipes[name]

    def run_recipe(self, name, stream, **stand_in):
        """Run the README's recipe with the stand-in vzdump writing stream; returns its result."""
        run = self.path("run-%d" % len(os.listdir(self.tmp)))
        os.mkdir(run)
        fixture_path = os.path.join(run, "vzdump.vma")
        with open(fixture_path, "wb") as handle:
            handle.write(stream)
        script = os.path.join(run, "recipe.sh")
        with open(script, "w") as handle:
            handle.write(self.recipe(name))
        env = dict(self.env, FIXTURE=fixture_path, VMA_TOOL_PIDFILE=os.path.join(run, "vma-tool.pid"))
        env.update((key.upper(), str(value)) for key, value in stand_in.items())
        return subprocess.run(["bash", script], env=env, cwd=run, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)

    def check_runs(self, name, count, restored):
        """Cut, killed, then whole: no snapshot after the first two (counted once: each count opens
        the repository, which costs restic half a second), one after the whole, that restores."""
        cut = self.archive[:len(self.archive) * 2 // 3]
        for label, stream, stand_in in (("cut", cut, {}), ("killed", self.archive, {"kill_after": len(cut) // 2})):
            r = self.run_recipe(name, stream, **stand_in)
            self.assertNotEqual(r.returncode, 0, "%s stream: %s" % (label, r.stderr.decode()))
        self.assertEqual(count(), 0, "a failed run left a snapshot")
        r = self.run_recipe(name, self.archive)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.assertEqual(count(), 1)
        data = restored()
        self.assertTrue(data == self.canonical, "restored stream differs from the canonical archive")
        self.assertOk(support.run_tool("verify", "-q", "-", input=data))


class ReadmeRecipesTest(unittest.TestCase):

    def test_every_recipe_is_tested(self):
        self.assertEqual(set(readme_recipes()), TESTED)


@unittest.skipIf(shutil.which("restic") is None, "restic not installed")
class ResticRecipeTest(RecipeCase):

    def setUp(self):
        super().setUp()
        self.env.update(RESTIC_REPOSITORY=self.path("repo"), RESTIC_PASSWORD=support.RESTIC_TEST_PASSWORD,
                        RESTIC_CACHE_DIR=self.path("cache"))
        for name in ("RESTIC_PASSWORD_FILE", "RESTIC_PASSWORD_COMMAND"):
            self.env.pop(name, None)
        support.restic_repository(self.path("repo"))

    def restic(self, *args):
        return subprocess.run(["restic", "--quiet"] + list(args), env=self.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, check=True, timeout=60).stdout

    def snapshots(self):
        return len(json.loads(self.restic("snapshots", "--json")) or [])

    def test_restic_0_14(self):
        self.check_runs("restic-0.14", self.snapshots, lambda: self.restic("dump", "latest", "vm-100.vma"))

    def test_restic_0_17(self):
        if program_version(["restic", "version"]) < (0, 17):
            self.skipTest("restic older than 0.17 has no --stdin-from-command")
        self.check_runs("restic-0.17", self.snapshots, lambda: self.restic("dump", "latest", "vm-100.vma"))


@unittest.skipIf(shutil.which("borg") is None, "borg not installed")
class BorgRecipeTest(RecipeCase):

    def setUp(self):
        super().setUp()
        if program_version(["borg", "--version"]) < (1, 2):
            self.skipTest("borg older than 1.2 has no --content-from-command")
        self.env.update(BORG_REPO=self.path("repo"), BORG_PASSPHRASE="test", BORG_BASE_DIR=self.path("borg"),
                        REAL_BORG=shutil.which("borg"), BORG_SEEN=self.path("borg-seen"))
        self.env.pop("BORG_PASSCOMMAND", None)
        self.borg("init", "-e", "none")

    def borg(self, *args):
        return subprocess.run([self.env["REAL_BORG"]] + list(args), env=self.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, check=True, timeout=60).stdout

    def archives(self):
        return self.borg("list", "--consider-checkpoints", "--short").decode().split()

    def test_borg_1_2(self):
        self.check_runs("borg-1.2", lambda: len(self.archives()),
                        lambda: self.borg("extract", "--stdout", "::" + self.archives()[0], "vm-100.vma"))

    def test_borg_checkpoint_of_a_failed_run_deleted(self):
        """A failed run longer than borg's checkpoint interval: its checkpoint goes.  (vzdump fails
        after the whole stream: vma-tool writes its output when the archive is complete, and borg
        checkpoints only once data has reached it.)"""
        self.script("borg", BORG_FAST_CHECKPOINTS)
        r = self.run_recipe("borg-1.2", self.archive, pause_after=len(self.archive) // 2, vzdump_status=5)
        self.assertNotEqual(r.returncode, 0)
        self.assertEqual(self.archives(), [])
        with open(self.env["BORG_SEEN"]) as handle:
            self.assertIn(".checkpoint", handle.read(), "no checkpoint was written: the test proves nothing")


if __name__ == "__main__":
    unittest.main()

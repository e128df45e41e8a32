#!/usr/bin/env python3
"""make man: write vma-tool.1 (roff) from vma-tool's own argparse parser.

    python3 packaging/make_man.py [TOOL] > vma-tool.1

The commands, their synopses and options come from build_parser(), so the
page cannot drift from --help; the sections a parser does not hold (the
vzdump hook, files, exit status, examples) are written here by hand.  The
output depends on nothing but the tool (no date, no terminal width), so a
test can check that the committed vma-tool.1 is up to date.
"""

import argparse
import importlib.machinery
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TOOL = os.path.join(os.path.dirname(HERE), "vma-tool")


def load_tool(path):
    """Import the vma-tool script (it has no .py suffix) as a module."""
    loader = importlib.machinery.SourceFileLoader("vma_tool_for_man", path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def roff(text):
    """Plain text as roff: backslashes and hyphens escaped, no line starting as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def paragraphs(text):
    """A hard-wrapped help text as roff paragraphs (its blank lines separate them)."""
    blocks = [" ".join(line.strip() for line in block.split("\n")) for block in text.strip().split("\n\n")]
    return "\n.PP\n".join(roff(block) for block in blocks)


def expand_help(parser, action):
    """An option's help with %(default)s and the like filled in, as --help shows it."""
    params = dict(vars(action), prog=parser.prog)
    return (action.help or "") % params


def option_label(action):
    """`-f, --force` or `--memory SIZE`: an option as its list entry names it."""
    label = ", ".join("\\fB%s\\fR" % roff(option) for option in action.option_strings)
    if action.nargs != 0:
        label += " \\fI%s\\fR" % roff(action.metavar or action.dest.upper())
    return label


def positional_usage(action):
    name = "\\fI%s\\fR" % roff(action.metavar or action.dest)
    if action.nargs == "+":
        return name + "..."
    if action.nargs == "?":
        return "[" + name + "]"
    return name


def shown_actions(parser):
    """The parser's options and positionals, without --help and --version."""
    return [action for action in parser._actions
            if not isinstance(action, (argparse._HelpAction, argparse._VersionAction))]


def synopsis(name, parser):
    words = ["\\fBvma\\-tool %s\\fR" % roff(name)]
    for action in shown_actions(parser):
        if action.option_strings:
            flag = "\\fB%s\\fR" % roff(action.option_strings[0])
            if action.nargs != 0:
                flag += " \\fI%s\\fR" % roff(action.metavar or action.dest.upper())
            words.append("[" + flag + "]" + ("..." if isinstance(action, argparse._AppendAction) else ""))
        else:
            words.append(positional_usage(action))
    return " ".join(words)


def commands(parser):
    """[(name, aliases, help, sub-parser)] in the parser's order."""
    subparsers = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in subparsers._choices_actions}
    found = []
    for name, sub in subparsers.choices.items():
        if name in helps:
            aliases = [alias for alias, other in subparsers.choices.items() if other is sub and alias != name]
            found.append((name, aliases, helps[name], sub))
    return found


HOOK_SECTION = r"""
.SH VZDUMP HOOK
Named as vzdump's hook script
(\fBscript: /usr/bin/vma\-tool\fR in \fI/etc/vzdump.conf\fR, or \fBscript\fR in a backup job;
\fI/usr/local/bin/vma\-tool\fR after \fBmake install\fR),
vma\-tool optimizes each finished VMA backup of a qemu guest in place
in the \fBbackup\-end\fR phase, keeping its compression, and prints one line for the task log.
vzdump calls the hook as \fIvma\-tool PHASE\fR [\fIMODE VMID\fR] in every phase
(pve\-manager's PVE/VZDump.pm, run_hook_script);
every other phase, guest type or target returns at once, silently.
.PP
Before any work the hook checks that the archive's directory can hold the copy that replaces it:
the archive's size plus 1\ % and 16\ MiB in place; with \fBcompressed = plain\fR at least the
compressed size (the uncompressed archive, commonly 1.5 to 3 times a .zst, is unknown before it is
read). Scratch space for a compressed archive defaults to the archive's directory, not /tmp; how much
it takes depends on the order the clusters arrive (little for Proxmox's own order) and is not
checked up front: a full scratch stops the run, the archive untouched, and the message names the
settings to change (\fBtmpdir\fR, \fBmemory\fR).
.PP
A failure prints one \fBvma\-tool: error:\fR line and exits non\-zero:
vzdump marks that guest's backup as failed, and the archive stays as vzdump wrote it.
vzdump runs \fBbackup\-end\fR after it has pruned older backups (PVE/VZDump.pm, exec_backup_task),
so with \fBon_error = warn\fR a failure is one \fBvma\-tool: warning:\fR line and exit status 0.
With \fBcompressed = plain\fR vzdump's notification names the .vma.zst and the size it had before
the hook ran; the hook's task\-log line gives the result.
Settings are read from \fI/etc/vma\-tool.conf\fR (see \fBFILES\fR).
"""

OUTPUTS_SECTION = r"""
.SH OUTPUTS AND SAFETY
An existing output is refused unless \fB\-\-force\fR; a directory DST means DST/<name>, like
.BR cp (1);
archive bytes go to a terminal only with \fB\-\-force\fR.
An output file is created without a name (O_TMPFILE) and takes its name only once complete and
fsync'ed, so nothing is left behind even by \fBkill \-9\fR or a power cut; on an error, Ctrl\-C,
SIGTERM or SIGHUP the original is untouched. Where the file system cannot create unnamed files (NFS,
CIFS), outputs are hidden temporary files \fI.NAME.vma\-tool\-HOST\-PID\-XXXXXX.tmp\fR, locked while
written; the next run that writes into that directory removes those whose process on this host is
gone and whose lock is free, and says so once (temporaries of other hosts are left alone).
.PP
In place, a symbolic link stays a link and its target is replaced; a file with several hard links
is refused unless \fB\-\-force\fR; the file is locked (a second run on it refuses at once);
permissions, owner and compression are kept (a user who cannot give the new file the original's
owner is refused before any work, unless \fB\-\-force\fR), the compressor
run with explicit levels so that \fBZSTD_CLEVEL\fR, \fBGZIP\fR and the like do not change the bytes.
.PP
To standard output, bytes already sent cannot be taken back: a stream that fails midway ends with a
line \fBvma\-tool: INCOMPLETE ARCHIVE\fR that every VMA reader refuses, and the exit status is
non\-zero.
\fBcat\fR writes a raw image, which has no room for such a mark: only the exit status tells.
.PP
\fBunpack\fR gives its files their names only once the archive proved valid and the devices written
complete; a failed unpack leaves nothing, and removes DIR again if it created it.
"""

FILES_SECTION = r"""
.SH FILES
.TP
.I /etc/vma\-tool.conf
Settings of the vzdump hook (\fBVMA_TOOL_CONFIG\fR names another file):
\fIname\fR = \fIvalue\fR lines, \fB#\fR starts a comment.
The installed file lists every setting with its default, commented out.
\fBVMA_TOOL_\fR\fINAME\fR environment variables override them (vzdump passes none; a wrapper script may).
.SH ENVIRONMENT
.TP
.B VMA_TOOL_DIGEST_WORKERS
How many processes hash the content digests once a run has hashed 16 MiB (default: one a core,
at most 4, none on the cores an output's compressor takes, none on one core); 0 hashes everything in the one process.
"""

EXIT_SECTION = r"""
.SH EXIT STATUS
.TP
.B 0
success
.TP
.B 1
invalid, corrupt or incomplete archive; a device or config that is not there; not a VMA archive
.TP
.B 2
usage error: bad arguments, DST is SRC, an output suffix vma\-tool cannot write,
binary output to a terminal or archive input from a terminal
.TP
.B 3
environment: an existing output (without \fB\-\-force\fR), cannot open or write a file,
disk full, missing program, a compressor that fails, unsupported input compression,
a file being optimized by another run or whose owner cannot be kept in place; Python older than 3.9
.TP
.B 130, 143, 128+N
interrupted by SIGINT, SIGTERM or another signal N (outputs cleaned up)
.TP
.B 141
the reader of standard output went away, quietly
.PP
With several files (\fBverify\fR, \fBinfo\fR, \fBoptimize \-\-in\-place\fR) the exit status is the worst of them.
With \fB\-\-json\fR each file's object has \fBresult\fR: ok, optimized, already canonical,
invalid (any defect of the archive, status 1, with \fBproblems\fR) or error (environment or usage,
status 3 or 2), its \fBexit_status\fR and, for a failure, \fBerror\fR: the line printed on stderr.
A pipeline must check vma\-tool's status (\fBset \-o pipefail\fR):
bytes already written to standard output cannot be taken back.
"""

EXAMPLES_SECTION = r"""
.SH EXAMPLES
.nf
vma\-tool verify /var/lib/vz/dump/*.vma.zst
vma\-tool optimize \-\-in\-place /var/lib/vz/dump/*.vma.zst
set \-o pipefail; zstdcat x.vma.zst | vma\-tool optimize \- \- | zstd \-\-rsyncable \-o y.vma.zst
vma\-tool unpack x.vma.zst restored/ && vma\-tool pack restored/ y.vma
set \-o pipefail; vma\-tool cat x.vma.zst drive\-scsi0 | restic backup \-\-stdin
.fi
"""

SEE_ALSO_SECTION = r"""
.SH SEE ALSO
.BR vzdump (1),
.BR qmrestore (1),
.BR zstd (1),
.BR restic (1)
.PP
FORMAT.md and README.md of the vma\-tool sources describe the archive format, the canonical form
and the benchmarks.
"""


def one_line_summary(description):
    """NAME's text: the description's first line, as man pages have it (lower case, no full stop)."""
    first = description.split("\n")[0].rstrip(".")
    return first[:1].lower() + first[1:]


def man_page(tool):
    parser = tool.build_parser()
    out = [
        '.\\" Generated by packaging/make_man.py from vma-tool\'s parser: edit those, then run make man.',
        '.TH VMA\\-TOOL 1 "" "vma\\-tool %s" "User Commands"' % roff(tool.__version__),
        ".SH NAME",
        "vma\\-tool \\- " + roff(one_line_summary(parser.description)),
        ".SH SYNOPSIS",
    ]
    found = commands(parser)
    for name, _aliases, _help, sub in found:
        out += [synopsis(name, sub), ".br"]
    out += ["\\fBvma\\-tool\\fR \\fIPHASE\\fR [\\fIMODE VMID\\fR]  (as vzdump's hook script)",
            ".br", "\\fBvma\\-tool \\-\\-version\\fR",
            ".SH DESCRIPTION", paragraphs(parser.description),
            ".SH COMMANDS"]
    for name, aliases, help, sub in found:
        title = name + (" (alias %s)" % ", ".join(aliases) if aliases else "")
        out += [".SS " + roff(title), synopsis(name, sub), ".PP", paragraphs(sub.description or help)]
        for action in shown_actions(sub):
            out += [".TP", option_label(action) if action.option_strings else positional_usage(action),
                    roff(expand_help(sub, action))]
    for section in (OUTPUTS_SECTION, HOOK_SECTION, FILES_SECTION, EXIT_SECTION, EXAMPLES_SECTION, SEE_ALSO_SECTION):
        out.append(section.strip("\n"))
    return "\n".join(out) + "\n"


def main():
    tool_path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_TOOL
    sys.stdout.write(man_page(load_tool(tool_path)))


if __name__ == "__main__":
    main()

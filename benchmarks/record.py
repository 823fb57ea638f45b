"""Run a command and record its output as a section of docs/results.md.

Figures in docs/results.md are never typed by hand: each section is the verbatim output of the
command it names, with the date and the machine, replaced whole when the command is rerun.

    python benchmarks/record.py [--note TEXT] "RWKV-6 vs the rwkv package" -- python benchmarks/rwkv6_vs_reference.py

(options go before the title: everything after the title is the command)

A command that ran on another machine (a lent GPU machine) is recorded from its saved output,
still verbatim, with that machine described by hand and the command as it ran there:

    python benchmarks/record.py --output scale.txt --machine "1x H200, ..." "Title" -- python benchmarks/scale.py --device cuda

Every section names the commit it was measured at and the code it measured, so a figure whose
code has changed since can be found and rerun:

    - commit: 3255a20c41f7 (HEAD when measured; "with uncommitted changes to ..." where the
      measured code differed from it)
    - code: benchmarks/aten_ops.py, src/spikelm/models/, ... (digest 9c1e...)

"Its code" is, by default, the files its command imports: every repository module that the
command's Python scripts (``benchmarks/x.py``, a test file) or ``spikelm`` commands import when
loaded (modules import at the top of the file, DESIGN.md), the C++ sources when the compiled CPU
kernels are among them, and the repository files named in its arguments (``configs/x.yaml``). A
folder stands for all its files when every one of them is in the set. That errs on the side of
"stale": a change anywhere in an imported module counts. ``--code a.py,src/spikelm/ops/`` declares
the set instead (narrower, or for a command that runs no Python of its own, such as a ``cat`` of
a saved log). The digest is a SHA-256 over (path, git blob id) of every file of the set as
measured, so a section is stale exactly when one of those files differs today (a change that is
reverted makes it fresh again).

    python benchmarks/record.py --check        # the sections whose measured code has changed
    make results-check                          # the same

``--backfill`` adds the two lines to sections recorded before they existed: the commit is the
newest commit that changed the section's lines (``git blame``), the code is derived from its
command as above (or ``--code`` with ``--title`` for one section), and the digest is taken over
those files as they were at that commit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results.md"
HEADER = "# Results\n\nEvery section below is the verbatim output of the command it shows, recorded by\n`benchmarks/record.py` (rerun that line to update a section; nothing here is typed by hand).\nEach names the commit it was measured at and the code it measured (`- commit:`, `- code:`);\n`make results-check` lists the sections whose code has changed since.\n"
SECTION = re.compile(r"<!-- section: (?P<title>.*?) -->\n(?P<body>.*?)<!-- end: (?P=title) -->", re.S)
CODE_LINE = re.compile(r"^- code: (?P<paths>.*) \(digest (?P<digest>[0-9a-f]+)\)$", re.M)
COMMIT_LINE = re.compile(r"^- commit: (?P<sha>[0-9a-f]{7,40})\b.*$", re.M)
COMMAND_LINE = re.compile(r"^- command: `(?P<cmd>.*)`$", re.M)
DIGEST_CHARS = 16


def machine() -> str:
    from spikelm.cli.demo import machine_info  # the same description the demo report uses

    m = machine_info()
    return (f"{m['cpu']}, {m['cpus']} CPUs, Python {m['python']}, torch {m['torch']}"
            + (f", {m['cuda']}" if m["cuda"] else ""))


def replace_section(text: str, title: str, body: str) -> str:
    start, end = f"<!-- section: {title} -->", f"<!-- end: {title} -->"
    block = f"{start}\n## {title}\n\n{body}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    return text.rstrip() + "\n\n" + block + "\n"


# ------------------------------------------------------------------------------------- git
def git(*args: str, root: Path = ROOT, input: str | None = None) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                          input=input).stdout


def head(root: Path = ROOT) -> str:
    return git("rev-parse", "HEAD", root=root).strip()


def files_now(entries: list[str], root: Path = ROOT) -> list[str]:
    """The files of ``entries`` (files or folders ending in '/') in the working tree: tracked and
    untracked, not ignored."""
    if not entries:
        return []
    out = git("ls-files", "-co", "--exclude-standard", "--", *entries, root=root).splitlines()
    listed = set(out)
    return sorted(listed | {e for e in entries if not e.endswith("/") and e not in listed})


def blobs_now(files: list[str], root: Path = ROOT) -> dict[str, str]:
    """path -> git blob id of the working-tree file ('-' where it does not exist)."""
    present = [f for f in files if (root / f).is_file()]
    ids = git("hash-object", "--stdin-paths", root=root, input="\n".join(present) + "\n").split() if present else []
    blobs = dict(zip(present, ids))
    return {f: blobs.get(f, "-") for f in files}


def blobs_at(commit: str, entries: list[str], root: Path = ROOT) -> dict[str, str]:
    """path -> blob id of the files of ``entries`` at ``commit`` ('-' for a named file absent there)."""
    out = git("ls-tree", "-r", commit, "--", *entries, root=root) if entries else ""
    blobs = {}
    for line in out.splitlines():
        meta, path = line.split("\t", 1)
        blobs[path] = meta.split()[2]
    for e in entries:
        if not e.endswith("/") and e not in blobs:
            blobs[e] = "-"
    return blobs


def digest(blobs: dict[str, str]) -> str:
    h = hashlib.sha256("".join(f"{p} {b}\n" for p, b in sorted(blobs.items())).encode())
    return h.hexdigest()[:DIGEST_CHARS]


# ---------------------------------------------------------------------- a command's code
def _words(cmd: list[str]) -> list[str]:
    """The words of a command, with ``sh -c '...'`` scripts split into theirs."""
    out = []
    for i, w in enumerate(cmd):
        if i > 0 and cmd[i - 1] == "-c" and any(os.path.basename(c) in ("sh", "bash") for c in cmd[:i]):
            out += _words(shlex.split(re.sub(r"[;&|]+", " ", w)))
        else:
            out.append(w)
    return out


def _in_repo(word: str, root: Path) -> str | None:
    try:
        p = (root / word).resolve() if not os.path.isabs(word) else Path(word).resolve()
        rel = p.relative_to(root.resolve())
    except (ValueError, OSError):
        return None
    return str(rel) if p.is_file() else None


_IMPORTS = r"""
import importlib, importlib.util, json, os, runpy, sys, types
root, scripts, modules = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
if "spikelm" not in modules and "spikelm.cli" not in modules:
    # spikelm/__init__.py is the facade over every floor and nothing below imports it: a script that
    # reaches in for spikelm.models.rwkv6 depends on that module and its imports, not on the facade's
    spec = importlib.util.find_spec("spikelm")
    if spec is not None:
        pkg = types.ModuleType("spikelm")
        pkg.__path__, pkg.__spec__ = list(spec.submodule_search_locations), spec
        sys.modules["spikelm"] = pkg
for s in scripts:
    sys.path[:0] = [os.path.dirname(s), os.path.join(root, "tests")]
    try:
        runpy.run_path(s, run_name="__record_imports__")
    except BaseException as e:
        print(f"record.py: importing {s}: {type(e).__name__}: {e}", file=sys.stderr)
for m in dict.fromkeys(modules):
    try:
        importlib.import_module(m)
    except BaseException as e:
        print(f"record.py: importing {m}: {type(e).__name__}: {e}", file=sys.stderr)
files = {os.path.realpath(getattr(m, "__file__", None) or "") for m in list(sys.modules.values())}
print(json.dumps(sorted(f for f in files if f.startswith(os.path.realpath(root) + os.sep))))
"""


def command_code(cmd: list[str], root: Path = ROOT, python: str = sys.executable) -> list[str]:
    """The repository files a command's code consists of (see the module docstring)."""
    words = _words(cmd)
    named = [r for w in words if (r := _in_repo(w, root))]
    if named:  # not the ignored ones (runs/, .venv/): the repository's own files
        named = git("ls-files", "-co", "--exclude-standard", "--", *named, root=root).splitlines()
    scripts = [str(root / r) for r in named if r.endswith(".py")]
    modules = ["spikelm.cli"] if any(os.path.basename(w) == "spikelm" for w in words) else []
    for script in scripts:  # and what a script imports inside its functions (after setting threads, say)
        modules += re.findall(r"^\s*(?:from|import)\s+(spikelm[\w.]*)", Path(script).read_text(), flags=re.M)
    files = set(named)
    if scripts or modules:
        proc = subprocess.run([python, "-c", _IMPORTS, str(root), json.dumps(scripts), json.dumps(modules)],
                              capture_output=True, text=True, cwd=root, env=dict(os.environ, OMP_NUM_THREADS="1"))
        if proc.returncode != 0:
            raise RuntimeError(f"could not list the imports of {shlex.join(cmd)}: {proc.stderr[-2000:]}")
        real = root.resolve()
        imported = [str(Path(f).relative_to(real)) for f in json.loads(proc.stdout.splitlines()[-1])]
        # the repository's own files: not the ignored ones (.venv/), not a module's made-up __file__
        files |= set(git("ls-files", "-co", "--exclude-standard", "--", *imported, root=root).splitlines()) if imported else set()
    if "src/spikelm/ops/kernels.py" in files:
        files |= set(files_now(["src/spikelm/ops/csrc/"], root))
    return sorted(files)


def compress(files: list[str], root: Path = ROOT) -> list[str]:
    """Folders whose every file is in ``files`` stand for them ('src/spikelm/ops/'), largest first."""
    chosen, left = [], set(files)
    folders = sorted({str(Path(f).parent) for f in files if "/" in f}, key=lambda d: d.count("/"))
    # every ancestor folder too, so a whole package collapses to one entry
    for f in list(folders):
        p = Path(f)
        folders += [str(a) for a in p.parents if str(a) != "."]
    for d in sorted(set(folders), key=lambda d: (d.count("/"), d)):
        inside = files_now([d + "/"], root)
        if inside and all(f in left for f in inside):
            chosen.append(d + "/")
            left -= set(inside)
    return sorted(chosen + sorted(left))


def code_line(entries: list[str], blobs: dict[str, str]) -> str:
    return f"- code: {', '.join(entries)} (digest {digest(blobs)})"


def commit_line(entries: list[str], root: Path = ROOT) -> str:
    """HEAD, and the files of the code that differ from it in the working tree."""
    files = files_now(entries, root)
    dirty = sorted(set(git("status", "--porcelain", "--", *files, root=root).splitlines()) if files else [])
    sha = head(root)[:12]
    if not dirty:
        return f"- commit: {sha}"
    names = [d[3:] for d in dirty]
    return f"- commit: {sha} with uncommitted changes to {', '.join(names[:8])}" + (" ..." if len(names) > 8 else "")


# ----------------------------------------------------------------------------- the check
def sections(text: str) -> list[dict]:
    out = []
    for m in SECTION.finditer(text):
        body = m["body"]
        c, k, cmd = COMMIT_LINE.search(body), CODE_LINE.search(body), COMMAND_LINE.search(body)
        out.append({"title": m["title"], "body": body, "span": m.span("body"),
                    "commit": c["sha"] if c else None,
                    "code": [p.strip() for p in k["paths"].split(",") if p.strip()] if k else None,
                    "digest": k["digest"] if k else None, "command": cmd["cmd"] if cmd else None})
    return out


def stale_sections(text: str, root: Path = ROOT) -> list[dict]:
    """Each section whose code today differs from what it measured (or that names no commit and
    code): title, commit, the files changed since that commit, its command."""
    out = []
    for s in sections(text):
        if s["commit"] is None or s["code"] is None:
            out.append({**s, "why": "names no commit and code (recorded before record.py wrote them; run --backfill)",
                        "changed": []})
            continue
        files = files_now(s["code"], root)
        now = blobs_now(files, root)
        if digest(now) == s["digest"]:
            continue
        try:
            then = blobs_at(s["commit"], s["code"], root)
        except subprocess.CalledProcessError:  # a commit this clone does not have
            then = {}
        changed = sorted(f for f in set(now) | set(then) if now.get(f, "-") != then.get(f, "-"))
        out.append({**s, "why": f"its code changed since {s['commit']}", "changed": changed})
    return out


def check(root: Path = ROOT, results: Path = RESULTS) -> int:
    text = results.read_text()
    stale, total = stale_sections(text, root), len(sections(text))
    print(f"{total - len(stale)} of {total} sections of {results.relative_to(root)} measured today's code")
    for s in stale:
        print(f"\n- {s['title']}: {s['why']}")
        if s["changed"]:
            shown = ", ".join(s["changed"][:12]) + (f" and {len(s['changed']) - 12} more" if len(s["changed"]) > 12 else "")
            print(f"  changed: {shown}")
        if s["command"]:
            print(f"  command: {s['command']}")
    return 0


# -------------------------------------------------------------------------------- backfill
def _section_commit(title: str, root: Path, results: Path) -> str:
    """The newest commit that changed a line of the section (its current text)."""
    lines = results.read_text().splitlines()
    start = lines.index(f"<!-- section: {title} -->") + 1
    end = lines.index(f"<!-- end: {title} -->") + 1
    out = git("blame", "--porcelain", "-L", f"{start},{end}", "--", str(results.relative_to(root)), root=root)
    times: dict[str, int] = {}
    sha = None
    for line in out.splitlines():
        if re.match(r"^[0-9a-f]{40} ", line):
            sha = line.split()[0]
        elif line.startswith("committer-time ") and sha:
            times[sha] = int(line.split()[1])
    if not times or "0" * 40 in times:
        raise RuntimeError(f"section {title!r} has uncommitted lines: commit docs/results.md first")
    return max(times, key=times.get)


def _insert_lines(body: str, lines: list[str]) -> str:
    """After the '- command:' line, else before the first metadata line, else after the heading."""
    rows = body.split("\n")
    at = next((i + 1 for i, r in enumerate(rows) if r.startswith("- command: ")), None)
    if at is None:
        at = next((i for i, r in enumerate(rows) if r.startswith("- ")), None)
        if at is None:
            at = next(i + 1 for i, r in enumerate(rows) if r.startswith("## "))
            lines = [""] + lines
    return "\n".join(rows[:at] + lines + rows[at:])


def backfill(root: Path = ROOT, results: Path = RESULTS, title: str | None = None, code: list[str] | None = None) -> int:
    text = results.read_text()
    missing = []
    for s in sections(text):
        if s["commit"] is not None or (title is not None and s["title"] != title):
            continue
        sha = _section_commit(s["title"], root, results)
        entries = code
        if entries is None:
            if s["command"] is None:
                missing.append(s["title"])
                continue
            entries = compress(command_code(shlex.split(s["command"]), root), root)
        if not entries:
            missing.append(s["title"])
            continue
        lines = [f"- commit: {sha[:12]} (the commit that recorded this section; backfilled)",
                 code_line(entries, blobs_at(sha, entries, root))]
        text = text.replace(s["body"], _insert_lines(s["body"], lines), 1)
        print(f"{s['title']}: {sha[:12]}, {len(entries)} code entries")
    tmp = results.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, results)
    for t in missing:
        print(f"{t}: no command whose code can be derived; give it with --backfill --title ... --code ...",
              file=sys.stderr)
    return 1 if missing else 0


# ------------------------------------------------------------------------------------ main
def _paths(arg: str) -> list[str]:
    entries = [p.strip() for p in arg.split(",") if p.strip()]
    for e in entries:
        if not (ROOT / e).exists():
            raise SystemExit(f"--code {e}: no such file or folder in {ROOT}")
    return [e.rstrip("/") + "/" if (ROOT / e).is_dir() else e for e in entries]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("title", nargs="?", help="section title in docs/results.md")
    ap.add_argument("--note", default="", help="one line of context printed above the output")
    ap.add_argument("--output", default="", help="record this file, the saved output of the command run on another "
                    "machine, instead of running the command here (needs --machine)")
    ap.add_argument("--machine", default="", help="with --output: the machine the command ran on")
    ap.add_argument("--code", default="", help="comma-separated files and folders the figures measure (default: the "
                    "files the command imports, see above)")
    ap.add_argument("--check", action="store_true", help="list the sections whose measured code has changed, and exit")
    ap.add_argument("--backfill", action="store_true", help="add the commit and code lines to sections without them")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = ap.parse_args()
    if args.check:
        return check()
    if args.backfill:
        return backfill(title=args.title, code=_paths(args.code) if args.code else None)
    if not args.title:
        ap.error("give the section title")
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("give the command after --")
    if bool(args.output) != bool(args.machine):
        ap.error("--output and --machine go together")
    entries = _paths(args.code) if args.code else compress(command_code(cmd))
    if not entries:
        ap.error("no repository code found in the command: name what it measures with --code")
    code = code_line(entries, blobs_now(files_now(entries)))  # before the run: the code it measures
    commit = commit_line(entries)
    t0 = dt.datetime.now()
    if args.output:
        out, where, when = Path(args.output).read_text().rstrip(), args.machine, "run on that machine, output saved there"
        t0 = dt.datetime.fromtimestamp(Path(args.output).stat().st_mtime)
    else:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = (dt.datetime.now() - t0).total_seconds()
        out, where, when = proc.stdout.rstrip(), machine(), f"wall time {seconds:.0f} s"
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr[-4000:])
        if proc.returncode != 0:
            print(f"command failed with exit code {proc.returncode}; results.md left unchanged", file=sys.stderr)
            return proc.returncode
    body = (
        f"- date: {t0:%Y-%m-%d %H:%M} UTC, {when}\n- machine: {where}\n"
        f"- command: `{shlex.join(cmd)}`\n{commit}\n{code}\n" + (f"- note: {args.note}\n" if args.note else "")
        + f"\n```\n{out}\n```\n"
    )
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text(replace_section(text, args.title, body))
    os.replace(tmp, RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run a command and record its output as a section of docs/results.md.

Figures in docs/results.md are never typed by hand: each section is the verbatim output of the
command it names, with the date and the machine, replaced whole when the command is rerun.

    python benchmarks/record.py [--note TEXT] "RWKV-6 vs the rwkv package" -- python benchmarks/rwkv6_vs_reference.py

(options go before the title: everything after the title is the command)

A command that ran on another machine (a lent GPU machine) is recorded from its saved output,
still verbatim, with that machine described by hand and the command as it ran there:

    python benchmarks/record.py --output scale.txt --machine "1x H200, ..." "Title" -- python benchmarks/scale.py --device cuda
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results.md"
HEADER = "# Results\n\nEvery section below is the verbatim output of the command it shows, recorded by\n`benchmarks/record.py` (rerun that line to update a section; nothing here is typed by hand).\n"


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("title", help="section title in docs/results.md")
    ap.add_argument("--note", default="", help="one line of context printed above the output")
    ap.add_argument("--output", default="", help="record this file, the saved output of the command run on another "
                    "machine, instead of running the command here (needs --machine)")
    ap.add_argument("--machine", default="", help="with --output: the machine the command ran on")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("give the command after --")
    if bool(args.output) != bool(args.machine):
        ap.error("--output and --machine go together")
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
        f"- command: `{shlex.join(cmd)}`\n" + (f"- note: {args.note}\n" if args.note else "") + f"\n```\n{out}\n```\n"
    )
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text(replace_section(text, args.title, body))
    os.replace(tmp, RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())

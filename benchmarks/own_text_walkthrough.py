"""The README's "Your own text" walkthrough, as a new user runs it: a fresh clone, `make setup`, then
every command of that README block on a text file that is not the Brown corpus, from a folder
outside the clone, with an empty spikelm cache and no network.

    python benchmarks/own_text_walkthrough.py --licence-text        # the machine's licence texts, 2.2 MB
    python benchmarks/own_text_walkthrough.py my_text.txt

Steps: `git clone` of this repository's HEAD into a temporary folder; `make setup` there (the
one step that may use the network: the package index); then each README command, its leading
`spikelm` replaced by the clone's `.venv/bin/spikelm`, in a work folder holding only
`my_text.txt`, with `SPIKELM_CACHE` an empty folder, inside a network namespace of its own
(`unshare -rn`: no interface but a loopback that is down) where the machine allows one. Prints
the text used, each command with its wall time and exit code, and the end of each command's
output. Exits 1 if a command failed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_BYTES = 2_200_000


def licence_text(dest: Path, target: int = TARGET_BYTES) -> Path:
    """The first ``target`` bytes (cut after a line) of this machine's licence texts
    (/usr/share/common-licenses, then every package's copyright file, in sorted order, each once)."""
    sources = sorted(p for p in Path("/usr/share/common-licenses").glob("*") if p.is_file() and not p.is_symlink())
    sources += sorted(Path("/usr/share/doc").glob("*/copyright"))
    seen, parts, size = set(), [], 0
    for p in sources:
        try:
            text = p.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        parts.append(text)
        size += len(text.encode())
        if size >= target:
            break
    if size < target // 2:
        raise SystemExit(f"only {size:,} bytes of licence texts on this machine; pass a text file instead")
    blob = "".join(parts).encode("utf-8")
    if len(blob) > target:  # the first ``target`` bytes, cut after a line
        blob = blob[: blob.rfind(b"\n", 0, target) + 1]
    dest.write_bytes(blob)
    return dest


def readme_own_text_commands() -> list[str]:
    """The command lines of the README's "Your own text" block."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Your own text", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S)
    assert block, "README.md: no bash block under 'Your own text'"
    return [ln.split("  #")[0].strip() for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]


def can_cut_network() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0


def run(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    return rc, time.perf_counter() - t0


def tail(log: Path, n: int) -> list[str]:
    """The last ``n`` lines of a command's output, without progress-bar redraws."""
    lines = [ln.split("\r")[-1].rstrip() for ln in log.read_text(errors="replace").splitlines()]
    return [ln for ln in lines if ln.strip() and not re.search(r"\d+%\|", ln)][-n:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("text", nargs="?", help="the text file to use (not the Brown corpus)")
    ap.add_argument("--licence-text", action="store_true", help="use ~2.2 MB of this machine's licence texts")
    ap.add_argument("--keep", default="", help="keep the clone, the work folder and the logs here")
    args = ap.parse_args()
    if bool(args.text) == args.licence_text:
        ap.error("give a text file or --licence-text")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="spikelm-walkthrough-"))
    root.mkdir(parents=True, exist_ok=True)
    clone, work, cache, logs = root / "spikelm", root / "work", root / "cache", root / "logs"
    for d in (clone, work, cache):
        shutil.rmtree(d, ignore_errors=True)
    work.mkdir()
    cache.mkdir()
    logs.mkdir(exist_ok=True)
    text = work / "my_text.txt"
    if args.licence_text:
        licence_text(text)
        origin = "licence texts of this machine (/usr/share/common-licenses, /usr/share/doc/*/copyright)"
    else:
        shutil.copy(args.text, text)
        origin = args.text
    data = text.read_bytes()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    n_lines = data.count(b"\n")
    print(f"text: {origin}: {len(data):,} bytes, {n_lines:,} lines, sha256 {hashlib.sha256(data).hexdigest()[:16]}")
    print(f"clone: git clone of {REPO.name} at {commit} (HEAD); work folder outside the clone; SPIKELM_CACHE empty")
    offline = can_cut_network()
    print(f"network after set-up: {'none (unshare -rn: own network namespace)' if offline else 'NOT cut (unshare refused)'}")
    print()

    rows = []
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    rc, secs = run(["git", "clone", "--quiet", "--no-local", str(REPO), str(clone)], root, env, logs / "00-clone.log")
    rows.append(("git clone", rc, secs))
    if rc == 0:
        rc, secs = run(["make", "setup"], clone, env, logs / "01-setup.log")
        rows.append(("make setup", rc, secs))
    cmd_env = dict(env, SPIKELM_CACHE=str(cache), PATH=f"{clone / '.venv' / 'bin'}:{env.get('PATH', '')}",
                   HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    outputs = []
    if rc == 0:
        for i, line in enumerate(readme_own_text_commands(), start=2):
            argv = shlex.split(line)
            argv[0] = str(clone / ".venv" / "bin" / argv[0])
            cmd = ["unshare", "-rn", *argv] if offline else argv
            log = logs / f"{i:02d}-{shlex.split(line)[1]}.log"
            rc, secs = run(cmd, work, cmd_env, log)
            rows.append((line, rc, secs))
            outputs.append((line, log))
            if rc != 0:
                break
    print("| step | exit | wall time (s) |")
    print("| :--- | ---: | ---: |")
    for line, rc, secs in rows:
        print(f"| `{line}` | {rc} | {secs:.1f} |")
    print()
    for line, log in outputs:
        print(f"$ {line}")
        for ln in tail(log, 14 if " sweep " in f" {line} " else 6):
            print(f"  {ln[:160]}")
        print()
    failed = [line for line, rc, _ in rows if rc != 0]
    if failed:
        print(f"FAILED: {failed[0]} (logs in {logs})")
        return 1
    print(f"all {len(rows)} steps done; logs in {logs}" if args.keep else f"all {len(rows)} steps done")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

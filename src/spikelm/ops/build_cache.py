"""A cache of builds, one folder per key, safe when several processes and environments share it.

A build's folder is named by a digest of everything the build depends on (:class:`BuildKey`), so
two environments (two virtualenvs, two torch versions, a fresh clone beside a working one) keep
their own builds side by side, and switching between them never rebuilds. Three promises:

* **Built once.** A process that finds no build takes the key's lock and builds; another process
  needing the same key meanwhile waits for it (up to a timeout) and then uses its build. The lock
  is ``fcntl.flock`` on ``<name>.lock``, which the kernel releases when its holder dies however
  it dies, so a killed build never leaves a lock that others wait on for ever (torch's extension
  builder's own lock file does: it is kept inside the build's private folder here).
* **Never half-built.** A build runs in a temporary folder beside its final place, writes its
  record (``build.json``) last, and is renamed into place in one step: a folder with the final
  name is a complete build. What an interrupted build leaves (its temporary folder) is removed by
  the next process that takes the lock.
* **Said when it happens.** :func:`ensure_built` returns how long the build took, or None when it
  found one; the caller logs accordingly.

No module here knows what is built: :mod:`.kernels` gives the key and the build function.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..io import atomic_write_json, temp_sibling

__all__ = ["BuildKey", "RECORD", "ensure_built", "list_builds", "clear_builds", "is_built"]

log = logging.getLogger(__name__)

RECORD = "build.json"  # written last inside a build: its presence marks a complete build
_TMP = "build"  # temp_sibling's suffix for a build in progress: .<dirname>.build-<pid>-<tag>


@dataclass(frozen=True)
class BuildKey:
    """What a build depends on: ``name`` (the library) and ``parts`` (versions, compiler, flags,
    instruction sets, a digest of the sources...). Its folder is ``<name>-<tag>-<digest>``, ``tag``
    a readable hint (e.g. ``py311-torch2.13.0``); only the digest decides."""

    name: str
    parts: Mapping[str, str]
    tag: str = ""

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(dict(self.parts), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def dirname(self) -> str:
        return "-".join(x for x in (self.name, self.tag, self.digest) if x)


def is_built(root: Path, key: BuildKey) -> bool:
    return (root / key.dirname / RECORD).is_file()


@contextlib.contextmanager
def _locked(path: Path, wait_s: float, what: str) -> Iterator[None]:
    """Hold ``flock`` on ``path``, waiting up to ``wait_s`` seconds for another holder (TimeoutError
    after). The holder's pid is written into the file, for the message of those who wait."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline, said = time.monotonic() + wait_s, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if not said and wait_s > 0:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                log.info("another process (pid %s) is building %s; waiting for it (up to %.0f s)", holder, what, wait_s)
                said = True
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {wait_s:.0f} s for another process building {what} (lock {path})")
            time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _leftovers(root: Path, dirname: str) -> list[Path]:
    """The temporary folders of builds of ``dirname`` (in progress, or interrupted: call with the lock
    held), and of removals a killed ``clear`` left."""
    return [p for suffix in (_TMP, "clear") for p in root.glob(f".{dirname}.{suffix}-*") if p.is_dir()]


def ensure_built(root: Path, key: BuildKey, build: Callable[[Path], None], *, wait_s: float = 900.0,
                 what: str = "") -> tuple[Path, float | None]:
    """The folder of ``key``'s build under ``root``, built now by ``build(folder)`` if there is none.

    Returns (the folder, the seconds the build took, or None where a finished build was found,
    one of another process included). ``build`` fills the empty folder it is given or raises;
    its exception propagates and leaves nothing behind. TimeoutError where another process's
    build of the same key outlasts ``wait_s``."""
    final = root / key.dirname
    if is_built(root, key):
        return final, None
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{key.dirname}.lock", wait_s, what or key.name):
        if is_built(root, key):  # built by the process we waited for
            return final, None
        for old in _leftovers(root, key.dirname) + ([final] if final.exists() else []):
            log.info("removing an unfinished build of %s (%s)", what or key.name, old)
            shutil.rmtree(old, ignore_errors=True)
        tmp = temp_sibling(final, _TMP)
        tmp.mkdir()
        t0 = time.perf_counter()
        try:
            build(tmp)
            seconds = time.perf_counter() - t0
            atomic_write_json(tmp / RECORD, {"name": key.name, "digest": key.digest, "key": dict(key.parts),
                                             "seconds": round(seconds, 1), "pid": os.getpid(),
                                             "built": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            try:
                os.replace(tmp, final)
            except OSError:
                if not is_built(root, key):  # else: built meanwhile under a lock file a `clear` replaced
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final, seconds


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def list_builds(root: Path) -> list[dict[str, Any]]:
    """Every finished build under ``root``: its record plus ``path`` and ``bytes``; and every
    unfinished one (``"unfinished": True``: a build in progress, or one a killed process left)."""
    out: list[dict[str, Any]] = []
    if not root.is_dir():
        return out
    for p in sorted(root.iterdir()):
        if not p.is_dir():
            continue
        rec = p / RECORD
        if rec.is_file():
            try:
                info = json.loads(rec.read_text())
            except (OSError, ValueError):
                info = {}
            out.append({**info, "path": str(p), "bytes": _size(p)})
        elif f".{_TMP}-" in p.name or not p.name.startswith("."):
            out.append({"path": str(p), "bytes": _size(p), "unfinished": True})
    return out


def clear_builds(root: Path, name: str) -> tuple[list[Path], list[Path]]:
    """Remove the builds of ``name`` under ``root`` (finished, and unfinished ones no process is
    building), each under its lock. Returns (removed, skipped: a build in progress)."""
    removed: list[Path] = []
    skipped: list[Path] = []
    if not root.is_dir():
        return removed, skipped
    dirnames = {p.name.removesuffix(".lock") for p in root.glob(f"{name}-*.lock")}
    dirnames |= {p.name for p in root.glob(f"{name}-*") if p.is_dir()}
    for dirname in sorted(dirnames):
        targets = ([root / dirname] if (root / dirname).exists() else [])
        try:
            with _locked(root / f"{dirname}.lock", 0.0, dirname):
                targets += _leftovers(root, dirname)
                for t in targets:
                    aside = temp_sibling(t, "clear")  # renamed first: no half-removed build keeps its name
                    os.replace(t, aside)
                    shutil.rmtree(aside, ignore_errors=True)
                    removed.append(t)
                (root / f"{dirname}.lock").unlink(missing_ok=True)
        except TimeoutError:
            skipped.append(root / dirname)
    return removed, skipped

"""Writing files so that a crash never leaves a half-written one: THE atomic writer.

Every file spikelm writes goes through :func:`atomic_write` (a temporary file in the same folder,
flushed and fsynced, then ``os.replace``): a reader sees the old file or the new one, never a
mix. Whole folders (a saved model, a prepared corpus, a training checkpoint) are built in a
temporary sibling and published with :func:`publish_dir`, which never deletes a folder that
spikelm did not write (see :func:`claim_dir`).

Folders are created with the process umask (``os.makedirs`` mode 0o777), never the private
0o700 that ``tempfile.mkdtemp`` gives, so shared caches and run folders stay readable.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from .errors import SpikelmError

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json", "temp_sibling", "publish_dir",
           "claim_dir", "check_file_target", "honour_umask", "OutputExistsError", "MARKER_FILES"]


class OutputExistsError(SpikelmError):
    """An output path exists and holds files that spikelm did not write (or ``--overwrite`` was not given)."""


def _tag() -> str:
    return f"{os.getpid()}-{secrets.token_hex(3)}"


def temp_sibling(path: str | os.PathLike, suffix: str = "tmp") -> Path:
    """A fresh name next to ``path`` (same file system, so the final rename is atomic)."""
    p = Path(path)
    return p.with_name(f".{p.name}.{suffix}-{_tag()}")


def atomic_write(path: str | os.PathLike, data: bytes | str, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling and ``os.replace``."""
    p = Path(path)
    check_file_target(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(p)
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


def check_file_target(path: str | os.PathLike, what: str = "output file") -> Path:
    """Check that a file can be written at ``path``: it is not a folder, and no parent is a file."""
    p = Path(path)
    if p.is_dir():
        raise OutputExistsError(f"{what} {p} is a folder; give a file path (e.g. {p / 'results.json'})")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputExistsError(f"{what} {p}: {parent} is a file, not a folder; choose another path")
            break
    return p


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, text)


def atomic_write_json(path: str | os.PathLike, obj: Any, default: Any = None) -> Path:
    return atomic_write(path, json.dumps(obj, indent=2, default=default) + "\n")


def honour_umask(path: str | os.PathLike) -> Path:
    """Give a file written by another library (safetensors writes 0o600) the mode ``open`` would: 0o666 & ~umask."""
    p = Path(path)
    os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~_umask())
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# A folder spikelm wrote holds at least one of these; anything else in it is the user's.
MARKER_FILES = ("config.json", "model.safetensors", "meta.json", "report.md", "results.json",
                "trainer_state.json", "log.csv", "args.json", "energy.json")


def claim_dir(out: str | os.PathLike, *, overwrite: bool, what: str = "output folder",
              inputs: tuple[str | os.PathLike, ...] = (), own_files: tuple[str, ...] = ()) -> Path:
    """Check that spikelm may write the folder ``out``; return it as a Path.

    Refuses (``OutputExistsError``, the CLI exits 2) when ``out`` is one of ``inputs`` (or holds one),
    when it is a file, or when it exists, is not empty and ``overwrite`` is False. With
    ``overwrite``, a non-empty folder is accepted only if every entry in it is one of spikelm's own
    files (``own_files`` or :data:`MARKER_FILES`): a user's folder is never replaced.
    """
    p = Path(out)
    rp = p.resolve()
    for src in inputs:
        s = Path(src).resolve()
        if rp == s or rp in s.parents:
            raise OutputExistsError(f"{what} {p} is the input {src}; choose another --out (spikelm never writes over its input)")
    if p.exists() and not p.is_dir():
        raise OutputExistsError(f"{what} {p} exists and is a file; choose another path")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputExistsError(f"{what} {p}: {parent} is a file, not a folder; choose another path")
            break
    if p.is_dir() and any(p.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"{what} {p} exists and is not empty; choose another path or pass --overwrite "
                                    "(which replaces only spikelm's own files there)")
        own = set(MARKER_FILES) | set(own_files)
        foreign = sorted(e.name for e in p.iterdir() if e.name not in own and not e.name.startswith("."))
        if foreign:
            raise OutputExistsError(f"{what} {p} holds files spikelm did not write ({', '.join(foreign[:5])}); "
                                    "--overwrite replaces only spikelm's own files: choose another path")
    return p


def publish_dir(tmp: Path, out: Path) -> Path:
    """Move the finished folder ``tmp`` to ``out`` in one step: a rename, or a swap with the old folder.

    ``out`` must have been checked with :func:`claim_dir`. An existing ``out`` is renamed aside and
    ``tmp`` renamed into its place, so a reader (or a crash) sees the old folder or the new one,
    never new weights beside an old config. Entries of the old folder that ``tmp`` does not hold
    (spikelm's own files from an earlier run, dot files) are carried over; then the old folder goes.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        os.replace(tmp, out)
        return out
    old = temp_sibling(out, "old")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)  # put the old folder back as it was
        raise
    for entry in old.iterdir():
        if not (out / entry.name).exists():
            os.replace(entry, out / entry.name)
    shutil.rmtree(old, ignore_errors=True)
    return out


def make_temp_dir(near: Path) -> Path:
    """An empty temporary folder beside ``near`` (same file system; umask permissions)."""
    near.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(near)
    tmp.mkdir()
    return tmp

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

import errno
import fnmatch
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

from .errors import SpikelmError

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json", "temp_sibling", "publish_dir",
           "claim_dir", "claim_files", "check_file_target", "check_writable", "foreign_entries", "remove_owned",
           "describe_os_error", "user_path", "honour_umask", "OutputExistsError", "MARKER_FILES", "RUN_RECORD"]


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
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.filename is None:  # a write into an open file (a full disk) names no path: name the target
            raise OSError(e.errno, e.strerror, str(p)) from None
        raise
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

# The record a command that reuses its folder (train, finetune, the demo) leaves in it: which
# command owns the folder. A file named like one of spikelm's own (log.csv) is spikelm's only
# where this record says so; elsewhere it is the user's.
RUN_RECORD = ".spikelm-run.json"


def _visible(folder: Path) -> list[Path]:
    """The entries of ``folder`` that are not dot files (spikelm's dot files are its lock, its
    temporaries and its record; a user's dot files are never written over: their names differ)."""
    return sorted(e for e in folder.iterdir() if not e.name.startswith("."))


def foreign_entries(folder: str | os.PathLike, owns: tuple[str, ...] | list[str]) -> list[str]:
    """The entries below ``folder`` (paths relative to it) that none of ``owns`` covers.

    ``owns`` lists what a command writes, relative to its folder: a name or glob (``log.csv``,
    ``*-energy.png``, ``final/model.safetensors``), or a folder with a trailing slash
    (``checkpoints/``) whose whole content is the command's. Dot files are skipped.
    """
    root = Path(folder)
    subtrees = {o.rstrip("/") for o in owns if o.endswith("/")}
    files = [o for o in owns if not o.endswith("/")]
    out: list[str] = []

    def walk(d: Path, rel: str) -> None:
        for e in _visible(d):
            r = rel + e.name
            if r in subtrees and e.is_dir():
                continue
            if e.is_dir() and not e.is_symlink() and any(o.startswith(r + "/") for o in owns):
                walk(e, r + "/")
            elif e.is_dir() or not any(fnmatch.fnmatchcase(r, o) for o in files):
                out.append(r + ("/" if e.is_dir() else ""))

    walk(root, "")
    return out


def check_writable(path: str | os.PathLike, what: str = "output") -> None:
    """Refuse up front (before any work) a target on a read-only file system or in a folder this
    process may not write: the nearest existing folder of ``path`` decides."""
    p = Path(path).absolute()
    near = next((q for q in (p, *p.parents) if q.exists()), None)
    if near is None:
        return
    if not near.is_dir():
        near = near.parent
    try:
        read_only = bool(os.statvfs(near).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        raise OutputExistsError(f"{what} {path}: {near} is on a read-only file system; choose a writable path")
    if not os.access(near, os.W_OK | os.X_OK):
        raise OutputExistsError(f"{what} {path}: permission denied ({near} is not writable by this user); "
                                "choose another path or change its permissions")


def claim_dir(out: str | os.PathLike, *, overwrite: bool, what: str = "output folder",
              inputs: tuple[str | os.PathLike, ...] = (), owns: tuple[str, ...] | list[str] = MARKER_FILES,
              reuse: str | None = None, legacy: tuple[str, ...] = ()) -> Path:
    """THE output rule: check that spikelm may write the folder ``out`` (before any work); return it.

    ``owns`` lists the files the command will write there (see :func:`foreign_entries`). spikelm
    writes into a folder only when it

    * does not exist or is empty;
    * holds only spikelm's own files from an earlier run of the same command ``reuse`` (train,
      finetune and the demo resume or reuse their folders): its :data:`RUN_RECORD` names that
      command (``legacy``: files whose presence marks such a run from before the record existed);
    * or ``overwrite`` (``--overwrite``) is given, and then only when nothing in it is the user's.

    An entry that ``owns`` does not cover is the user's: the folder is refused with or without
    ``overwrite``. Also refused: ``out`` being one of ``inputs`` (or inside one), a file, below a
    file, or on a read-only file system. With ``reuse``, the accepted folder gets its record
    (created if need be), so a later run recognises it. Raises :class:`OutputExistsError` (exit 2).
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
    check_writable(p, what)
    if p.is_dir() and _visible(p):
        foreign = foreign_entries(p, owns)
        if foreign:
            raise OutputExistsError(f"{what} {p} holds files spikelm did not write ({', '.join(foreign[:5])}); "
                                    "--overwrite replaces only spikelm's own files: choose another path")
        if not overwrite and not (reuse and _earlier_run_of(p, reuse, legacy)):
            names = ", ".join(e.name for e in _visible(p)[:5])
            if reuse:
                raise OutputExistsError(f"{what} {p} holds {names} but no record ({RUN_RECORD}) that spikelm's `{reuse}` "
                                        "wrote them; choose another path, or pass --overwrite to replace them")
            raise OutputExistsError(f"{what} {p} exists and is not empty; choose another path or pass --overwrite "
                                    "(which replaces only spikelm's own files there)")
    if reuse:
        record = p / RUN_RECORD
        if not _earlier_run_of(p, reuse, ()):
            atomic_write_json(record, {"command": reuse, "owns": list(owns)})
    return p


def _earlier_run_of(folder: Path, command: str, legacy: tuple[str, ...]) -> bool:
    """Whether ``folder`` holds an earlier run of ``command``: its record says so, or (no record:
    a run of a spikelm from before the record) one of the ``legacy`` files is there."""
    try:
        return json.loads((folder / RUN_RECORD).read_text()).get("command") == command
    except (OSError, ValueError, AttributeError):
        return any((folder / name).exists() for name in legacy)


def remove_owned(folder: str | os.PathLike, owns: tuple[str, ...] | list[str]) -> None:
    """Delete the entries of ``folder`` that ``owns`` covers (a command starting over with
    ``--overwrite``); call only after :func:`claim_dir` accepted the folder (nothing in it is the user's)."""
    root = Path(folder)
    if not root.is_dir():
        return
    tops = {o.split("/", 1)[0] for o in owns}
    for e in _visible(root):
        if e.name in tops or any(fnmatch.fnmatchcase(e.name, o) for o in tops):
            shutil.rmtree(e) if e.is_dir() and not e.is_symlink() else e.unlink()


def claim_files(paths: list[str | os.PathLike] | tuple[str | os.PathLike, ...], *, overwrite: bool,
                what: str = "output file") -> list[Path]:
    """The output rule for single files (``--plot`` prefixes, ``--out`` and ``--json`` files):
    each may be written only where it does not exist yet, or with ``overwrite``; never over a
    folder, below a file, or on a read-only file system. Checked before any work."""
    out = []
    for path in paths:
        p = check_file_target(path, what)
        if p.exists() and not overwrite:
            raise OutputExistsError(f"{what} {p} exists; choose another path or pass --overwrite to replace it")
        check_writable(p, what)
        out.append(p)
    return out


# ---------------------------------------------------------------------------- OS errors, named
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-\d+(?:-[0-9a-f]+)?$")

_CAUSES = {
    errno.ENOSPC: ("no space left on the device", "free some space there or choose another path"),
    errno.EDQUOT: ("disk quota exceeded", "free some space there or choose another path"),
    errno.EROFS: ("read-only file system", "choose a writable path"),
    errno.EACCES: ("permission denied", "check its permissions or choose another path"),
    errno.EPERM: ("operation not permitted", "check its permissions or choose another path"),
    errno.EFBIG: ("file too large (a file-size limit of this system or process)", "raise the limit or choose another path"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.EISDIR: ("is a folder, not a file", "give a file path"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "check the path"),
    errno.ENAMETOOLONG: ("name too long", "choose a shorter path"),
    errno.EIO: ("input/output error (a failing disk or network file system?)", "check the device"),
    errno.EMFILE: ("too many open files", "raise `ulimit -n`"),
}


def user_path(path: str | os.PathLike) -> str:
    """``path`` as the user knows it: a temporary sibling spikelm writes first (``.NAME.tmp-PID-X``)
    is named by the file or folder it becomes."""
    parts = []
    for part in Path(path).parts:
        while (m := _TEMP_NAME.match(part)) is not None:  # a temporary of a temporary: the name it becomes
            part = m.group("name")
        parts.append(part)
    return str(Path(*parts)) if parts else str(path)


def describe_os_error(e: OSError) -> str:
    """One line for an ``OSError``: the path as the user named it, the cause in words, the fix."""
    cause, fix = _CAUSES.get(e.errno or -1, ((e.strerror or str(e)).lower() if (e.strerror or str(e)) else "failed", ""))
    where = user_path(e.filename) if e.filename is not None else ""
    if e.filename2 is not None:
        where += f" -> {user_path(e.filename2)}"
    line = f"{where}: {cause}" if where else cause
    return f"{line}; {fix}" if fix else line


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

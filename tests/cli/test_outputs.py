"""Outputs never cost the user a file: refused folders stay as they were, --overwrite replaces only
spikelm's own files and does so in one step, nothing temporary is left behind, and created folders
and files honour the umask."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

import spikelm.io
from spikelm.checkpoints import load, save, save_official
from spikelm.cli import main
from spikelm.testing import make_rwkv6


def tiny():
    return make_rwkv6(n_layer=1, n_embd=32, head_size=16)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name)


@pytest.fixture
def text(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SPIKELM_CACHE", str(tmp_path / "cache"))
    p = tmp_path / "calib.txt"
    p.write_text("".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(400)))
    return p


def convert_args(ckpt: Path, out: Path, text: Path, *extra: str) -> list[str]:
    return ["convert", str(ckpt), "--out", str(out), "--calib-data", str(text), "--calib-batches", "1",
            "--calib-ctx", "16", "--no-progress", *extra]


USER_FILES = {"notes.txt": "three weeks of notes\n", "config.json": '{"mine": true}\n'}


@pytest.mark.parametrize("command", ["init", "convert"])
@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("files", [("notes.txt",), ("notes.txt", "config.json")], ids=["one-file", "two-files"])
def test_a_folder_holding_a_users_file_survives(tmp_path, text, capsys, command, overwrite, files):
    """A folder holding one file is as non-empty as one holding two (even a spikelm-named file next to
    a user's one)."""
    ckpt = save_official(tiny(), tmp_path / "ann.pth")
    out = tmp_path / "run"
    out.mkdir()
    for name in files:
        (out / name).write_text(USER_FILES[name])
    argv = (["init", str(out), "--n-layer", "1", "--n-embd", "32", "--head-size", "16"] if command == "init"
            else convert_args(ckpt, out, text))
    assert main(argv + (["--overwrite"] if overwrite else [])) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(out) in err and "--overwrite" in err
    if overwrite:
        assert "notes.txt" in err
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    for name in files:
        assert (out / name).read_text() == USER_FILES[name]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("entry", ["notes.txt", "config.json", "subfolder"])
def test_claim_dir_refuses_a_folder_holding_a_single_entry(tmp_path, entry):
    """One visible entry of any kind (a user's file, a spikelm-named file, a folder) makes the
    folder non-empty: refused without --overwrite. An empty folder, or one holding only a dot file
    (the output rule leaves dot files alone), is accepted."""
    out = tmp_path / "out"
    out.mkdir()
    assert spikelm.io.claim_dir(out, overwrite=False) == out
    (out / ".hidden").write_text("x")
    assert spikelm.io.claim_dir(out, overwrite=False) == out
    (out / ".hidden").unlink()
    (out / entry).mkdir() if entry == "subfolder" else (out / entry).write_text("x")
    with pytest.raises(spikelm.io.OutputExistsError, match="exists and is not empty|did not write"):
        spikelm.io.claim_dir(out, overwrite=False)
    if entry == "notes.txt":  # a user's file: refused with --overwrite too
        with pytest.raises(spikelm.io.OutputExistsError, match="notes.txt"):
            spikelm.io.claim_dir(out, overwrite=True)


def test_overwrite_replaces_spikelms_own_folder_in_one_step(tmp_path, text, capsys):
    ckpt = save_official(tiny(), tmp_path / "ann.pth")
    out = tmp_path / "spiking"
    assert main(convert_args(ckpt, out, text, "--T", "1", "--layers", "3")) == 0
    (out / ".keep").write_text("a dot file is left alone\n")
    assert main(convert_args(ckpt, out, text, "--T", "1", "--layers", "5")) == 2  # no --overwrite: refused
    assert json.loads((out / "config.json").read_text())["encoding"]["layers"] == 3
    assert main(convert_args(ckpt, out, text, "--T", "1", "--layers", "5", "--overwrite")) == 0
    capsys.readouterr()
    assert json.loads((out / "config.json").read_text())["encoding"]["layers"] == 5
    assert load(out).encoding.layers == 5
    assert (out / ".keep").read_text() == "a dot file is left alone\n"
    assert leftovers(tmp_path) == []


def test_a_crash_while_publishing_leaves_the_old_folder(tmp_path, monkeypatch):
    out = tmp_path / "model"
    save(make_rwkv6(n_layer=1, n_embd=32, head_size=16, seed=1), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_replace = os.replace

    def fail_on_the_new_folder(src, dst):
        if Path(dst) == out and ".tmp-" in Path(src).name:
            raise OSError("disk gone")
        return real_replace(src, dst)

    monkeypatch.setattr(spikelm.io.os, "replace", fail_on_the_new_folder)
    with pytest.raises(OSError, match="disk gone"):
        save(make_rwkv6(n_layer=1, n_embd=32, head_size=16, seed=2), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old model, whole
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("fail_at", ["write", "fsync", "replace"])
def test_a_failed_file_write_leaves_the_old_file(tmp_path, monkeypatch, fail_at):
    """spikelm.io.atomic_write (every JSON, config and report spikelm writes): a failure before the
    new file is complete leaves the old one whole and no temporary file behind."""
    target = tmp_path / "results.json"
    target.write_text('{"old": true}\n')

    def boom(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    if fail_at == "write":  # the failure comes mid-write, after the file was opened
        monkeypatch.setattr(spikelm.io, "open", _FailingFile, raising=False)
    elif fail_at == "fsync":
        monkeypatch.setattr(spikelm.io.os, "fsync", boom)
    else:
        monkeypatch.setattr(spikelm.io.os, "replace", boom)
    with pytest.raises(OSError, match="No space left|results.json"):
        spikelm.io.atomic_write_json(target, {"new": True})
    assert target.read_text() == '{"old": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


class _FailingFile:
    """A file opened for writing whose write fails half-way (after writing a few bytes)."""

    def __init__(self, path, mode="r", *a, **k):
        self.f = open(path, mode, *a, **k)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(data[:3])
        self.f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_init_official_onto_a_folder_is_a_named_error_and_leaves_nothing(tmp_path, capsys):
    folder = tmp_path / "models"
    folder.mkdir()
    assert main(["init", str(folder), "--official", "--n-layer", "1", "--n-embd", "32", "--head-size", "16"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(folder) in err
    assert list(folder.iterdir()) == [] and leftovers(tmp_path) == []
    # a file that exists is replaced only with --overwrite
    target = tmp_path / "m.pth"
    target.write_bytes(b"old")
    assert main(["init", str(target), "--official", "--n-layer", "1", "--n-embd", "32", "--head-size", "16"]) == 2
    assert target.read_bytes() == b"old"
    assert main(["init", str(target), "--official", "--overwrite", "--n-layer", "1", "--n-embd", "32",
                 "--head-size", "16"]) == 0
    assert load(target).cfg.n_layer == 1 and leftovers(tmp_path) == []


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_created_folders_and_files_honour_the_umask(tmp_path, text, capsys, mask):
    old = os.umask(mask)
    try:
        assert main(["init", str(tmp_path / "a" / "b"), "--n-layer", "1", "--n-embd", "32", "--head-size", "16"]) == 0
        ckpt = tmp_path / "a" / "b"
        assert main(convert_args(ckpt, tmp_path / "c", text)) == 0
        pytest.importorskip("matplotlib")
        assert main(["energy", str(ckpt), "--data", str(text), "--tokens", "16", "--plot", str(tmp_path / "p" / "q"),
                     "--no-progress"]) == 0
    finally:
        os.umask(old)
    capsys.readouterr()
    for folder in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "c", tmp_path / "p"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~mask, folder
    for f in (tmp_path / "a" / "b" / "config.json", tmp_path / "a" / "b" / "model.safetensors",
              tmp_path / "c" / "config.json", tmp_path / "p" / "q-energy.png"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f

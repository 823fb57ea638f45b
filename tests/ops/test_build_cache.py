"""The kernels' build cache (ops/build_cache.py, ops/kernels.py): one build per key, whatever the
order environments come in; another process's build waited for, not repeated; a killed or failed
build leaves nothing the next process trips on. The builds here are stand-ins (a file written
after a pause) except in the slow test, which compiles and kills the real kernels."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spikelm.ops import build_cache, kernels
from spikelm.ops.build_cache import BuildKey, clear_builds, ensure_built, is_built, list_builds

ROOT = Path(__file__).resolve().parents[2]
CHILD_ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))

# A child process building key `tag` under `root` with a stand-in build: it notes its start in
# `log`, pauses `pause` seconds, writes lib.so, notes its end.
CHILD = """
import sys, time
from pathlib import Path
from spikelm.ops.build_cache import BuildKey, ensure_built
root, tag, pause, log = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), Path(sys.argv[4])
def build(folder):
    with open(log, "a") as f: f.write(f"start {tag} {folder}\\n")
    (folder / "partial.o").write_text("half")
    time.sleep(pause)
    (folder / "lib.so").write_text(tag)
    with open(log, "a") as f: f.write(f"end {tag}\\n")
folder, seconds = ensure_built(root, BuildKey("lib", {"env": tag}), build, wait_s=120)
print(folder, seconds)
"""


def _key(tag: str) -> BuildKey:
    return BuildKey("lib", {"env": tag})


def _counting_build(counts: dict, tag: str):
    def build(folder: Path) -> None:
        counts[tag] = counts.get(tag, 0) + 1
        (folder / "lib.so").write_text(tag)
    return build


def test_two_environments_switching_back_and_forth_build_once_each(tmp_path):
    counts: dict[str, int] = {}
    took = []
    for tag in "ABAB":
        folder, seconds = ensure_built(tmp_path, _key(tag), _counting_build(counts, tag))
        took.append(seconds is not None)
        assert (folder / "lib.so").read_text() == tag
    assert counts == {"A": 1, "B": 1} and took == [True, True, False, False]
    assert _key("A").dirname != _key("B").dirname
    assert sorted(b["key"]["env"] for b in list_builds(tmp_path)) == ["A", "B"]


def test_the_key_names_everything_the_build_depends_on():
    parts = kernels.build_key().parts
    assert {"torch", "torch_commit", "cxx11_abi", "python", "compiler", "flags", "isa", "sources"} <= set(parts)
    assert len(parts["sources"]) == 64


def test_a_build_in_progress_elsewhere_is_waited_for_not_repeated(tmp_path):
    log = tmp_path / "log"
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "cache"), "A", "3", str(log)],
                              env=CHILD_ENV, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["start", "end"]  # one build
    assert outs[0][0] == outs[1][0] and sorted(o[1] == "None" for o in outs) == [False, True]


def test_a_build_killed_midway_leaves_a_cache_the_next_call_rebuilds_cleanly(tmp_path):
    log, root = tmp_path / "log", tmp_path / "cache"
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(root), "A", "120", str(log)], env=CHILD_ENV)
    try:
        deadline = time.monotonic() + 120
        while not (log.exists() and "start" in log.read_text()):
            assert time.monotonic() < deadline and p.poll() is None, "the child never started its build"
            time.sleep(0.1)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert not is_built(root, _key("A")) and any(b.get("unfinished") for b in list_builds(root))
    counts: dict[str, int] = {}
    t0 = time.monotonic()
    folder, seconds = ensure_built(root, _key("A"), _counting_build(counts, "A"), wait_s=30)
    assert time.monotonic() - t0 < 30  # the dead child's lock went with it
    assert counts == {"A": 1} and seconds is not None and not (folder / "partial.o").exists()
    assert [b for b in list_builds(root) if b.get("unfinished")] == []


def test_a_failed_build_leaves_nothing_and_the_next_call_builds(tmp_path):
    def broken(folder: Path) -> None:
        (folder / "partial.o").write_text("half")
        raise RuntimeError("compiler error")

    with pytest.raises(RuntimeError, match="compiler error"):
        ensure_built(tmp_path, _key("A"), broken)
    assert list_builds(tmp_path) == []
    counts: dict[str, int] = {}
    ensure_built(tmp_path, _key("A"), _counting_build(counts, "A"))
    assert counts == {"A": 1}


def test_a_build_that_outlasts_the_wait_times_out(tmp_path):
    with build_cache._locked(tmp_path / f"{_key('A').dirname}.lock", 0, "x"):
        with pytest.raises(TimeoutError, match="waited"):
            ensure_built(tmp_path, _key("A"), _counting_build({}, "A"), wait_s=0.3)


def test_clear_removes_every_build_but_one_in_progress(tmp_path):
    for tag in "AB":
        ensure_built(tmp_path, _key(tag), _counting_build({}, tag))
    with build_cache._locked(tmp_path / f"{_key('B').dirname}.lock", 0, "x"):
        removed, skipped = clear_builds(tmp_path, "lib")
    assert [p.name for p in removed] == [_key("A").dirname] and [p.name for p in skipped] == [_key("B").dirname]
    assert is_built(tmp_path, _key("B")) and not is_built(tmp_path, _key("A"))


def test_kernels_that_cannot_be_built_fall_back_with_one_warning(tmp_path, monkeypatch, caplog):
    """A failed build: library() is None (the ops take their tensor operations), one warning, no
    build left in the cache."""
    def broken(folder: Path) -> None:
        (folder / "main.o").write_text("half")
        raise RuntimeError("error: no such compiler")

    monkeypatch.setenv(kernels.ROOT_ENV, str(tmp_path))
    monkeypatch.setattr(kernels, "_compile", broken)
    monkeypatch.setattr(kernels, "_library", kernels._UNLOADED)  # restored afterwards: other tests keep theirs
    with caplog.at_level(logging.INFO, logger="spikelm.ops"):
        assert kernels.library() is None and kernels.library() is None
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "not available" in warnings[0].getMessage()
    assert list_builds(tmp_path) == []


def test_a_machine_without_a_compiler_takes_a_build_made_elsewhere(tmp_path, monkeypatch):
    """A compute node with no compiler uses the build `spikelm kernels build` made on a machine that
    has one (same torch, Python, flags, sources); elsewhere the compiler is part of the key."""
    key = kernels.build_key()
    other = BuildKey(key.name, {**key.parts, "compiler": "/usr/bin/g++: g++ 12"}, key.tag)
    folder, _ = ensure_built(tmp_path, other, _counting_build({}, "A"))
    assert kernels._prebuilt(tmp_path, key) is None  # this machine has a compiler: it builds its own
    no_cc = BuildKey(key.name, {**key.parts, "compiler": "c++ (not found)"}, key.tag)
    assert kernels._prebuilt(tmp_path, no_cc) == folder
    stale = BuildKey(key.name, {**key.parts, "compiler": "c++ (not found)", "sources": "0" * 64}, key.tag)
    assert kernels._prebuilt(tmp_path, stale) is None


def test_no_cpp_kernels_builds_and_loads_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(kernels.OFF_ENV, "1")
    monkeypatch.setenv(kernels.ROOT_ENV, str(tmp_path))
    monkeypatch.setattr(kernels, "_compile", lambda folder: pytest.fail("built with SPIKELM_NO_CPP_KERNELS=1"))
    monkeypatch.setattr(kernels, "_library", kernels._UNLOADED)
    assert kernels.library() is None and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_real_build_killed_during_compilation_then_built_and_used(tmp_path):
    """SIGKILL to a process (and its compiler) compiling the real kernels; the next process builds
    them cleanly and uses them; the one after finds them (no build message)."""
    env = dict(CHILD_ENV, SPIKELM_KERNELS_DIR=str(tmp_path))
    code = ("import logging, torch; logging.basicConfig(level=logging.INFO)\n"
            "from spikelm.ops import kernels\n"
            "lib = kernels.library(); print(lib.gemv(torch.ones(8).bfloat16(), torch.ones(4, 8).bfloat16()).tolist())")
    p = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not any(tmp_path.glob(".*.build-*/build.ninja")):
        assert time.monotonic() < deadline and p.poll() is None, "the build never started"
        time.sleep(0.2)
    time.sleep(2)  # into the compilation
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
            for _ in range(2)]
    for r in runs:
        assert r.returncode == 0 and r.stdout.strip().endswith("[8.0, 8.0, 8.0, 8.0]"), r.stderr[-2000:]
    assert "built spikelm's compiled CPU kernels in" in runs[0].stderr and "removing an unfinished build" in runs[0].stderr
    assert "build" not in runs[1].stderr
    builds = list_builds(tmp_path)
    assert len(builds) == 1 and not builds[0].get("unfinished")
    assert json.loads((Path(builds[0]["path"]) / "build.json").read_text())["seconds"] > 0

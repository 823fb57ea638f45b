"""``spikelm kernels build|status|clear`` (cli/kernels.py) on a cache of stand-in builds: status
builds nothing and lists every environment's build; clear removes them; a bad action is one line,
exit 2. (The real build is tested in tests/ops/test_build_cache.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spikelm.cli import main
from spikelm.ops import kernels
from spikelm.ops.build_cache import BuildKey, ensure_built


def _fake_build(root: Path, tag: str) -> Path:
    key = BuildKey(kernels.NAME, {"torch": tag, "python": "cpython3.0"}, f"py30-torch{tag}")
    folder, _ = ensure_built(root, key, lambda f: (f / f"{kernels.NAME}.so").write_bytes(b"\0" * 1024))
    return folder


def test_status_lists_every_build_and_builds_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(kernels.ROOT_ENV, str(tmp_path))
    other = _fake_build(tmp_path, "9.9")
    assert main(["kernels", "status", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["root"] == str(tmp_path) and not out["this_environment"]["built"]
    assert [b["path"] for b in out["builds"]] == [str(other)]
    assert out["paths"]["wkv6"]["float32"] == "torch"  # not built: auto takes the tensor operations
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [other.name]  # nothing was built
    assert main(["kernels", "status"]) == 0
    text = capsys.readouterr().out
    assert "not built: spikelm kernels build" in text and str(other) in text and "rwkv6_block" in text


def test_clear_removes_the_builds(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(kernels.ROOT_ENV, str(tmp_path))
    a, b = _fake_build(tmp_path, "1.0"), _fake_build(tmp_path, "2.0")
    assert main(["kernels", "clear"]) == 0
    assert capsys.readouterr().out.split() == ["removed", str(a), "removed", str(b)]
    assert not a.exists() and not b.exists()
    assert main(["kernels", "clear"]) == 0 and "no builds to clear" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["kernels", "rebuild"]])
def test_a_bad_action_is_one_line_and_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "build, status, clear" in err

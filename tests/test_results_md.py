"""docs/results.md names, for every section, the commit it was measured at and the code it measured
(benchmarks/record.py writes both), and ``record.py --check`` finds the sections whose code has
changed since: tested here on a throwaway git repository."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def record():
    spec = importlib.util.spec_from_file_location("spikelm_record", REPO / "benchmarks" / "record.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_section_names_its_commit_and_code(record):
    sections = record.sections((REPO / "docs" / "results.md").read_text())
    assert len(sections) > 10
    missing = [s["title"] for s in sections if s["commit"] is None or not s["code"] or not s["digest"]]
    assert missing == [], f"sections without '- commit:' and '- code:' lines (record them with benchmarks/record.py): {missing}"


def test_nothing_outside_a_section(record):
    """A figure typed into results.md outside a recorded section escapes the check."""
    text = (REPO / "docs" / "results.md").read_text()
    outside = record.SECTION.sub("", text)
    assert outside.strip() == record.HEADER.strip(), outside[:500]


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_check_finds_exactly_the_sections_whose_code_changed(record, tmp_path):
    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "fast.py").write_text("def f():\n    return 1\n")
    (root / "pkg" / "other.py").write_text("X = 2\n")
    (root / "bench.py").write_text("import pkg.fast\n\nif __name__ == '__main__':\n    print(pkg.fast.f())\n")
    (root / "README").write_text("not code\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-qm", "one")
    # the code of `python bench.py`: the script and what it imports, not the rest
    code = record.command_code([sys.executable, "bench.py"], root)
    assert code == ["bench.py", "pkg/__init__.py", "pkg/fast.py"]
    entries = record.compress(code, root)
    assert entries == ["bench.py", "pkg/__init__.py", "pkg/fast.py"]  # pkg/other.py keeps pkg/ from collapsing
    body = (f"- command: `python bench.py`\n{record.commit_line(entries, root)}\n"
            f"{record.code_line(entries, record.blobs_now(record.files_now(entries, root), root))}\n\n```\n1\n```\n")
    assert f"- commit: {record.head(root)[:12]}\n" in body
    text = record.replace_section(record.HEADER, "Bench", body)
    assert record.stale_sections(text, root) == []
    (root / "pkg" / "other.py").write_text("X = 3\n")  # not its code
    (root / "README").write_text("changed\n")
    assert record.stale_sections(text, root) == []
    (root / "pkg" / "fast.py").write_text("def f():\n    return 2\n")  # its code, uncommitted
    [stale] = record.stale_sections(text, root)
    assert stale["title"] == "Bench" and stale["changed"] == ["pkg/fast.py"]
    _git(root, "commit", "-qam", "two")  # committed: still stale
    assert record.stale_sections(text, root)[0]["changed"] == ["pkg/fast.py"]
    (root / "pkg" / "fast.py").write_text("def f():\n    return 1\n")  # back as measured: fresh again
    assert record.stale_sections(text, root) == []
    # measured with uncommitted changes: the commit line says so
    (root / "pkg" / "fast.py").write_text("def f():\n    return 3\n")
    assert "with uncommitted changes to pkg/fast.py" in record.commit_line(entries, root)
    _git(root, "commit", "-qam", "three")
    # a folder entry: a new file in it changes the code
    folder = record.code_line(["pkg/"], record.blobs_now(record.files_now(["pkg/"], root), root))
    text = record.replace_section(record.HEADER, "Folder", f"- commit: {record.head(root)[:12]}\n{folder}\n")
    assert record.stale_sections(text, root) == []
    (root / "pkg" / "new.py").write_text("")
    assert record.stale_sections(text, root)[0]["changed"] == ["pkg/new.py"]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_section_without_the_lines_is_listed(record, tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    text = record.replace_section(record.HEADER, "Old", "- command: `true`\n\n```\nx\n```\n")
    [stale] = record.stale_sections(text, root)
    assert stale["title"] == "Old" and "names no commit" in stale["why"]

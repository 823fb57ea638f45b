"""The library never parses arguments, prints or draws a progress bar: that is cli/'s job."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = SRC / "spikelm"
CLI = PKG / "cli"


def _library_files():
    return [p for p in sorted(PKG.rglob("*.py")) if CLI not in p.parents]


def _violations(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    where = path.relative_to(SRC.parent)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("cli_"):
            out.append(f"{where}:{node.lineno}: function {node.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                root = a.name.split(".")[0]
                if root in ("argparse", "tqdm"):
                    out.append(f"{where}:{node.lineno}: import {a.name}")
        elif isinstance(node, ast.ImportFrom) and not node.level:
            root = (node.module or "").split(".")[0]
            if root in ("argparse", "tqdm"):
                out.append(f"{where}:{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            out.append(f"{where}:{node.lineno}: print(...)")
    return out


def test_library_has_files_and_cli_is_separate():
    files = _library_files()
    assert len(files) > 20 and not any("cli" in p.relative_to(PKG).parts[:1] for p in files)


def test_no_cli_functions_argparse_print_or_tqdm_outside_cli():
    bad = [v for p in _library_files() for v in _violations(p)]
    assert not bad, "command-line work in the library:\n" + "\n".join(bad)


def test_checker_catches_each_kind(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import argparse\nfrom tqdm.auto import tqdm\n"
                 "def cli_x():\n    print('hi')\n")
    global SRC
    saved, SRC = SRC, tmp_path
    try:
        found = _violations(f)
    finally:
        SRC = saved
    assert sorted(v.split(": ", 1)[1] for v in found) == sorted([
        "import argparse", "from tqdm.auto import ...", "function cli_x", "print(...)"])

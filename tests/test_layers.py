"""The package's floors (DESIGN.md "Layout"): imports run only down, sit at the top of the
file, and the module graph has no cycle. Read with ast; nothing is imported."""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "spikelm"

FLOORS = [
    ["spikelm.config", "spikelm.runargs", "spikelm.configfile", "spikelm.errors", "spikelm.io", "spikelm.markdown", "spikelm.progress"],
    ["spikelm.devices", "spikelm.ops"],
    ["spikelm.spiking"],
    ["spikelm.models"],
    ["spikelm.testing", "spikelm.data"],
    ["spikelm.generate", "spikelm.convert"],
    ["spikelm.checkpoints"],
    ["spikelm.evaluate"],
    ["spikelm.energy"],
    ["spikelm.train"],
    ["spikelm.cli", "spikelm", "spikelm.__main__"],
]
FLOOR_OF = {name: i for i, names in enumerate(FLOORS) for name in names}


def floor(module):
    """The floor of the longest prefix of `module` named in FLOORS."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in FLOOR_OF:
            return FLOOR_OF[prefix]
    raise AssertionError(f"{module} is on no floor")


def _modules():
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _resolve(module, is_pkg, node):
    """The spikelm modules an ImportFrom/Import node names (absolute), as a list."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name == "spikelm" or a.name.startswith("spikelm.")]
    if node.level:
        base = module.split(".")
        if not is_pkg:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
        if not (target == "spikelm" or target.startswith("spikelm.")):
            return []
    # `from pkg import submodule` imports the submodule too
    out = [target]
    for a in node.names:
        sub = f"{target}.{a.name}"
        if sub in MODULES:
            out.append(sub)
    return out


def _is_type_checking(test):
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module):
    """(top-level imports, function-local imports): lists of (lineno, target module)."""
    path, is_pkg = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    top, local = [], []

    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for c in child.orelse:
                    walk_one(c, in_function)
                continue
            walk_one(child, in_function)

    def walk_one(child, in_function):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            for target in _resolve(module, is_pkg, child):
                (local if in_function else top).append((child.lineno, target))
            return
        inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        walk(child, inner)

    walk(tree, False)
    return top, local


def _edges():
    """module -> {imported spikelm module}, top-level imports only, resolved to real modules."""
    graph = {}
    for module in MODULES:
        top, _ = _imports(module)
        deps = set()
        for _, target in top:
            # `import spikelm.a.b` also runs spikelm.a's __init__; keep the named module
            name = target
            while name not in MODULES and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in MODULES and name != module:
                deps.add(name)
        graph[module] = deps
    return graph


def test_every_module_has_a_floor():
    for module in MODULES:
        floor(module)


def test_imports_run_down_the_floors():
    bad = []
    for module in MODULES:
        path, _ = MODULES[module]
        top, local = _imports(module)
        for lineno, target in top + local:
            if floor(target) > floor(module):
                bad.append(f"{path.relative_to(SRC.parent)}:{lineno}: {module} (floor {floor(module)}) "
                           f"imports {target} (floor {floor(target)})")
    assert not bad, "imports up the floors:\n" + "\n".join(bad)


def test_no_function_local_spikelm_import():
    bad = []
    for module in MODULES:
        path, _ = MODULES[module]
        _, local = _imports(module)
        bad += [f"{path.relative_to(SRC.parent)}:{lineno}: imports {target} inside a function"
                for lineno, target in local]
    assert not bad, "function-local spikelm imports:\n" + "\n".join(bad)


def test_no_import_cycle():
    graph = _edges()
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {m: WHITE for m in graph}
    cycles = []

    def visit(m, stack):
        colour[m] = GREY
        stack.append(m)
        for d in sorted(graph[m]):
            if colour[d] == GREY:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif colour[d] == WHITE:
                visit(d, stack)
        stack.pop()
        colour[m] = BLACK

    for m in sorted(graph):
        if colour[m] == WHITE:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("module,expected", [
    ("spikelm.ops.wkv6", 1), ("spikelm.cli.parser", 10), ("spikelm", 10),
    ("spikelm.evaluate.stream", 7), ("spikelm.testing", 4),
])
def test_floor_lookup(module, expected):
    assert floor(module) == expected


def test_checker_sees_relative_and_local_imports(tmp_path):
    """The reader resolves relative imports and notices imports inside functions."""
    global MODULES
    saved = MODULES
    pkg = tmp_path / "spikelm"
    (pkg / "ops").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "ops" / "__init__.py").write_text("from ..models import x\n")
    (pkg / "ops" / "a.py").write_text("def f():\n    from . import b\n    import lm_eval\n")
    (pkg / "ops" / "b.py").write_text("from typing import TYPE_CHECKING\n"
                                      "if TYPE_CHECKING:\n    from spikelm.train import T\n")
    try:
        MODULES = {"spikelm": (pkg / "__init__.py", True), "spikelm.ops": (pkg / "ops" / "__init__.py", True),
                   "spikelm.ops.a": (pkg / "ops" / "a.py", False), "spikelm.ops.b": (pkg / "ops" / "b.py", False),
                   "spikelm.models": (pkg / "models.py", False)}
        assert _imports("spikelm.ops") == ([(1, "spikelm.models")], [])
        assert _imports("spikelm.ops.a") == ([], [(2, "spikelm.ops"), (2, "spikelm.ops.b")])
        assert _imports("spikelm.ops.b") == ([], [])
    finally:
        MODULES = saved


MAX_LINES = 600  # the restructuring issue: no source file a newcomer cannot read


def test_no_source_file_is_over_600_lines():
    long = {str(p.relative_to(SRC)): n for p in sorted(PKG.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"source files over {MAX_LINES} lines: {long}"


def test_only_ops_imports_the_kernels():
    """The C++ kernels are built, loaded and called from spikelm.ops alone: the modules that load
    them (those naming torch's extension builder or the kernels' namespace, spikelm_cpu) live in
    spikelm.ops, and no module outside it imports one of them or names the namespace."""
    def names_kernels(module):
        text = MODULES[module][0].read_text(encoding="utf-8")
        return "cpp_extension" in text or "spikelm_cpu" in text

    inside = lambda m: m == "spikelm.ops" or m.startswith("spikelm.ops.")  # noqa: E731
    loaders = {m for m in MODULES if inside(m) and names_kernels(m)}
    assert loaders, "no module of spikelm.ops loads the kernels"
    bad = []
    for module in MODULES:
        if inside(module):
            continue
        top, local = _imports(module)
        bad += [f"{module}:{line} imports {t}" for line, t in top + local if t in loaders]
        if names_kernels(module):
            bad.append(f"{module} names the kernels (spikelm_cpu or cpp_extension)")
    assert not bad, "\n".join(bad)

"""``spikelm kernels``: build, show and clear spikelm's compiled CPU kernels."""

from __future__ import annotations

from ..errors import ConfigError
from ..ops import build_kernels, clear_kernels, cpu_paths, kernels_status
from .options import print_json

__all__ = ["cmd_kernels"]

ACTIONS = ("build", "status", "clear")


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def cmd_kernels(action: str, json_: bool = False) -> int:
    """Build spikelm's compiled CPU kernels ahead of time, show what is built where, or clear them.

    The kernels are built once per environment (torch version and ABI, Python, compiler and flags,
    instruction sets, spikelm's kernel sources) into $SPIKELM_KERNELS_DIR, else
    ~/.cache/spikelm/kernels ($XDG_CACHE_HOME/spikelm/kernels); each environment keeps its own build.
    Without them (no C++ compiler) every op runs on its tensor operations. `build` is for container
    images, CI and clusters whose compute nodes have no compiler: build where one is, then copy the
    folder (or point SPIKELM_KERNELS_DIR at a shared one).

    Args:
        action: build (build this environment's kernels now, or find them built), status (the cache
            folder, every build in it, and the path each op takes here; builds nothing) or clear
            (remove every build; a build in progress is left alone)
        json_: print one JSON object instead of text.
    """
    if action not in ACTIONS:
        raise ConfigError(f"action must be one of {', '.join(ACTIONS)}; got {action!r}")
    if action == "clear":
        out = clear_kernels()
        if json_:
            print_json(out)
            return 0
        for p in out["removed"]:
            print(f"removed {p}")
        for p in out["in_progress"]:
            print(f"left {p}: a build is in progress")
        if not out["removed"] and not out["in_progress"]:
            print("no builds to clear")
        return 0
    status = build_kernels() if action == "build" else kernels_status()
    here = status["this_environment"]
    status["paths"] = cpu_paths(here["built"])
    if json_:
        print_json(status)
        return 0
    print(f"cache: {status['root']}")
    print(f"this environment: {here['folder']} ({'built' if here['built'] else 'not built: spikelm kernels build'})")
    for k, v in here["key"].items():
        print(f"  {k:13s} {v}")
    print("builds in the cache:")
    for b in status["builds"]:
        if b.get("unfinished"):
            print(f"  {b['path']}  unfinished (a build in progress, or one a killed process left)")
            continue
        mark = " (this environment)" if b["path"] == here["folder"] else ""
        k = b.get("key", {})
        print(f"  {b['path']}{mark}\n    torch {k.get('torch')}, {k.get('python')}, {k.get('compiler')}; "
              f"built {b.get('built')} in {b.get('seconds')} s; {_mb(b['bytes'])}")
    if not status["builds"]:
        print("  (none)")
    print("what `auto` runs on this CPU, per op (float32 / bfloat16; where the kernel takes the inputs):")
    for op, by_dtype in status["paths"].items():
        print(f"  {op:16s} {by_dtype['float32']} / {by_dtype['bfloat16']}")
    return 0

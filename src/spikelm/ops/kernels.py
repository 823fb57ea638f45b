"""spikelm's compiled CPU kernels: the one module that builds and loads them.

The C++ lives in ``csrc/`` (one file per op family). The kernels are built with PyTorch's
extension builder (``torch.utils.cpp_extension``: a C++ compiler and ninja) once per environment,
into a cache folder named by everything the build depends on (:func:`build_key`: torch's version
and ABI, Python, the compiler and flags, the instruction sets, the sources; :mod:`.build_cache`
keeps builds apart, waits for another process's build, and never leaves a half-built one), and
registered as ``torch.ops.spikelm_cpu.*``, each with a fake (meta) implementation so that
``torch.compile`` traces a model that calls them. ``spikelm kernels build|status|clear`` builds
ahead of time, shows the builds, clears them. Where they cannot be built (one logged warning), or
``SPIKELM_NO_CPP_KERNELS=1`` is set, :func:`library` returns None and every op keeps its tensor
operations. Which op takes a kernel
is decided by :mod:`.backend`, never here; no module outside :mod:`spikelm.ops` imports this one.

**WKV6 forward** (``wkv6_forward``): the plain recurrence of :func:`~.wkv6.wkv6_naive`, per batch
row and head, with the state ``S`` (N x N, float32) kept in the loop::

    y_t[j] = sum_i r_t[i] S[i][j] + (sum_i r_t[i] u[i] k_t[i]) v_t[j]
    S[i][j] <- exp(logw_t[i]) S[i][j] + k_t[i] v_t[j]

the regrouping of :func:`~.wkv6.wkv6_step`. Heads run in parallel; the decays ``exp(logw)`` are
taken in one vectorised pass first (in the AVX2 build a polynomial within 2 ulp of the exact exp); with N a multiple of 32 the AVX2 build keeps 32 values of
``v_t`` and of ``y_t`` in registers while it walks the state's rows, so each state value is
loaded and stored once per token. Forward only, float32.

**One-row products** (``gemv``: ``x @ W.T`` for a contiguous (out, in) weight; ``gemv_t``:
``x @ B`` for a contiguous (in, out) matrix, the LoRA order, or a batch of them with baddbmm's
``c``). float32, bf16 or fp16 weights are widened to float32 in registers, the exact products
summed in float32 and the result rounded once to the weight's dtype: for bf16 the arithmetic of a
bf16 GEMM, at the speed of reading the 2-byte weights.

**A decoding step of an RWKV-6 block** (``rwkv6_block_step``): every operation of
``spikelm.models.rwkv6.Block`` on one token in one call, in float32 between the products (the
weights read in their dtype), the WKV state float32; its parameters by name
(``rwkv6_block_step_params``, the table in block_step.cpp).

**The level histogram** (``level_histogram``): the energy counter's histogram of spike-encoder
codes, in one parallel pass.

Each was measured against ``torch.compile`` and the tensor operations and kept for beating them
by 10% or more (docs/results.md, "CPU paths: torch.compile against the C++ kernels"); the
elementwise passes of an RWKV-6 prefill and the spike decoding over T > 1 steps did not, and
are ``torch.compile``'s or the tensor operations'.

**Instruction sets.** On x86-64 the loops are built twice, portable and for AVX2 + FMA + F16C,
and the second is chosen at run time where the CPU has them (``set_avx2(False)`` forces the
portable loops, which the tests also check). Elsewhere only the portable loops are built.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import SpikelmError
from .build_cache import BuildKey, clear_builds, ensure_built, is_built, list_builds

log = logging.getLogger(__name__)

__all__ = ["library", "op", "reset", "cache_root", "build_key", "build_kernels", "kernels_status", "clear_kernels",
           "KernelBuildError", "NAME", "ROOT_ENV"]

NAME = "spikelm_cpu_kernels"
CSRC = Path(__file__).with_name("csrc")
# The C++ sources, each compiled on its own (each includes spikelm.h), linked into one library.
SOURCES = ("wkv6.cpp", "products.cpp", "block_step.cpp", "spikes.cpp", "register.cpp")
HEADERS = ("spikelm.h",)
CFLAGS = ("-O3", "-fopenmp", "-ffp-contract=off")
LDFLAGS = ("-fopenmp",)
ROOT_ENV = "SPIKELM_KERNELS_DIR"  # where the builds are kept (default: spikelm's cache, kernels/)
OFF_ENV = "SPIKELM_NO_CPP_KERNELS"  # 1: never build nor load the kernels (main's make test-no-kernels)
WAIT_S = 900.0  # how long a process waits for another one's build of the same key


class KernelBuildError(SpikelmError):
    """The compiled CPU kernels could not be built or loaded (``spikelm kernels build``)."""


_UNLOADED = object()
_library: Any = _UNLOADED


def library() -> Any | None:
    """The compiled ops (``torch.ops.spikelm_cpu``), or None where they cannot be built (built at
    the first call of the first process of an environment, loaded from the cache after; a plain
    function over a module variable, so that torch.compile reads it without tracing the build)."""
    global _library
    if _library is _UNLOADED:
        _library = _load()
    return _library


def reset() -> None:
    """Forget the loaded state (tests): the next :func:`library` call loads again."""
    global _library
    _library = _UNLOADED


def cache_root() -> Path:
    """Where the builds are kept, one folder per :func:`build_key`: ``$SPIKELM_KERNELS_DIR``, else
    ``spikelm/kernels`` in the user's cache (``$XDG_CACHE_HOME`` or ``~/.cache``). Not under
    ``$SPIKELM_CACHE``: a build belongs to the machine and environment, not to a data cache (a run
    or a test with its own data cache would otherwise build the kernels again)."""
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "spikelm" / "kernels"


@functools.lru_cache(maxsize=None)
def _compiler() -> str:
    """The C++ compiler torch's extension builder runs (``$CXX`` or ``c++``): its path and the
    first line of its ``--version``."""
    cxx = os.environ.get("CXX", "c++")
    path = shutil.which(cxx)
    if path is None:
        return f"{cxx} (not found)"
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    return f"{os.path.realpath(path)}: {out.strip().splitlines()[0] if out.strip() else '?'}"


def build_key() -> BuildKey:
    """Everything the build depends on: torch (version, commit, C++ ABI), Python, the compiler and
    flags, the instruction sets built (x86-64: portable + AVX2, chosen at run time) and spikelm's
    kernel sources. Two environments differing in any of them keep two builds."""
    sources = hashlib.sha256()
    for name in SOURCES + HEADERS:
        sources.update(name.encode() + b"\0" + (CSRC / name).read_bytes() + b"\0")
    machine = platform.machine()
    py = f"{sys.implementation.name}{sys.version_info.major}.{sys.version_info.minor}"
    parts = {
        "torch": torch.__version__,
        "torch_commit": str(torch.version.git_version),
        "cxx11_abi": str(torch._C._GLIBCXX_USE_CXX11_ABI),
        "python": py,
        "compiler": _compiler(),
        "flags": " ".join(CFLAGS + LDFLAGS),
        "isa": machine + (" (portable + AVX2/FMA/F16C)" if machine in ("x86_64", "AMD64") else " (portable)"),
        "sources": sources.hexdigest(),
    }
    tag = f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__}"
    return BuildKey(NAME, parts, tag)


_built_here: Path | None = None  # the library this process built (and torch's builder loaded)


def _compile(folder: Path) -> None:
    """Build the library into the empty ``folder`` with torch's extension builder, which also loads it."""
    global _built_here
    from torch.utils.cpp_extension import load

    try:  # the ninja of the pip package (spikelm[cpu]), where no ninja is on PATH
        import ninja

        if ninja.BIN_DIR not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except (ImportError, AttributeError):
        pass
    log.info("building spikelm's compiled CPU kernels for this environment (once; into %s)", folder.parent)
    load(NAME, sources=[str(CSRC / name) for name in SOURCES], extra_include_paths=[str(CSRC)],
         extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS), build_directory=str(folder),
         is_python_module=False, verbose=False)
    _built_here = folder


def _prebuilt(root: Path, key: BuildKey) -> Path | None:
    """Where this machine has no compiler (a cluster's compute node), a build made elsewhere
    (``spikelm kernels build`` on a login node) whose key matches in everything but the compiler."""
    if not key.parts["compiler"].endswith("(not found)") or is_built(root, key):
        return None
    want = {k: v for k, v in key.parts.items() if k != "compiler"}
    for b in list_builds(root):
        if not b.get("unfinished") and {k: v for k, v in b.get("key", {}).items() if k != "compiler"} == want:
            return Path(b["path"])
    return None


def _load_or_raise() -> Any:
    global _built_here
    _built_here = None
    root, key = cache_root(), build_key()
    folder, seconds = _prebuilt(root, key), None
    if folder is None:
        folder, seconds = ensure_built(root, key, _compile, wait_s=WAIT_S, what="spikelm's compiled CPU kernels")
    if seconds is not None:
        log.info("built spikelm's compiled CPU kernels in %.1f s (%s)", seconds, folder)
    if _built_here is None:  # a build found in the cache (this process's own build is loaded already)
        libs = sorted(folder.glob(f"{NAME}*.so"))
        if not libs:
            raise FileNotFoundError(f"no {NAME}*.so in {folder}")
        torch.ops.load_library(str(libs[-1]))
    _register_fakes()
    lib = torch.ops.spikelm_cpu
    # every overload looked up now, so that op() is a plain lookup: its first call inside a region
    # torch.compile traces must not write a module-level dict (dynamo split the graph there)
    _overloads.update({name: getattr(lib, name).default for name in KERNEL_OPS})
    return lib


@torch.compiler.disable
def _load() -> Any | None:
    if os.environ.get(OFF_ENV, "") not in ("", "0"):  # the tensor operations on their own, as without a compiler
        return None
    try:
        return _load_or_raise()
    except Exception as e:  # no compiler, no ninja, no headers, a timeout: the tensor-operation forms still work
        log.warning("spikelm's compiled CPU kernels are not available (%s: %s); using tensor operations",
                    type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
        return None


def build_kernels() -> dict[str, Any]:
    """Build (or find) and load the kernels of this environment now (``spikelm kernels build``).
    Returns :func:`kernels_status`; KernelBuildError where they cannot be built."""
    global _library
    if _library is _UNLOADED or _library is None:
        try:
            _library = _load_or_raise()
        except Exception as e:  # noqa: BLE001 (the compiler's and the builder's errors have no common base)
            _library = None
            raise KernelBuildError(f"spikelm's compiled CPU kernels could not be built ({type(e).__name__}: "
                                   f"{str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}); "
                                   "spikelm runs on its tensor operations without them") from e
    return kernels_status()


def kernels_status() -> dict[str, Any]:
    """What is built where: the cache folder, this environment's key and whether it is built, and
    every build in the folder (other environments' too). Builds nothing."""
    root, key = cache_root(), build_key()
    return {"root": str(root), "this_environment": {"folder": str(root / key.dirname), "built": is_built(root, key),
                                                     "key": dict(key.parts)},
            "builds": list_builds(root)}


def clear_kernels() -> dict[str, list[str]]:
    """Remove every build of the kernels under :func:`cache_root` (every environment's; a build in
    progress is left alone). A process that has them loaded keeps them; the next one builds again."""
    removed, skipped = clear_builds(cache_root(), NAME)
    return {"removed": [str(p) for p in removed], "in_progress": [str(p) for p in skipped]}


KERNEL_OPS = ("wkv6_forward", "gemv", "gemv_t", "rwkv6_block_step", "rwkv6_block_step_params", "level_histogram", "set_avx2")
_overloads: dict[str, Any] = {}


def op(name: str) -> Any | None:
    """The compiled op ``name`` as its overload (``torch.ops.spikelm_cpu.<name>.default``: a few
    microseconds less per call than the packet, which counts in a decoding step), or None where
    the kernels are not available."""
    lib = library()
    if lib is None:
        return None
    f = _overloads.get(name)
    if f is None:
        f = _overloads[name] = getattr(lib, name).default
    return f


_fakes_registered = False


def _register_fakes() -> None:
    """Fake (meta) implementations: the shapes and dtypes each op returns, so torch.compile can
    trace a model that calls them without running them."""
    global _fakes_registered
    if _fakes_registered:
        return
    _fakes_registered = True
    fake = torch.library.register_fake

    @fake("spikelm_cpu::wkv6_forward")
    def _(r, k, v, logw, u, s):  # noqa: ANN001, ANN202
        return torch.empty_like(r)

    @fake("spikelm_cpu::level_histogram")
    def _(q, x, unit, layers):  # noqa: ANN001, ANN202
        return q.new_empty((2 << layers) + 2, dtype=torch.int64)

    @fake("spikelm_cpu::gemv")
    def _(x, w):  # noqa: ANN001, ANN202
        return w.new_empty(w.shape[0])

    @fake("spikelm_cpu::gemv_t")
    def _(x, b, c=None):  # noqa: ANN001, ANN202
        return b.new_empty(b.shape[0], b.shape[2]) if b.dim() == 3 else b.new_empty(b.shape[1])

    @fake("spikelm_cpu::rwkv6_block_step")
    def _(x, att_shift, wkv, ffn_shift, p, ln_eps, gn_eps):  # noqa: ANN001, ANN202
        return [torch.empty_like(x), torch.empty_like(x), torch.empty_like(wkv), torch.empty_like(x)]

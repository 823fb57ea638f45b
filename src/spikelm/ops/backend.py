"""The one switch that picks each op's implementation: ``torch``, ``compile``, ``cpp`` or ``auto``.

Every op of :mod:`spikelm.ops` with more than one implementation takes ``backend=`` and asks
:func:`resolve` which one runs; models call the op and never test devices or CPU features. The
backend is chosen, most specific first:

* per call: ``wkv6(..., backend="cpp")``;
* per model: ``spikelm.ops.set_backend(model, "torch")`` (each module of the model that runs an
  op keeps it in its ``backend`` attribute; a converter carries it over to the modules it swaps in);
* per process: the environment variable ``SPIKELM_BACKEND`` (read at the first op call);
* otherwise ``auto``.

A backend is one of :data:`BACKENDS`, or a mapping from op names (:data:`OPS`) to backends, with
``"*"`` for the others: ``{"rwkv6_block": "compile", "*": "auto"}``, or in the environment
``SPIKELM_BACKEND=rwkv6_block:compile,*:auto``. For one op:

* ``torch``: the tensor operations (each op's reference twin). Every device and dtype, with
  gradients; the compiled kernels are never built.
* ``compile``: those tensor operations under ``torch.compile`` (inductor: on the CPU it emits
  vectorised C++ and needs a C++ compiler; the first call of each shape compiles). Inside a
  region torch.compile is already tracing, the tensor operations (the outer compile fuses them).
* ``cpp``: spikelm's C++ kernel (:mod:`.kernels`) where the op has one and it takes these inputs
  (the CPU, its dtypes, no gradient), else the tensor operations.
* ``auto``: per op and dtype, what was measured fastest on the CPU (docs/results.md, "CPU paths:
  torch.compile against the C++ kernels"), falling back as ``cpp`` does. On CUDA, the op's GPU
  library where it is installed and takes the inputs (:attr:`OpPaths.cuda`: flash-linear-attention
  for WKV6 and WKV7, spikelm's Triton kernels for WKV4), else the tensor operations; only ``auto``
  takes a GPU library, so ``torch`` keeps the tensor operations on every device.

:data:`OPS` is the table of ops and their paths; the README's table and ``spikelm kernels status``
print it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Union

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .kernels import library

__all__ = ["BACKENDS", "ENV", "OPS", "OpPaths", "Backend", "resolve", "default_backend", "set_backend", "check_backend",
           "grad_needed", "autocast_cpu", "compiled", "paths_table", "cpu_paths"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "compile", "cpp")
ENV = "SPIKELM_BACKEND"
Backend = Union[str, Mapping[str, str], None]  # a name, {op: name, "*": name}, or None (the default)


@dataclass(frozen=True)
class OpPaths:
    """One op's implementations: ``cpp``, the inputs its C++ kernel takes (None: no kernel);
    ``compile``, what the ``compile`` backend runs; ``auto``, what ``auto`` runs on the CPU per
    dtype (``"*"``: the other dtypes), "cpp" (where the kernel takes the inputs), "compile" or
    "torch"; ``cuda``, a library of CUDA kernels ``auto`` takes where it is installed."""

    name: str
    what: str
    cpp: str | None
    compile: str
    auto: Mapping[str, str]
    cuda: str | None = None  # the CUDA library auto takes where it is installed and takes the inputs

    def auto_for(self, dtype: torch.dtype) -> str:
        return self.auto.get(str(dtype).removeprefix("torch."), self.auto["*"])


# The ops with more than one implementation, and what auto takes on the CPU (measured: see the
# module docstring). README.md's table is paths_table() (a test compares).
OPS: dict[str, OpPaths] = {p.name: p for p in (
    OpPaths("wkv6", "RWKV-6 WKV recurrence", "float32, bf16, fp16 inputs (computed in float32); no gradient",
            "the step (one token) or the chunked form, compiled", {"*": "cpp"},
            "flash-linear-attention (`spikelm[gpu]`): chunked kernels under a gradient, recurrent ones else"),
    OpPaths("wkv7", "RWKV-7 WKV recurrence", None, "the step (one token) or the chunked form, compiled", {"*": "torch"},
            "flash-linear-attention (`spikelm[gpu]`): chunked kernels under a gradient, recurrent ones else"),
    OpPaths("wkv4", "RWKV-4 / SpikeGPT WKV recurrence", None, "the loop (one token) or the parallel form, compiled",
            {"*": "torch"}, "spikelm's Triton kernels (`spikelm[gpu]`: ops/wkv4_triton.py), with their backward"),
    OpPaths("rwkv6_block", "an RWKV-6 block (a decoding step in one call)",
            "one token; float32, bf16, fp16 weights; no gradient, no hooks, not converted",
            "the block's modules, compiled (prefill and decoding)", {"*": "cpp"}),
    OpPaths("gemv", "one-row products (decoding)", "bf16, fp16, one row, contiguous weights; no gradient",
            "`torch` (one library call: nothing to fuse)", {"float32": "torch", "*": "cpp"}),
    OpPaths("mhse_decode", "spike decoding over T > 1 steps (rate codes, multi-step MHSE)", None,
            "its ten float64 passes, fused", {"*": "compile"}),
    OpPaths("level_histogram", "the energy counter's histogram of spike-encoder levels",
            "float32 levels; float32, bf16, fp16 inputs", "`torch` (a histogram: inductor does not fuse it)", {"*": "cpp"}),
)}


def paths_table() -> str:
    """:data:`OPS` as a Markdown table: each op against the backends, with the devices and dtypes
    each implementation takes."""
    rows = ["| op | computes | `torch` | `compile` | `cpp` | `auto` |", "|---|---|---|---|---|---|"]
    for p in OPS.values():
        cpp = f"CPU: {p.cpp}; elsewhere `torch`" if p.cpp else "no C++ kernel: `torch`"
        picks = {k: v for k, v in p.auto.items() if k != "*"}
        auto = f"CPU: `{p.auto['*']}`" + "".join(f" (`{v}` in {k})" for k, v in picks.items())
        if "cpp" in p.auto.values():
            auto += ", `torch` where the kernel does not take the inputs"
        auto += f"; CUDA: {p.cuda}, else `torch`" if p.cuda else "; other devices: `torch`"
        rows.append(f"| `{p.name}` | {p.what} | every device and dtype | {p.compile} | {cpp} | {auto} |")
    return "\n".join(rows)


_default: Backend = None


def check_backend(backend: Backend) -> Backend:
    """``backend`` itself where it names backends of :data:`BACKENDS` (and ops of :data:`OPS`),
    else a ConfigError naming the choices."""
    if backend is None:
        return None
    names = backend.values() if isinstance(backend, Mapping) else [backend]
    for name in names:
        if name not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}; got {name!r}")
    if isinstance(backend, Mapping):
        unknown = [op for op in backend if op != "*" and op not in OPS]
        if unknown:
            raise ConfigError(f"backend: no op named {unknown[0]!r}; ops: {', '.join(OPS)}")
    return backend


def _parse(value: str) -> Backend:
    """``SPIKELM_BACKEND``'s text: a backend, or ``op:backend`` pairs separated by commas."""
    if ":" not in value:
        return value
    pairs = [item.split(":", 1) for item in value.split(",") if item.strip()]
    return {op.strip(): name.strip() for op, name in pairs}


def default_backend() -> Backend:
    """The process's backend: ``$SPIKELM_BACKEND`` (read once), else ``auto``."""
    global _default
    if _default is None:
        value = os.environ.get(ENV, "").strip() or "auto"
        try:
            _default = check_backend(_parse(value))
        except (ConfigError, ValueError) as e:
            raise ConfigError(f"{ENV}={value!r}: {e}") from None
    return _default


def set_backend(module: nn.Module, backend: Backend) -> nn.Module:
    """Give ``module`` and each of its submodules that runs an op (those with a ``backend``
    attribute) the backend ``backend`` (None: the process's default). Returns ``module``."""
    check_backend(backend)
    for m in module.modules():
        if hasattr(m, "backend"):
            m.backend = backend
    return module


def _name(op: str, backend: Backend) -> str:
    b = default_backend() if backend is None else backend
    return b.get(op, b.get("*", "auto")) if isinstance(b, Mapping) else b


def resolve(op: str, backend: Backend, x: Tensor, cpp_ok: bool = True, cuda_ok: bool = False) -> str:
    """Which implementation of ``op`` runs: "torch", "compile", "cpp" or "cuda" (the op's CUDA
    library, :attr:`OpPaths.cuda`).

    ``backend``: the caller's (None: :func:`default_backend`); ``x``: the op's main input (device
    and dtype); ``cpp_ok``: whether the C++ kernel takes these inputs (the op checks its own
    shapes, dtypes and gradients); ``cuda_ok``: whether the CUDA library is installed and takes
    them. ``cpp`` and ``auto`` give the C++ kernel only where it applies and the kernels could be
    built (:func:`.kernels.library`, built and loaded at the first such call), else the tensor
    operations; ``auto`` gives the CUDA library where ``cuda_ok``."""
    name = _name(op, backend)
    if name == "auto" and cuda_ok and OPS[op].cuda:
        return "cuda"
    if name == "torch":
        return "torch"
    if name == "compile":
        return "torch" if torch.compiler.is_compiling() else "compile"
    if name not in ("cpp", "auto"):
        check_backend(name)
    return _choose(op, name, x.device.type, x.dtype, cpp_ok and OPS[op].cpp is not None and x.device.type == "cpu"
                   and library() is not None)


def _choose(op: str, name: str, device: str, dtype: torch.dtype, cpp: bool) -> str:
    """``cpp`` or ``auto``'s choice for ``op`` on ``device`` and ``dtype``, ``cpp`` telling whether
    the kernel is there and takes the inputs."""
    if name == "cpp":
        return "cpp" if cpp else "torch"
    if device != "cpu":
        return "torch"
    choice = OPS[op].auto_for(dtype)
    if choice == "cpp":
        return "cpp" if cpp else "torch"
    if choice == "compile":
        return "torch" if torch.compiler.is_compiling() else "compile"
    return "torch"


def cpu_paths(kernels_built: bool) -> dict[str, dict[str, str]]:
    """What ``auto`` runs for each op on the CPU in float32 and bfloat16, for inputs its C++ kernel
    takes, with the kernels built or not (``spikelm kernels status``; builds nothing)."""
    return {op: {str(dt).removeprefix("torch."): _choose(op, "auto", "cpu", dt, kernels_built and p.cpp is not None)
                 for dt in (torch.float32, torch.bfloat16)} for op, p in OPS.items()}


def grad_needed(*tensors: Tensor | None) -> bool:
    """Whether autograd would record an op on these tensors (the C++ kernels have no backward)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def autocast_cpu() -> bool:
    """Whether CPU autocast is on (its products run in its dtype, which the C++ kernels ignore)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


_compiled: dict[Callable, Callable] = {}
_eager_only: set[Callable] = set()


def compiled(fn: Callable) -> Callable:
    """``fn`` under ``torch.compile`` (the ``compile`` backend of an op), made once per function.
    Where compiling fails (no C++ compiler for inductor, an unsupported input), the call is made
    with ``fn`` itself, and from then on every call, with one logged warning."""
    if fn in _eager_only:
        return fn
    c = _compiled.get(fn)
    if c is None:
        c = _compiled[fn] = torch.compile(fn)

    def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if fn in _eager_only:
            return fn(*args, **kwargs)
        try:
            return c(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 (inductor's errors have no common base class)
            out = fn(*args, **kwargs)  # an error of the inputs themselves is raised here, as without compile
            _eager_only.add(fn)
            log.warning("torch.compile failed on %s (%s: %s); running its tensor operations", fn.__qualname__,
                        type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
            return out

    return call
